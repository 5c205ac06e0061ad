//! Reply tokens: HMAC-signed plus-addresses that prove a reply was sent to the
//! address the daemon gave one department for one case.
//!
//! A token is `<case>.<key>`, all lower case, carried in the detail part of
//! a plus-address:
//! `complaints+ts-2026-000123.k3j4tav4k3j4h5m6n7p8q9r2@corp.example`.
//!
//! - `<case>`: the case number, lower-cased (case numbers are ASCII letters,
//!   digits and `-`, compared case-insensitively).
//! - `<key>`: 24 base32 characters: the department's reference (5 characters,
//!   25 bits of SHA-256 of its name), the last day (UTC) the token is valid
//!   (3 characters, days since 2020-01-01), and the tag (16 characters, the
//!   first 80 bits of HMAC-SHA256 over case, department name and expiry under
//!   the daemon's secret).
//!
//! The key has a fixed length whatever the department is called, so the
//! local part stays within SMTP's 64 octets whenever the complaint mailbox's
//! local part and the case number together have at most 38 characters
//! (`complaints` and `TS-2026-000123` have 24; see [`fits_local_part`]).
//! The department's name is not in the token: verification takes the
//! policy's department names and checks the tag for those whose reference
//! matches, so a long or Chinese department name costs nothing.
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
/// Characters of the department reference (25 bits).
const REFERENCE_CHARS: usize = 5;
/// Characters of the expiry (15 bits of days: until 2109).
const EXPIRY_CHARS: usize = 3;
/// Characters of the key after the case number.
pub const KEY_CHARS: usize = REFERENCE_CHARS + EXPIRY_CHARS + TAG_CHARS;
/// The longest local part SMTP allows (RFC 5321, 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Separates this use of the secret from any other use of it.
const CONTEXT: &[u8] = b"complaintd reply token v2";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The daemon's reply-token secret. Never printed.
#[derive(Clone)]
pub struct ReplySecret {
    /// HMAC keyed with the secret once; every token starts from a clone of it,
    /// which saves hashing the padded key twice per token.
    keyed: Hmac<Sha256>,
}

impl ReplySecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TokenError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret { len: bytes.len() });
        }
        // HMAC takes keys of any length, so this cannot fail.
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).expect("HMAC accepts any key length");
        Ok(ReplySecret { keyed })
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
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
    #[error("the expiry {0} cannot be put in a reply token (2020-01-01 to 2109)")]
    UnencodableExpiry(NaiveDate),
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
    let days = days_since_epoch(expires).ok_or(TokenError::UnencodableExpiry(expires))?;
    let tag = signature(secret, &case_segment, department, days);
    Ok(format!(
        "{case_segment}.{}{}{}",
        encode_bits(department_reference(department), REFERENCE_CHARS),
        encode_bits(days, EXPIRY_CHARS),
        base32_encode(&tag)
    ))
}

/// Whether reply addresses for case numbers of `case_number_len` characters
/// fit SMTP's local-part limit with the complaint `mailbox`.
pub fn fits_local_part(mailbox: &str, case_number_len: usize) -> bool {
    let local = mailbox.trim().rsplit_once('@').map_or(mailbox, |(l, _)| l);
    let base = local.split_once('+').map_or(local, |(base, _)| base);
    base.len() + 1 + case_number_len + 1 + KEY_CHARS <= MAX_LOCAL_PART
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

/// Checks a token, given either a whole plus-address or the bare token,
/// against the policy's `departments` (their names).
///
/// The signature is checked before the expiry, so an altered expiry day is
/// reported as a bad signature; an expired token still names its case and
/// department, for the event log. A token for a department the policy no
/// longer has is a bad signature too: nobody may answer for it.
pub fn verify<'d>(
    secret: &ReplySecret,
    address: &str,
    now: DateTime<Utc>,
    departments: impl IntoIterator<Item = &'d str>,
) -> Result<Verified, TokenError> {
    let token = token_part(address)?.to_ascii_lowercase();
    let Some((case_part, key)) = token.split_once('.') else {
        return Err(TokenError::Malformed(
            "expected the case number, a dot and the key",
        ));
    };
    if case_part.is_empty()
        || !case_part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(TokenError::Malformed("the case part is not a case number"));
    }
    if key.len() != KEY_CHARS {
        return Err(TokenError::Malformed("the key has the wrong length"));
    }
    let (reference_part, rest) = key.split_at(REFERENCE_CHARS);
    let (expiry_part, tag_part) = rest.split_at(EXPIRY_CHARS);
    let reference = decode_bits(reference_part).ok_or(TokenError::Malformed(
        "the department reference is not base32",
    ))?;
    let days = decode_bits(expiry_part).ok_or(TokenError::Malformed("the expiry is not base32"))?;
    let tag = base32_decode(tag_part).ok_or(TokenError::Malformed("the tag is not base32"))?;
    let expires =
        day_from_epoch(days).ok_or(TokenError::Malformed("the expiry is out of range"))?;

    let department = departments
        .into_iter()
        .filter(|name| department_reference(name) == reference)
        .find(|name| {
            let mut mac = secret.mac();
            feed(&mut mac, case_part, name, days);
            mac.verify_truncated_left(&tag).is_ok()
        })
        .ok_or(TokenError::BadSignature)?
        .to_owned();

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

