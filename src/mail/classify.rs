//! What an incoming mail is: a duplicate, our own mail come back, an
//! auto-reply, a bounce, a department's reply, a customer's reply, an
//! unverified claim on a case, or a new complaint.
//!
//! Pure: the store answers questions through [`ThreadLookup`]; the time comes
//! in [`ClassifyContext::now`]. Checks run in this order, the first that
//! applies decides:
//!
//! 1. `Duplicate`: the Message-ID was ingested before (a mail we *sent* with
//!    that Message-ID is a `Loop`).
//! 2. `Loop`: `X-Complaintd-*` headers (ours, never trusted as control on
//!    incoming mail), or From one of the daemon's own addresses.
//! 3. `Bounce`: `multipart/report; report-type=delivery-status`.
//! 4. `AutoReply`: RFC 3834 `Auto-Submitted` other than `no`, `Precedence:
//!    bulk|junk|list`, `List-Id`/`List-Unsubscribe`, `X-Autoreply`,
//!    `X-Autorespond`, null sender `<>`, any other `multipart/report`.
//! 5. Replies. A department's reply is trusted only when it was sent to a
//!    valid reply-token address for the case and department, from an address
//!    of that department, and does not thread to a different case. A token
//!    that fails (bad signature, expired) or a department address without a
//!    token makes the mail `Unverified`: ordinary correspondence on the case,
//!    never a command. Otherwise a mail threaded to a case (In-Reply-To, then
//!    References, then a bracketed case number in the subject) is a
//!    `CustomerReply`, and anything else a `NewComplaint`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;

use super::inbound::IncomingMail;
use super::token::{self, ReplySecret, TokenError, Verified};
use crate::case::CaseId;
use crate::rules::Policy;

/// Prefix of the daemon's own headers.
pub const OWN_HEADER_PREFIX: &str = "x-complaintd-";

/// What the store knows of a Message-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownMessage {
    /// A mail the daemon ingested, and the case it went to, if any.
    Ingested { case: Option<CaseId> },
    /// A mail the daemon sent, for a case or not (digests).
    Sent {
        case: Option<CaseId>,
        purpose: String,
    },
}

impl KnownMessage {
    pub fn case(&self) -> Option<&CaseId> {
        match self {
            KnownMessage::Ingested { case } | KnownMessage::Sent { case, .. } => case.as_ref(),
        }
    }
}

/// The questions classification asks of the store and the policy.
pub trait ThreadLookup {
    /// What is known of a Message-ID (without brackets).
    fn message(&self, message_id: &str) -> Option<KnownMessage>;
    /// Whether a case with this number exists.
    fn case_exists(&self, case: &CaseId) -> bool;
    /// The lower-cased addresses a department's replies may come from;
    /// `None` when the policy has no such department.
    fn department_addresses(&self, department: &str) -> Option<Vec<String>>;
    /// The departments a (lower-cased) address belongs to.
    fn departments_of(&self, address: &str) -> Vec<String>;
    /// Every department's name: reply tokens are checked against these.
    fn department_names(&self) -> Vec<String>;
}

/// What classification needs besides the mail and the lookup.
#[derive(Debug, Clone)]
pub struct ClassifyContext<'a> {
    /// The daemon's own mailboxes (complaint addresses, the From of outgoing
    /// mail). Plus-addresses of these are the daemon's too.
    pub own_addresses: &'a [String],
    pub secret: &'a ReplySecret,
    pub now: DateTime<Utc>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailKind {
    /// Already ingested: do nothing more.
    Duplicate {
        case: Option<CaseId>,
    },
    /// Our own mail, or a mail from our own address: never answer it.
    Loop {
        reason: LoopReason,
    },
    /// Automatic mail: never acknowledge it. `case` is the case it threads to, for the log.
    AutoReply {
        reason: AutoReplyReason,
        case: Option<CaseId>,
    },
    /// A delivery status notification about a mail we (probably) sent.
    Bounce {
        /// Message-ID of the mail that bounced.
        original_message_id: Option<String>,
        /// The case of that mail, when it is one we sent.
        case: Option<CaseId>,
    },
    /// A verified department reply: its first lines may carry commands.
    DepartmentReply {
        case: CaseId,
        department: String,
    },
    CustomerReply {
        case: CaseId,
        threaded_by: ThreadedBy,
    },
    /// A mail on a case that claims more than it proves: ordinary
    /// correspondence, never a command. The reason goes into the event log.
    Unverified {
        case: CaseId,
        reason: UnverifiedReason,
    },
    NewComplaint,
}

