//! Reply tokens: HMAC-signed plus-addresses that prove a reply was sent to the
//! address the daemon gave one department for one case.
//!
//! A token is `<case>.<department>.<expiry>.<tag>`, all lower case, carried in
//! the detail part of a plus-address:
//! `complaints+ts-2026-000123.service.20261231.k3j4h5m6n7p8q9r2@corp.example`.
//!
//! - `<case>`: the case number, lower-cased (case numbers are ASCII letters,
//!   digits and `-`, compared case-insensitively).
//! - `<department>`: the department name when it is plain lower-case ASCII
//!   (`[a-z][a-z0-9_]*`); any other name (upper case, Chinese, …) is written
//!   `u-` followed by the lower-case base32 of its UTF-8 bytes, so nothing is
//!   lost when an MTA changes the case of the address.
//! - `<expiry>`: the last day (UTC) the token is valid, `yyyymmdd`.
//! - `<tag>`: the first 80 bits of HMAC-SHA256 over case, department and
//!   expiry under the daemon's secret, lower-case base32 (16 characters).
//!
//! Verification lower-cases the whole token first, so an MTA that changes the
//! case of the local part does no harm, and compares tags in constant time.

use chrono::{DateTime, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::case::CaseId;

/// Bytes of the HMAC kept in a token: 80 bits, 16 base32 characters.
const TAG_BYTES: usize = 10;
/// Characters of the encoded tag.
const TAG_CHARS: usize = 16;
/// Separates this use of the secret from any other use of it.
const CONTEXT: &[u8] = b"complaintd reply token v1";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Prefix of a department segment written as base32.
const ENCODED_DEPARTMENT_PREFIX: &str = "u-";

/// The daemon's reply-token secret. Never printed.
#[derive(Clone)]
pub struct ReplySecret(Vec<u8>);

impl ReplySecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TokenError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret { len: bytes.len() });
        }
        Ok(ReplySecret(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl std::fmt::Debug for ReplySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplySecret(<redacted>)")
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The case number, upper-cased.
    pub case: CaseId,
    pub department: String,
    /// Last day (UTC) the token is accepted.
    pub expires: NaiveDate,
}

/// Why a token was not accepted, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the reply-token secret is {len} bytes long; at least {MIN_SECRET_LEN} are required")]
    WeakSecret { len: usize },
    #[error("the address carries no reply token")]
    NoToken,
    #[error("malformed reply token: {0}")]
    Malformed(&'static str),
    #[error(
        "the case number {0:?} cannot be put in an address (only ASCII letters, digits and '-')"
    )]
    UnencodableCase(String),
    #[error("the reply token's signature does not match: forged, altered, or made for another case or department")]
    BadSignature,
    #[error("the reply token expired at the end of {expired_on}")]
    Expired {
        expired_on: NaiveDate,
        case: CaseId,
        department: String,
    },
}

/// Makes the token for `case` and `department`, valid through `expires` (UTC day).
///
/// The result is the detail part of a plus-address; [`reply_address`] puts it
/// into the daemon's mailbox address.
pub fn mint(
    secret: &ReplySecret,
    case: &CaseId,
    department: &str,
    expires: NaiveDate,
) -> Result<String, TokenError> {
    let case_segment = case_segment(&case.0)?;
    let day = expires.format("%Y%m%d").to_string();
    let tag = signature(secret, &case_segment, department, &day);
    Ok(format!(
        "{case_segment}.{}.{day}.{}",
        department_segment(department),
        base32_encode(&tag)
    ))
}

/// `complaints@corp.example` + token → `complaints+<token>@corp.example`.
///
/// A mailbox that already has a plus-detail keeps its base part only.
pub fn reply_address(mailbox: &str, token: &str) -> String {
    let mailbox = mailbox.trim();
    let (local, domain) = mailbox.rsplit_once('@').unwrap_or((mailbox, ""));
    let base = local.split_once('+').map_or(local, |(base, _)| base);
    if domain.is_empty() {
        format!("{base}+{token}")
    } else {
        format!("{base}+{token}@{domain}")
    }
}

/// The base mailbox of a possibly plus-addressed address:
/// `complaints+x@corp.example` → `complaints@corp.example` (lower-cased).
pub fn base_mailbox(address: &str) -> String {
    let address = address.trim().to_ascii_lowercase();
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let base = local.split_once('+').map_or(local, |(base, _)| base);
            format!("{base}@{domain}")
        }
        None => address,
    }
}

