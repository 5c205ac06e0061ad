//! The JSON form of an [`Event`]: `at`, then the kind's tag and fields, in one flat object.
//!
//! This is what `#[serde(flatten)]` over the internally tagged [`EventKind`] wrote, and the
//! bytes stay the same; but serde serializes a flattened field through a map serializer
//! and deserializes it by buffering the whole object, which was most of the cost of an
//! event's JSON. Here `at` is written into the struct the kind's own derive opens, and
//! read before the kind's fields are handed on to it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, VariantAccess, Visitor};
use serde::ser::{self, Impossible, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Because, CaseState, Event, EventKind, FieldValue};
use crate::serde_time::{AsRfc3339, Rfc3339Seed};

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.kind.serialize(AtFirst {
            event: self,
            inner: serializer,
        })
    }
}

/// A serializer for [`EventKind`] that writes the event's `at` first into the struct the
/// kind's derive opens (each kind is a struct variant, serialized as a struct whose first
/// field is the `event` tag), and passes everything else through to `inner`.
struct AtFirst<'a, S> {
    event: &'a Event,
    inner: S,
}

impl<S: Serializer> AtFirst<'_, S> {
    fn not_a_struct<T>(self) -> Result<T, S::Error> {
        Err(ser::Error::custom(
            "an event kind serializes as a struct with its tag",
        ))
    }
}

/// The serializer methods an event kind never calls, each an error.
macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, S::Error> {
            self.not_a_struct()
        })*
    };
}

impl<S: Serializer> Serializer for AtFirst<'_, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Impossible<S::Ok, S::Error>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = S::SerializeStruct;
    type SerializeStructVariant = Impossible<S::Ok, S::Error>;

    fn serialize_struct(
        self,
        _kind: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        let mut fields = self.inner.serialize_struct("Event", len + 1)?;
        fields.serialize_field("at", &AsRfc3339(&self.event.at))?;
        Ok(fields)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    not_a_struct! {
        serialize_bool(bool) -> S::Ok;
        serialize_i8(i8) -> S::Ok;
        serialize_i16(i16) -> S::Ok;
        serialize_i32(i32) -> S::Ok;
        serialize_i64(i64) -> S::Ok;
        serialize_u8(u8) -> S::Ok;
        serialize_u16(u16) -> S::Ok;
        serialize_u32(u32) -> S::Ok;
        serialize_u64(u64) -> S::Ok;
        serialize_f32(f32) -> S::Ok;
        serialize_f64(f64) -> S::Ok;
        serialize_char(char) -> S::Ok;
        serialize_str(&str) -> S::Ok;
        serialize_bytes(&[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(&'static str) -> S::Ok;
        serialize_unit_variant(&'static str, u32, &'static str) -> S::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        self.not_a_struct()
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        self.not_a_struct()
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        self.not_a_struct()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an event: an object with `at`, `event` and the event's fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut at: Option<DateTime<Utc>> = None;
        // Entries met before `at` and the tag: only in JSON not written by `serialize`.
        let mut others = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match (key, at) {
                (Key::At, Some(_)) => return Err(de::Error::duplicate_field("at")),
                (Key::At, None) => at = Some(map.next_value_seed(Rfc3339Seed)?),
                (Key::Event, Some(at)) if others.is_empty() => {
                    let kind = KindFields::deserialize(KindAfterTag { map })?;
                    return Ok(Event { at, kind });
                }
                (key, _) => {
                    others.insert(key.into_name(), map.next_value()?);
                }
            }
        }
        // Keys in another order: the kind is read from the buffered entries, like the derive did.
        let at = at.ok_or_else(|| de::Error::missing_field("at"))?;
        let kind =
            EventKind::deserialize(serde_json::Value::Object(others)).map_err(de::Error::custom)?;
        Ok(Event { at, kind })
    }
}

/// A key of an event's object: the two read before the kind's fields, or another.
enum Key {
    At,
    Event,
    Other(String),
}

impl Key {
    fn into_name(self) -> String {
        match self {
            Key::At => "at".to_owned(),
            Key::Event => "event".to_owned(),
            Key::Other(name) => name,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match name {
            "at" => Key::At,
            "event" => Key::Event,
            other => Key::Other(other.to_owned()),
        })
    }
}

/// The rest of an event's object after `at` and the `event` key, seen as an externally
/// tagged enum: the tag's value names the variant, the remaining entries are its fields.
/// The kind's own (internally tagged) derive would buffer the whole object first.
struct KindAfterTag<A> {
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for KindAfterTag<A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for KindAfterTag<A> {
    type Error = A::Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        mut self,
        seed: V,
    ) -> Result<(V::Value, Self), A::Error> {
        let variant = self.map.next_value_seed(seed)?;
        Ok((variant, self))
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for KindAfterTag<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        Err(not_struct_variant())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, A::Error> {
        Err(not_struct_variant())
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(not_struct_variant())
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.map)
    }
}

fn not_struct_variant<E: de::Error>() -> E {
    E::custom("every event kind has named fields")
}

/// [`EventKind`]'s variants and fields once more, for serde's `remote` derive: it
/// deserializes an `EventKind` from the externally tagged form [`KindAfterTag`] presents.
/// The compiler checks every field against `EventKind`, and the `Serialize` derive,
/// never called, matches on every variant of `EventKind`: a kind added there and not
/// here does not build.
#[derive(Deserialize, Serialize)]
#[serde(remote = "EventKind", rename_all = "snake_case")]
#[allow(dead_code)]
enum KindFields {
    Created {
        message_id: String,
        channel: String,
        sender: String,
    },
    MailReceived {
        message_id: String,
        from: String,
        role: String,
        subject: String,
    },
    FieldSet {
        field: String,
        value: FieldValue,
        because: Because,
    },
    TagAdded {
        tag: String,
        because: Because,
    },
    Assigned {
        department: String,
        cc: Vec<String>,
        because: Because,
    },
    StateChanged {
        from: CaseState,
        to: CaseState,
        because: Because,
    },
    ClockStarted {
        deadline: String,
        #[serde(with = "crate::serde_time")]
        due: DateTime<Utc>,
        calendar: Option<String>,
        counted: String,
        because: Because,
    },
    ClockPaused {
        deadline: String,
    },
    ClockResumed {
        deadline: String,
        #[serde(with = "crate::serde_time")]
        due: DateTime<Utc>,
        paused_seconds: i64,
    },
    ClockStopped {
        deadline: String,
        met: bool,
    },
    ClockBreached {
        deadline: String,
    },
    EscalationFired {
        deadline: String,
        step: usize,
        template: String,
        recipients: Vec<String>,
        because: Because,
    },
    MailQueued {
        outbox_id: String,
        purpose: String,
        to: Vec<String>,
        subject: String,
        template: String,
    },
    MailSent {
        outbox_id: String,
    },
    MailFailed {
        outbox_id: String,
        permanent: bool,
        reason: String,
    },
    CommandRejected {
        from: String,
        reason: String,
    },
    SecurityAlert {
        from: String,
        reason: String,
    },
    Note {
        text: String,
    },
}