impl MailKind {
    /// Snake-case name, for logs and fixtures.
    pub fn name(&self) -> &'static str {
        match self {
            MailKind::Duplicate { .. } => "duplicate",
            MailKind::Loop { .. } => "loop",
            MailKind::AutoReply { .. } => "auto_reply",
            MailKind::Bounce { .. } => "bounce",
            MailKind::DepartmentReply { .. } => "department_reply",
            MailKind::CustomerReply { .. } => "customer_reply",
            MailKind::Unverified { .. } => "unverified",
            MailKind::NewComplaint => "new_complaint",
        }
    }

    /// The case the mail belongs to, when it belongs to one.
    pub fn case(&self) -> Option<&CaseId> {
        match self {
            MailKind::Duplicate { case }
            | MailKind::AutoReply { case, .. }
            | MailKind::Bounce { case, .. } => case.as_ref(),
            MailKind::DepartmentReply { case, .. }
            | MailKind::CustomerReply { case, .. }
            | MailKind::Unverified { case, .. } => Some(case),
            MailKind::Loop { .. } | MailKind::NewComplaint => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopReason {
    /// The mail carries one of our `X-Complaintd-*` headers (name given).
    OwnHeader(String),
    /// From (or Sender) is one of the daemon's addresses.
    FromOwnAddress(String),
    /// Its Message-ID is one of a mail we sent.
    OwnMessage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoReplyReason {
    /// `Auto-Submitted` with this value.
    AutoSubmitted(String),
    /// `Precedence` with this value.
    Precedence(String),
    /// A mailing-list header (name given).
    ListHeader(String),
    /// `X-Autoreply` / `X-Autorespond` (name given).
    AutoReplyHeader(String),
    /// Return-Path `<>`.
    NullSender,
    /// A `multipart/report` other than a delivery status (read receipts, …).
    Report(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadedBy {
    /// In-Reply-To or References named this known Message-ID.
    Header(String),
    /// The subject carried the bracketed case number.
    SubjectNumber,
    /// The mail went to a reply-token address for the case.
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnverifiedReason {
    /// The reply token did not verify (forged, for another case, expired).
    Token(TokenError),
    /// A valid token, but From is not an address of its department.
    SenderNotInDepartment { sender: String, department: String },
    /// From is a department address, but the mail came without a reply token.
    DepartmentAddressWithoutToken { department: String },
    /// A valid token whose department the policy no longer has.
    UnknownDepartment { department: String },
    /// A valid token for one case in a mail that threads to another.
    ThreadMismatch { threaded_case: CaseId },
}

impl std::fmt::Display for MailKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailKind::Duplicate { case: Some(case) } => write!(f, "duplicate of a mail on {case}"),
            MailKind::Duplicate { case: None } => f.write_str("duplicate"),
            MailKind::Loop { reason } => write!(f, "mail loop: {reason}"),
            MailKind::AutoReply { reason, .. } => write!(f, "automatic mail: {reason}"),
            MailKind::Bounce {
                original_message_id,
                ..
            } => match original_message_id {
                Some(id) => write!(f, "bounce of <{id}>"),
                None => f.write_str("bounce of an unknown mail"),
            },
            MailKind::DepartmentReply { case, department } => {
                write!(f, "reply of department {department} on {case}")
            }
            MailKind::CustomerReply { case, .. } => write!(f, "customer reply on {case}"),
            MailKind::Unverified { case, reason } => {
                write!(f, "unverified mail on {case}: {reason}")
            }
            MailKind::NewComplaint => f.write_str("new complaint"),
        }
    }
}

impl std::fmt::Display for LoopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoopReason::OwnHeader(name) => write!(f, "carries our own header {name}"),
            LoopReason::FromOwnAddress(address) => write!(f, "sent from our own address {address}"),
            LoopReason::OwnMessage => f.write_str("a mail we sent came back"),
        }
    }
}