/// Checks a token, given either a whole plus-address or the bare token.
///
/// The signature is checked before the expiry, so an altered expiry day is
/// reported as a bad signature; an expired token still names its case and
/// department, for the event log.
pub fn verify(
    secret: &ReplySecret,
    address: &str,
    now: DateTime<Utc>,
) -> Result<Verified, TokenError> {
    let token = token_part(address)?.to_ascii_lowercase();
    let mut parts = token.split('.');
    let (Some(case_part), Some(department_part), Some(day_part), Some(tag_part), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed(
            "expected four parts: case.department.expiry.tag",
        ));
    };
    if case_part.is_empty()
        || !case_part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(TokenError::Malformed("the case part is not a case number"));
    }
    let department = parse_department_segment(department_part)?;
    if day_part.len() != 8 || !day_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed("the expiry is not yyyymmdd"));
    }
    let expires = NaiveDate::parse_from_str(day_part, "%Y%m%d")
        .map_err(|_| TokenError::Malformed("the expiry is not a calendar day"))?;
    if tag_part.len() != TAG_CHARS {
        return Err(TokenError::Malformed("the tag has the wrong length"));
    }
    let tag = base32_decode(tag_part).ok_or(TokenError::Malformed("the tag is not base32"))?;

    let mut mac = secret.mac();
    feed(&mut mac, case_part, &department, day_part);
    mac.verify_truncated_left(&tag)
        .map_err(|_| TokenError::BadSignature)?;

    let case = CaseId(case_part.to_ascii_uppercase());
    if now.date_naive() > expires {
        return Err(TokenError::Expired {
            expired_on: expires,
            case,
            department,
        });
    }
    Ok(Verified {
        case,
        department,
        expires,
    })
}

/// The case number a token-shaped address claims, without checking anything:
/// for logging a failed token against the case it names.
pub fn claimed_case(address: &str) -> Option<CaseId> {
    let token = token_part(address).ok()?;
    let case = token.split('.').next()?;
    let plausible = !case.is_empty()
        && case.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && case.bytes().any(|b| b.is_ascii_digit());
    plausible.then(|| CaseId(case.to_ascii_uppercase()))
}

/// The detail of a plus-address, or the input itself when it has no `@`.
fn token_part(address: &str) -> Result<&str, TokenError> {
    let address = address.trim();
    let token = match address.rsplit_once('@') {
        Some((local, _domain)) => local
            .split_once('+')
            .map(|(_, detail)| detail)
            .ok_or(TokenError::NoToken)?,
        None => address,
    };
    if token.is_empty() {
        return Err(TokenError::NoToken);
    }
    Ok(token)
}

fn case_segment(case: &str) -> Result<String, TokenError> {
    let ok = !case.is_empty() && case.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(case.to_ascii_lowercase())
    } else {
        Err(TokenError::UnencodableCase(case.to_owned()))
    }
}