/// The first day tokens count from.
fn token_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2020, 1, 1).expect("a valid date")
}

fn days_since_epoch(day: NaiveDate) -> Option<u32> {
    let days = u32::try_from((day - token_epoch()).num_days()).ok()?;
    (days < 1 << (5 * EXPIRY_CHARS)).then_some(days)
}

fn day_from_epoch(days: u32) -> Option<NaiveDate> {
    token_epoch().checked_add_days(chrono::Days::new(u64::from(days)))
}

/// 25 bits of SHA-256 of the name: picks the department, proves nothing.
fn department_reference(name: &str) -> u32 {
    use sha2::Digest;
    let digest = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> (32 - 5 * REFERENCE_CHARS)
}

/// The low `5 * chars` bits of `value` in base32, most significant first.
fn encode_bits(value: u32, chars: usize) -> String {
    (0..chars)
        .rev()
        .map(|i| BASE32_ALPHABET[((value >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// Reverses [`encode_bits`]; `None` on a foreign character.
fn decode_bits(text: &str) -> Option<u32> {
    text.bytes().try_fold(0u32, |value, ch| {
        let digit = match ch.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        Some((value << 5) | u32::from(digit))
    })
}

fn signature(secret: &ReplySecret, case_segment: &str, department: &str, days: u32) -> Vec<u8> {
    let mut mac = secret.mac();
    feed(&mut mac, case_segment, department, days);
    mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
}

/// Feeds the signed fields, the names length-prefixed so no two inputs collide.
fn feed(mac: &mut Hmac<Sha256>, case_segment: &str, department: &str, days: u32) {
    mac.update(CONTEXT);
    for field in [case_segment, department] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.update(&days.to_be_bytes());
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

    const DEPARTMENTS: [&str; 5] = ["service", "billing_dept", "客服中心", "Service", "network"];

    fn departments() -> impl Iterator<Item = &'static str> {
        DEPARTMENTS.into_iter()
    }

    #[test]
    fn minted_token_verifies_and_names_case_and_department() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "service", day(2026, 12, 31)).unwrap();
        assert!(token.starts_with("ts-2026-000123."));
        assert_eq!(token.len(), "ts-2026-000123.".len() + KEY_CHARS);
        let address = reply_address("complaints@corp.example", &token);
        let verified = verify(&secret(), &address, at(2026, 12, 31, 23), departments()).unwrap();
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
        let verified = verify(&secret(), &address, at(2026, 12, 1, 0), departments()).unwrap();
        assert_eq!(verified.department, "billing_dept");
        assert_eq!(verified.case, case);
    }

    #[test]
    fn non_ascii_and_mixed_case_departments_are_told_apart() {
        let case = CaseId("TS-2026-000007".into());
        let token = mint(&secret(), &case, "客服中心", day(2026, 12, 31)).unwrap();
        assert!(token.is_ascii());
        let verified = verify(
            &secret(),
            &token.to_uppercase(),
            at(2026, 12, 1, 0),
            departments(),
        )
        .unwrap();
        assert_eq!(verified.department, "客服中心");
        for name in ["Service", "service"] {
            let token = mint(&secret(), &case, name, day(2026, 12, 31)).unwrap();
            let verified = verify(&secret(), &token, at(2026, 12, 1, 0), departments()).unwrap();
            assert_eq!(verified.department, name);
        }
    }

    #[test]
    fn token_for_another_case_department_or_expiry_is_rejected() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "service", day(2026, 12, 31)).unwrap();
        let key = token.split_once('.').unwrap().1;
        let (reference, rest) = key.split_at(REFERENCE_CHARS);
        let (expiry, tag) = rest.split_at(EXPIRY_CHARS);
        let network = encode_bits(department_reference("network"), REFERENCE_CHARS);
        let later = encode_bits(days_since_epoch(day(2027, 12, 31)).unwrap(), EXPIRY_CHARS);
        let forgeries = [
            format!("ts-2026-000124.{key}"),
            format!("ts-2026-000123.{network}{expiry}{tag}"),
            format!("ts-2026-000123.{reference}{later}{tag}"),
        ];
        for forged in forgeries {
            assert_eq!(
                verify(&secret(), &forged, at(2026, 12, 1, 0), departments()),
                Err(TokenError::BadSignature),
                "{forged}"
            );
        }
    }

    #[test]
    fn a_department_the_policy_no_longer_has_cannot_answer() {
        let token = mint(
            &secret(),
            &CaseId("TS-2026-000123".into()),
            "closed_branch",
            day(2026, 12, 31),
        )
        .unwrap();
        assert_eq!(
            verify(&secret(), &token, at(2026, 12, 1, 0), departments()),
            Err(TokenError::BadSignature)
        );
        assert!(verify(&secret(), &token, at(2026, 12, 1, 0), ["closed_branch"]).is_ok());
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
            verify(&other, &token, at(2026, 12, 1, 0), departments()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired_token_reports_its_case() {
        let case = CaseId("TS-2026-000123".into());
        let token = mint(&secret(), &case, "service", day(2026, 12, 31)).unwrap();
        assert_eq!(
            verify(&secret(), &token, at(2027, 1, 1, 0), departments()),
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
        let check = |address: &str| verify(&secret(), address, now, departments());
        assert_eq!(check("complaints@corp.example"), Err(TokenError::NoToken));
        assert_eq!(check("complaints+@corp.example"), Err(TokenError::NoToken));
        assert_eq!(
            check("complaints+hello@corp.example"),
            Err(TokenError::Malformed(
                "expected the case number, a dot and the key"
            ))
        );
        assert_eq!(
            check("ts-1.aaaa"),
            Err(TokenError::Malformed("the key has the wrong length"))
        );
        assert_eq!(
            check("ts_1.aaaaaaaaaaaaaaaaaaaaaaaa"),
            Err(TokenError::Malformed("the case part is not a case number"))
        );
        assert_eq!(
            check("ts-1.aaaa!aaaaaaaaaaaaaaaaaaa"),
            Err(TokenError::Malformed(
                "the department reference is not base32"
            ))
        );
        assert_eq!(
            check("ts-1.aaaaaa0aaaaaaaaaaaaaaaaa"),
            Err(TokenError::Malformed("the expiry is not base32"))
        );
        assert_eq!(
            check("ts-1.aaaaaaaaaaaaaaaaaaaaaaa1"),
            Err(TokenError::Malformed("the tag is not base32"))
        );
    }

    #[test]
    fn weak_secret_unencodable_case_and_expiry_are_refused() {
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
        for expiry in [day(2019, 12, 31), day(2110, 1, 1)] {
            assert_eq!(
                mint(&secret(), &CaseId("TS-1".into()), "service", expiry),
                Err(TokenError::UnencodableExpiry(expiry))
            );
        }
        assert_eq!(format!("{:?}", secret()), "ReplySecret(<redacted>)");
    }

    #[test]
    fn every_expiry_day_round_trips() {
        let mut expiry = day(2020, 1, 1);
        while expiry < day(2109, 9, 1) {
            let days = days_since_epoch(expiry).unwrap();
            let text = encode_bits(days, EXPIRY_CHARS);
            assert_eq!(day_from_epoch(decode_bits(&text).unwrap()), Some(expiry));
            expiry = expiry + chrono::Days::new(97);
        }
    }

    #[test]
    fn long_and_chinese_department_names_fit_the_smtp_local_part_limit() {
        let case = CaseId("TS-2026-000123".into());
        let long_names = [
            "discipline_committee",
            "outpatient_department_of_surgery",
            "客户服务中心投诉处理办公室",
        ];
        for department in long_names {
            let token = mint(&secret(), &case, department, day(2026, 12, 31)).unwrap();
            for mailbox in [
                "complaints@corp.example",
                "customer-complaints-desk@corp.example",
            ] {
                let address = reply_address(mailbox, &token);
                let local = address.rsplit_once('@').unwrap().0;
                assert!(
                    local.len() <= MAX_LOCAL_PART,
                    "{address}: {} octets",
                    local.len()
                );
                assert!(fits_local_part(mailbox, case.0.len()));
            }
        }
        assert!(!fits_local_part(
            "a-very-long-complaint-mailbox-name@corp.example",
            14
        ));
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
            claimed_case("complaints+ts-2026-000123.xyz@corp.example"),
            Some(CaseId("TS-2026-000123".into()))
        );
        assert_eq!(claimed_case("complaints+hello@corp.example"), None);
    }
}