impl std::fmt::Display for AutoReplyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AutoReplyReason::AutoSubmitted(value) => write!(f, "Auto-Submitted: {value}"),
            AutoReplyReason::Precedence(value) => write!(f, "Precedence: {value}"),
            AutoReplyReason::ListHeader(name) => write!(f, "mailing-list header {name}"),
            AutoReplyReason::AutoReplyHeader(name) => write!(f, "auto-reply header {name}"),
            AutoReplyReason::NullSender => f.write_str("null sender <>"),
            AutoReplyReason::Report(kind) => write!(f, "report ({kind})"),
        }
    }
}

impl std::fmt::Display for UnverifiedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnverifiedReason::Token(error) => write!(f, "reply token not accepted: {error}"),
            UnverifiedReason::SenderNotInDepartment { sender, department } => write!(
                f,
                "valid reply token, but {sender} is not an address of department {department}"
            ),
            UnverifiedReason::DepartmentAddressWithoutToken { department } => write!(
                f,
                "sent from an address of department {department} without a reply token"
            ),
            UnverifiedReason::UnknownDepartment { department } => {
                write!(
                    f,
                    "reply token for department {department}, which the policy no longer has"
                )
            }
            UnverifiedReason::ThreadMismatch { threaded_case } => write!(
                f,
                "reply token for this case, but the mail answers a mail of {threaded_case}"
            ),
        }
    }
}

/// The daemon's own mailboxes as classification compares addresses with
/// them: base mailboxes (no plus-detail), lower-cased.
#[derive(Debug, Clone, Default)]
pub struct OwnMailboxes(HashSet<String>);

impl OwnMailboxes {
    pub fn new(own_addresses: &[String]) -> Self {
        OwnMailboxes(
            own_addresses
                .iter()
                .map(|a| token::base_mailbox(a))
                .collect(),
        )
    }
}

/// Decides what `mail` is. See the module documentation for the order of checks.
pub fn classify(
    mail: &IncomingMail,
    context: &ClassifyContext<'_>,
    lookup: &dyn ThreadLookup,
) -> MailKind {
    let own = OwnMailboxes::new(context.own_addresses);
    classify_with(mail, context, &own, lookup)
}

/// [`classify`] with `own`, [`OwnMailboxes::new`] of the context's own
/// addresses, made once for the mails of a fetch.
pub fn classify_with(
    mail: &IncomingMail,
    context: &ClassifyContext<'_>,
    own: &OwnMailboxes,
    lookup: &dyn ThreadLookup,
) -> MailKind {
    let own = &own.0;
    match lookup.message(&mail.message_id) {
        Some(KnownMessage::Ingested { case }) => return MailKind::Duplicate { case },
        Some(KnownMessage::Sent { .. }) => {
            return MailKind::Loop {
                reason: LoopReason::OwnMessage,
            }
        }
        None => {}
    }
    if let Some(reason) = loop_reason(mail, own) {
        return MailKind::Loop { reason };
    }
    let thread = thread_of(mail, lookup);
    if let Some(report) = &mail.report {
        if report.report_type == "delivery-status" {
            let original_message_id = report.original_message_id.clone();
            // Without the returned message (a header-only look, a terse
            // MTA) the bounce may still thread to its case.
            let case = original_message_id
                .as_deref()
                .and_then(|id| lookup.message(id))
                .and_then(|known| known.case().cloned())
                .or_else(|| thread.as_ref().map(|(case, _)| case.clone()));
            return MailKind::Bounce {
                original_message_id,
                case,
            };
        }
    }
    if let Some(reason) = auto_reply_reason(mail) {
        return MailKind::AutoReply {
            reason,
            case: thread.map(|(case, _)| case),
        };
    }
    classify_reply(mail, context, lookup, own, thread)
}

fn loop_reason(mail: &IncomingMail, own: &HashSet<String>) -> Option<LoopReason> {
    if let Some((name, _)) = mail
        .headers
        .iter()
        .find(|(name, _)| name.starts_with(OWN_HEADER_PREFIX))
    {
        return Some(LoopReason::OwnHeader(name.clone()));
    }
    let sender = mail.headers_named("sender").next().map(str::to_owned);
    let from = mail.from.as_ref().map(|a| a.email.clone());
    for address in from.into_iter().chain(sender.map(|s| bare_address(&s))) {
        if own.contains(&token::base_mailbox(&address)) {
            return Some(LoopReason::FromOwnAddress(address));
        }
    }
    None
}