fn is_plain_department(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn department_segment(name: &str) -> String {
    if is_plain_department(name) {
        name.to_owned()
    } else {
        format!(
            "{ENCODED_DEPARTMENT_PREFIX}{}",
            base32_encode(name.as_bytes())
        )
    }
}

fn parse_department_segment(segment: &str) -> Result<String, TokenError> {
    if let Some(encoded) = segment.strip_prefix(ENCODED_DEPARTMENT_PREFIX) {
        let bytes =
            base32_decode(encoded).ok_or(TokenError::Malformed("the department is not base32"))?;
        String::from_utf8(bytes).map_err(|_| TokenError::Malformed("the department is not UTF-8"))
    } else if is_plain_department(segment) {
        Ok(segment.to_owned())
    } else {
        Err(TokenError::Malformed(
            "the department part is not a department name",
        ))
    }
}

fn signature(secret: &ReplySecret, case_segment: &str, department: &str, day: &str) -> Vec<u8> {
    let mut mac = secret.mac();
    feed(&mut mac, case_segment, department, day);
    mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
}

/// Feeds the signed fields, each length-prefixed so no two inputs collide.
fn feed(mac: &mut Hmac<Sha256>, case_segment: &str, department: &str, day: &str) {
    mac.update(CONTEXT);
    for field in [case_segment, department, day] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
}

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lower case, without padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes [`base32_encode`] output (any case); `None` on a foreign character
/// or non-zero padding bits.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for ch in text.bytes() {
        let value = match ch.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    // Leftover bits are padding and must be zero, so each byte string has one spelling.
    (buffer == 0 && bits < 5).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn secret() -> ReplySecret {
        ReplySecret::new(b"0123456789abcdef-test-secret".to_vec()).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn base32_round_trips_and_rejects_noise() {
        for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(base32_decode(&base32_encode(input)).unwrap(), input);
        }
        // RFC 4648 test vector, lower case without padding.
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytb0i"), None);
        // "mz" has non-zero padding bits: only "my" spells the byte "f".
        assert_eq!(base32_decode("mz"), None);
    }

    #[test]
    fn minted_token_verifies_and_names_case_and_department() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "service", day(2026, 12, 31)).unwrap();
        assert!(token.starts_with("ts-2026-000123.service.20261231."));
        let address = reply_address("complaints@corp.example", &token);
        let verified = verify(&secret(), &address, at(2026, 12, 31, 23)).unwrap();
        assert_eq!(
            verified,
            Verified {
                case,
                department: "service".into(),
                expires: day(2026, 12, 31)
            }
        );
    }

    #[test]
    fn upper_cased_address_still_verifies() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "billing_dept", day(2026, 12, 31)).unwrap();
        let address = reply_address("complaints@corp.example", &token).to_uppercase();
        let verified = verify(&secret(), &address, at(2026, 12, 1, 0)).unwrap();
        assert_eq!(verified.department, "billing_dept");
        assert_eq!(verified.case, case);
    }

    #[test]
    fn non_ascii_department_survives_case_changes() {
        let case = CaseId("TS-2026-000007".into());
        let token = mint(&secret(), &case, "客服中心", day(2026, 12, 31)).unwrap();
        assert!(token.is_ascii());
        let verified = verify(&secret(), &token.to_uppercase(), at(2026, 12, 1, 0)).unwrap();
        assert_eq!(verified.department, "客服中心");
        let mixed = mint(&secret(), &case, "Service", day(2026, 12, 31)).unwrap();
        assert_eq!(
            verify(&secret(), &mixed, at(2026, 12, 1, 0))
                .unwrap()
                .department,
            "Service"
        );
    }

    #[test]
    fn token_for_another_case_or_department_is_rejected() {
        let token = mint(
            &secret(),
            &CaseId("TS-2026-000123".into()),
            "service",
            day(2026, 12, 31),
        )
        .unwrap();
        let tag = token.rsplit('.').next().unwrap();
        let other_case = format!("ts-2026-000124.service.20261231.{tag}");
        let other_department = format!("ts-2026-000123.network.20261231.{tag}");
        let later_expiry = format!("ts-2026-000123.service.20271231.{tag}");
        for forged in [other_case, other_department, later_expiry] {
            assert_eq!(
                verify(&secret(), &forged, at(2026, 12, 1, 0)),
                Err(TokenError::BadSignature),
                "{forged}"
            );
        }
    }

    #[test]
    fn another_secret_rejects_the_token() {
        let token = mint(
            &secret(),
            &CaseId("TS-2026-000123".into()),
            "service",
            day(2026, 12, 31),
        )
        .unwrap();
        let other = ReplySecret::new(b"another-secret-of-enough-length".to_vec()).unwrap();
        assert_eq!(
            verify(&other, &token, at(2026, 12, 1, 0)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired_token_reports_its_case() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "service", day(2026, 12, 31)).unwrap();
        assert_eq!(
            verify(&secret(), &token, at(2027, 1, 1, 0)),
            Err(TokenError::Expired {
                expired_on: day(2026, 12, 31),
                case,
                department: "service".into()
            })
        );
    }

    #[test]
    fn malformed_tokens_get_clear_errors() {
        let now = at(2026, 12, 1, 0);
        assert_eq!(
            verify(&secret(), "complaints@corp.example", now),
            Err(TokenError::NoToken)
        );
        assert_eq!(
            verify(&secret(), "complaints+@corp.example", now),
            Err(TokenError::NoToken)
        );
        assert!(matches!(
            verify(&secret(), "complaints+hello@corp.example", now),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify(
                &secret(),
                "complaints+ts-1.service.20261340.aaaaaaaaaaaaaaaa@x",
                now
            ),
            Err(TokenError::Malformed("the expiry is not a calendar day"))
        ));
        assert!(matches!(
            verify(&secret(), "ts-1.service.20261231.aaaa", now),
            Err(TokenError::Malformed("the tag has the wrong length"))
        ));
        assert!(matches!(
            verify(&secret(), "ts-1.u-!!.20261231.aaaaaaaaaaaaaaaa", now),
            Err(TokenError::Malformed("the department is not base32"))
        ));
    }

    #[test]
    fn weak_secret_and_unencodable_case_are_refused() {
        assert_eq!(
            ReplySecret::new(b"short".to_vec()).unwrap_err(),
            TokenError::WeakSecret { len: 5 }
        );
        assert!(matches!(
            mint(
                &secret(),
                &CaseId("TS 2026.1".into()),
                "service",
                day(2026, 1, 1)
            ),
            Err(TokenError::UnencodableCase(_))
        ));
        assert_eq!(format!("{:?}", secret()), "ReplySecret(<redacted>)");
    }

    #[test]
    fn default_department_tokens_fit_the_smtp_local_part_limit() {
        let case = CaseId("TS-2026-000123".into());
        for department in ["service", "network", "billing_dept", "office"] {
            let token = mint(&secret(), &case, department, day(2026, 12, 31)).unwrap();
            let address = reply_address("complaints@corp.example", &token);
            let local = address.rsplit_once('@').unwrap().0;
            assert!(
                local.len() <= 64,
                "{address} has a {}-octet local part",
                local.len()
            );
        }
    }

    #[test]
    fn addresses_are_split_into_base_and_detail() {
        assert_eq!(
            reply_address("Complaints+old@corp.example", "abc"),
            "Complaints+abc@corp.example"
        );
        assert_eq!(
            base_mailbox("Complaints+abc@Corp.Example"),
            "complaints@corp.example"
        );
        assert_eq!(
            claimed_case("complaints+ts-2026-000123.x.y.z@corp.example"),
            Some(CaseId("TS-2026-000123".into()))
        );
        assert_eq!(claimed_case("complaints+hello@corp.example"), None);
    }
}