/// `Name <a@b>` → `a@b`.
fn bare_address(value: &str) -> String {
    match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => value[open + 1..close].trim().to_owned(),
        _ => value.trim().to_owned(),
    }
}

fn auto_reply_reason(mail: &IncomingMail) -> Option<AutoReplyReason> {
    if let Some(value) = mail.header("auto-submitted") {
        let keyword = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if keyword != "no" {
            return Some(AutoReplyReason::AutoSubmitted(keyword));
        }
    }
    if let Some(value) = mail.header("precedence") {
        let value = value.trim().to_ascii_lowercase();
        if matches!(value.as_str(), "bulk" | "junk" | "list" | "auto_reply") {
            return Some(AutoReplyReason::Precedence(value));
        }
    }
    for name in ["list-id", "list-unsubscribe"] {
        if mail.header(name).is_some() {
            return Some(AutoReplyReason::ListHeader(name.to_owned()));
        }
    }
    for name in ["x-autoreply", "x-autorespond"] {
        if mail.header(name).is_some() {
            return Some(AutoReplyReason::AutoReplyHeader(name.to_owned()));
        }
    }
    if mail.return_path.as_deref() == Some("") {
        return Some(AutoReplyReason::NullSender);
    }
    if mail.mime_type == "multipart/report" {
        let kind = mail
            .report
            .as_ref()
            .map(|r| r.report_type.clone())
            .unwrap_or_default();
        return Some(AutoReplyReason::Report(kind));
    }
    None
}

static CASE_NUMBER_IN_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[\s*([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+)\s*\]").expect("valid regex")
});

/// The case a mail threads to: In-Reply-To, then References (newest first),
/// then the first bracketed case number in the subject that exists.
fn thread_of(mail: &IncomingMail, lookup: &dyn ThreadLookup) -> Option<(CaseId, ThreadedBy)> {
    let referenced = mail.in_reply_to.iter().chain(mail.references.iter().rev());
    for id in referenced {
        if let Some(case) = lookup.message(id).and_then(|known| known.case().cloned()) {
            return Some((case, ThreadedBy::Header(id.clone())));
        }
    }
    subject_case(&mail.subject, lookup).map(|case| (case, ThreadedBy::SubjectNumber))
}

fn subject_case(subject: &str, lookup: &dyn ThreadLookup) -> Option<CaseId> {
    CASE_NUMBER_IN_SUBJECT
        .captures_iter(subject)
        .filter_map(|captures| captures.get(1))
        .filter(|m| m.as_str().bytes().any(|b| b.is_ascii_digit()))
        .map(|m| CaseId(m.as_str().to_ascii_uppercase()))
        .find(|case| lookup.case_exists(case))
}

/// Reply-token verdicts for the recipient addresses that are plus-addresses
/// of our own mailboxes: To, Cc, Delivered-To, X-Original-To.
fn token_verdicts(
    mail: &IncomingMail,
    context: &ClassifyContext<'_>,
    lookup: &dyn ThreadLookup,
    own: &HashSet<String>,
) -> Vec<(String, Result<Verified, TokenError>)> {
    let header_recipients = ["delivered-to", "x-original-to"]
        .into_iter()
        .flat_map(|name| mail.headers_named(name))
        .map(|value| bare_address(value).to_ascii_lowercase());
    let mut seen = HashSet::new();
    let candidates: Vec<String> = mail
        .recipients()
        .map(|a| a.email.clone())
        .chain(header_recipients)
        .filter(|address| {
            address
                .split('@')
                .next()
                .is_some_and(|local| local.contains('+'))
                && own.contains(&token::base_mailbox(address))
        })
        .filter(|address| seen.insert(address.clone()))
        .collect();
    // Most mail carries no token: the policy's names are read only for one.
    if candidates.is_empty() {
        return Vec::new();
    }
    let names = lookup.department_names();
    candidates
        .into_iter()
        .map(|address| {
            let verdict = token::verify(
                context.secret,
                &address,
                context.now,
                names.iter().map(String::as_str),
            );
            (address, verdict)
        })
        .collect()
}

fn classify_reply(
    mail: &IncomingMail,
    context: &ClassifyContext<'_>,
    lookup: &dyn ThreadLookup,
    own: &HashSet<String>,
    thread: Option<(CaseId, ThreadedBy)>,
) -> MailKind {
    let sender = mail
        .from
        .as_ref()
        .map(|a| a.email.clone())
        .unwrap_or_default();
    let verdicts = token_verdicts(mail, context, lookup, own);

    let valid = verdicts
        .iter()
        .find_map(|(_, verdict)| verdict.as_ref().ok())
        .filter(|verified| lookup.case_exists(&verified.case));
    if let Some(verified) = valid {
        let case = verified.case.clone();
        let department = verified.department.clone();
        if let Some((threaded_case, _)) = &thread {
            if *threaded_case != case {
                return MailKind::Unverified {
                    case,
                    reason: UnverifiedReason::ThreadMismatch {
                        threaded_case: threaded_case.clone(),
                    },
                };
            }
        }
        let Some(addresses) = lookup.department_addresses(&department) else {
            return MailKind::Unverified {
                case,
                reason: UnverifiedReason::UnknownDepartment { department },
            };
        };
        if addresses.iter().any(|a| a.eq_ignore_ascii_case(&sender)) {
            return MailKind::DepartmentReply { case, department };
        }
        return MailKind::Unverified {
            case,
            reason: UnverifiedReason::SenderNotInDepartment { sender, department },
        };
    }

    // A token that is well-formed but fails is someone claiming to be a
    // department: the mail stays on the case it names, without authority.
    let failed = verdicts
        .iter()
        .find_map(|(address, verdict)| match verdict {
            Err(error @ TokenError::Expired { case, .. }) => {
                Some((Some(case.clone()), error.clone()))
            }
            Err(error @ TokenError::BadSignature) => {
                Some((token::claimed_case(address), error.clone()))
            }
            _ => None,
        });
    if let Some((claimed, error)) = failed {
        let case = claimed
            .filter(|case| lookup.case_exists(case))
            .or_else(|| thread.as_ref().map(|(case, _)| case.clone()));
        if let Some(case) = case {
            return MailKind::Unverified {
                case,
                reason: UnverifiedReason::Token(error),
            };
        }
    }

    let Some((case, threaded_by)) = thread else {
        return MailKind::NewComplaint;
    };
    if let Some(department) = lookup.departments_of(&sender).into_iter().next() {
        return MailKind::Unverified {
            case,
            reason: UnverifiedReason::DepartmentAddressWithoutToken { department },
        };
    }
    MailKind::CustomerReply { case, threaded_by }
}

/// Who may reply for each department: its addresses, its manager and its
/// named contacts, lower-cased. For [`MemoryLookup`] and store implementations.
pub fn department_addresses(policy: &Policy) -> BTreeMap<String, Vec<String>> {
    policy
        .departments
        .iter()
        .map(|department| {
            let mut addresses: Vec<String> = department
                .addresses
                .iter()
                .map(|a| a.node.clone())
                .chain(department.manager.iter().map(|m| m.node.clone()))
                .chain(department.contacts.iter().map(|(_, a)| a.node.clone()))
                .map(|a| a.trim().to_lowercase())
                .collect();
            addresses.sort();
            addresses.dedup();
            (department.name.node.clone(), addresses)
        })
        .collect()
}

/// A [`ThreadLookup`] held in memory: for tests, `simulate` and `rules test`.
#[derive(Debug, Clone, Default)]
pub struct MemoryLookup {
    pub messages: HashMap<String, KnownMessage>,
    pub cases: HashSet<CaseId>,
    /// Department name → addresses (lower-cased).
    pub departments: BTreeMap<String, Vec<String>>,
}

impl ThreadLookup for MemoryLookup {
    fn message(&self, message_id: &str) -> Option<KnownMessage> {
        self.messages.get(message_id).cloned()
    }

    fn case_exists(&self, case: &CaseId) -> bool {
        self.cases.contains(case)
    }

    fn department_addresses(&self, department: &str) -> Option<Vec<String>> {
        self.departments.get(department).cloned()
    }

    fn departments_of(&self, address: &str) -> Vec<String> {
        self.departments
            .iter()
            .filter(|(_, addresses)| addresses.iter().any(|a| a.eq_ignore_ascii_case(address)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn department_names(&self) -> Vec<String> {
        self.departments.keys().cloned().collect()
    }
}
