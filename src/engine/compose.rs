//! The engine's outgoing mail: who gets what, rendered from the policy's
//! templates once the store has given the mail its identity.
//!
//! A [`MailPlan`] holds everything a mail needs except its identity (case
//! number, sequence, Message-ID), which the store allocates inside the commit
//! and hands to the renderer. Rendering is pure, so the store may run it more
//! than once. Before a plan is queued the engine checks it
//! ([`MailPlan::preflight`]) without rendering it: a mail that cannot be built
//! (no recipient, an address lettre refuses, a bad attachment type) is then
//! left out with an event saying why, instead of aborting the whole batch
//! inside the transaction. The template is rendered only by the store, for
//! the mail's identity, usually on a worker thread ahead of the commit. A
//! template that fails there falls back to a plain built-in text, so a broken
//! template never stops mail from going out, and the rendering reports the
//! failure ([`store::RenderedMail::template_failure`]): the commit notes it in
//! the case's log together with the mail.

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use lettre::message::header::ContentType;

use super::policy::ActivePolicy;
use crate::case::{Address, Case, CaseId};
use crate::mail::outbound::{self, OutgoingAttachment, OutgoingMail};
use crate::mail::template::{
    local, CaseView, DigestView, EscalationView, MailView, NoticeView, RenderedMail,
    TemplateContext,
};
use crate::mail::token::{self, ReplySecret};
use crate::store::{self, mail_identity, MailDraft, MailIdentity};

/// What the daemon writes as, shared by every mail.
#[derive(Debug, Clone)]
pub(crate) struct Letterhead {
    /// From of every mail (display name: the organisation).
    pub from: Address,
    /// The complaint address; reply-token addresses are its plus-addresses.
    pub complaint_address: String,
    pub secret: ReplySecret,
    /// Last day reply tokens minted now are valid.
    pub token_expires: NaiveDate,
    pub organisation: String,
    /// Domain of Message-IDs.
    pub host: String,
    /// Zone times are shown in.
    pub zone: Tz,
    /// When the mail is queued; its Date header.
    pub at: DateTime<Utc>,
}

/// What a mail is about; decides its template context.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// The acknowledgement to the complainant: the case number and
    /// registration time only.
    Acknowledgement,
    /// A complaint or customer reply for a department.
    Forward {
        department: String,
        /// Shared by the forwards of one mail to several departments.
        mail: Arc<MailView>,
        attachments: Arc<Vec<OutgoingAttachment>>,
    },
    /// An escalation step's notice.
    Escalation {
        escalation: EscalationView,
        /// The case's department, as the template's `department`.
        department: Option<String>,
        /// Whether this copy goes to the complainant (no case content then).
        to_customer: bool,
    },
    /// A schedule's digest of cases.
    Digest { digest: DigestView },
    /// A lifecycle notice: a result for the customer, a confirmation or
    /// error for a department, a withdrawal or refusal for the customer.
    Notice {
        notice: NoticeView,
        /// Whether it goes to the complainant (the case is redacted then).
        to_customer: bool,
    },
}

/// One mail before the store gives it its identity.
#[derive(Debug, Clone)]
pub(crate) struct MailPlan {
    pub active: Arc<ActivePolicy>,
    pub letterhead: Arc<Letterhead>,
    pub purpose: String,
    /// The template's declared name (recorded with the mail).
    pub template: String,
    pub language: String,
    /// The case as it will be stored (its number comes with the identity),
    /// shared by the mails of one change.
    pub case: Option<Arc<Case>>,
    pub to: Vec<Address>,
    /// Mint a reply token for (case, this department) into Reply-To.
    pub reply_department: Option<String>,
    /// A fixed Reply-To.
    pub reply_to: Option<Address>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub content: Content,
    /// How the case's log names this mail (`the acknowledgement`): the
    /// notes that it cannot be sent or that its template failed start so.
    pub description: String,
}

impl MailPlan {
    /// Renders the mail for `identity`: pure, the same bytes for the same
    /// identity. A template that fails gives the plain fallback text and
    /// the note saying so.
    pub fn render(&self, identity: &MailIdentity) -> Result<store::RenderedMail, String> {
        let (mail, template_error) = self.outgoing(identity)?;
        let built = outbound::build(&mail, &self.letterhead.host).map_err(|e| e.to_string())?;
        Ok(store::RenderedMail {
            message_id: built.message_id,
            subject: built.subject,
            bytes: built.bytes,
            template_failure: template_error.map(|error| {
                format!(
                    "{}: the template failed ({error}); a plain text was sent",
                    self.description
                )
            }),
        })
    }

    /// Checks, for a placeholder identity of the same shape as the real one,
    /// everything that decides whether the mail can be built at all: a
    /// recipient, addresses lettre accepts (the reply token's too),
    /// attachment content types, a Message-ID of its purpose, host and case
    /// number. It neither renders the template nor builds the MIME message:
    /// both happen once, for the real identity, when the store renders it.
    /// `Err` when the mail cannot be built.
    pub fn preflight(&self, case_prefix: &str) -> Result<(), String> {
        self.preflight_with(case_prefix, &mut PreflightMemo::default())
    }

    /// [`MailPlan::preflight`] with the checks that are the same for every
    /// plan of one shape taken from `memo` (see [`PreflightMemo`]).
    pub fn preflight_with(
        &self,
        case_prefix: &str,
        memo: &mut PreflightMemo,
    ) -> Result<(), String> {
        let shape = memo.check(self, case_prefix);
        shape.identity.clone()?;
        if self.to.is_empty() {
            return Err("the mail has no recipient".to_owned());
        }
        shape.from.clone()?;
        for address in &self.to {
            check_address(address)?;
        }
        shape.reply_to.clone()?;
        if let Content::Forward { attachments, .. } = &self.content {
            for attachment in attachments.iter() {
                ContentType::parse(&attachment.content_type).map_err(|_| {
                    format!(
                        "attachment {:?} has an invalid content type {:?}",
                        attachment.name, attachment.content_type
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The checks of [`MailPlan::preflight`] that depend only on the
    /// plan's shape: the placeholder identity's Reply-To and Message-ID,
    /// and whether From and Reply-To are addresses lettre accepts.
    fn check_shape(&self, case_prefix: &str) -> ShapeCheck {
        let placeholder = self.case.as_ref().map(|case| {
            CaseId(format!(
                "{case_prefix}-{}-000001",
                case.created_at.format("%Y")
            ))
        });
        let identity = mail_identity(placeholder.as_ref(), &self.purpose, 1);
        let reply_to = self.reply_to(identity.case.as_ref());
        let message_id = outbound::message_id(
            identity.case.as_ref(),
            &identity.purpose,
            identity.sequence,
            &self.letterhead.host,
        );
        let (identity, reply_to) = match (reply_to, message_id) {
            (Err(error), _) => (Err(error), Ok(())),
            (Ok(_), Err(error)) => (Err(error.to_string()), Ok(())),
            (Ok(reply_to), Ok(_)) => (Ok(()), reply_to.as_ref().map_or(Ok(()), check_address)),
        };
        ShapeCheck {
            identity,
            from: check_address(&self.letterhead.from),
            reply_to,
        }
    }

    /// The draft the store queues; it renders this plan.
    pub fn into_draft(self, envelope_from: &str) -> MailDraft {
        let recipients = self.to.iter().map(|a| a.email.clone()).collect();
        let purpose = self.purpose.clone();
        let template = self.template.clone();
        let at = self.letterhead.at;
        let plan = Arc::new(self);
        MailDraft::new(
            &purpose,
            &template,
            envelope_from,
            recipients,
            at,
            move |identity| plan.render(identity),
        )
    }

    /// The mail to build, and the template error when the fallback text was used.
    fn outgoing(&self, identity: &MailIdentity) -> Result<(OutgoingMail, Option<String>), String> {
        let case_id = identity.case.clone();
        let reply_to = self.reply_to(case_id.as_ref())?;
        let context = self.context(case_id.as_ref(), reply_to.as_ref());
        let stem = self.active.template_stem(&self.template);
        let (rendered, template_error) =
            match self
                .active
                .templates
                .render(&stem, &self.language, &context)
            {
                Ok(rendered) => (rendered, None),
                Err(error) => (self.fallback(&context), Some(error.to_string())),
            };
        let sequence = identity.sequence;
        let attachments = match &self.content {
            Content::Forward { attachments, .. } => attachments.as_ref().clone(),
            _ => Vec::new(),
        };
        let mail = OutgoingMail {
            case: case_id,
            purpose: identity.purpose.clone(),
            sequence,
            from: self.letterhead.from.clone(),
            to: self.to.clone(),
            cc: Vec::new(),
            reply_to,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            in_reply_to: self.in_reply_to.clone(),
            references: self.references.clone(),
            attachments,
            date: self.letterhead.at,
        };
        Ok((mail, template_error))
    }

    /// The Reply-To for the mail of `case`: a reply-token address of the
    /// case and department when the plan asks for one, else the fixed one.
    fn reply_to(&self, case: Option<&CaseId>) -> Result<Option<Address>, String> {
        match (&self.reply_department, case) {
            (Some(department), Some(case)) => {
                let token = token::mint(
                    &self.letterhead.secret,
                    case,
                    department,
                    self.letterhead.token_expires,
                )
                .map_err(|e| e.to_string())?;
                Ok(Some(Address::new(
                    &token::reply_address(&self.letterhead.complaint_address, &token),
                    None,
                )))
            }
            _ => Ok(self.reply_to.clone()),
        }
    }

    /// The case as the mail's template sees it, numbered `case_id`: whole,
    /// or [`CaseView::redacted`] for the complainant (built redacted, not built whole
    /// and then emptied).
    fn case_view(&self, case_id: Option<&CaseId>, redact: bool) -> Option<CaseView> {
        let case = self.case.as_ref()?;
        let (names, zone) = (&self.active.names, self.letterhead.zone);
        let mut view = if redact {
            CaseView::new_redacted(case, names, zone)
        } else {
            CaseView::new(case, names, zone, self.letterhead.at)
        };
        if let Some(id) = case_id {
            id.0.clone_into(&mut view.number);
        }
        Some(view)
    }

    fn context(&self, case_id: Option<&CaseId>, reply_to: Option<&Address>) -> TemplateContext {
        let mut context = TemplateContext {
            organisation: self.letterhead.organisation.clone(),
            language: self.language.clone(),
            now: local(self.letterhead.at, self.letterhead.zone),
            ..TemplateContext::default()
        };
        let names = &self.active.names;
        match &self.content {
            Content::Acknowledgement => {
                context.case = self.case_view(case_id, true);
            }
            Content::Forward {
                department, mail, ..
            } => {
                context.case = self.case_view(case_id, false);
                context.mail = Some(MailView::clone(mail));
                context.department = Some(names.department(department));
                context.reply_address = reply_to.map(|a| a.email.clone());
            }
            Content::Escalation {
                escalation,
                department,
                to_customer,
            } => {
                context.escalation = Some(escalation.clone());
                context.case = self.case_view(case_id, *to_customer);
                if !*to_customer {
                    context.department = department.as_deref().map(|d| names.department(d));
                    context.reply_address = reply_to.map(|a| a.email.clone());
                }
            }
            Content::Digest { digest } => {
                context.digest = Some(digest.clone());
            }
            Content::Notice {
                notice,
                to_customer,
            } => {
                context.notice = Some(notice.clone());
                context.case = self.case_view(case_id, *to_customer);
                context.reply_address = reply_to.map(|a| a.email.clone());
            }
        }
        context
    }

    /// A plain text for when the template fails: what the mail must say, no more.
    fn fallback(&self, context: &TemplateContext) -> RenderedMail {
        let number = context
            .case
            .as_ref()
            .map(|c| c.number.clone())
            .unwrap_or_default();
        let (subject, text) = match &self.content {
            Content::Acknowledgement => (
                "Complaint received".to_owned(),
                format!(
                    "Your complaint has been registered as case {number}. Please keep the case \
                     number in the subject when you write again.\n"
                ),
            ),
            Content::Forward { mail, .. } => (
                context
                    .case
                    .as_ref()
                    .map(|c| c.subject.clone())
                    .unwrap_or_default(),
                format!(
                    "Case {number} has been assigned to you. Reply to this mail to answer.\n\n\
                     From: {} <{}>\nSubject: {}\n\n{}\n",
                    mail.from.name, mail.from.email, mail.subject, mail.text
                ),
            ),
            Content::Escalation { escalation, .. } => (
                format!("{}: due {}", escalation.deadline.display, escalation.due),
                format!(
                    "Case {number}: the deadline {} is due {} (escalation step {}).\n",
                    escalation.deadline.display,
                    escalation.due,
                    escalation.step + 1
                ),
            ),
            Content::Digest { digest } => (
                format!("{}: {} case(s)", digest.schedule, digest.cases.len()),
                digest
                    .cases
                    .iter()
                    .map(|c| format!("{}  {}  {}\n", c.number, c.status, c.subject))
                    .collect(),
            ),
            Content::Notice { notice, .. } => {
                let mut text = format!("Case {number}\n\n{}\n", notice.text);
                for item in &notice.items {
                    text.push_str(&format!("- {item}\n"));
                }
                (format!("Case {number}"), text)
            }
        };
        RenderedMail {
            subject,
            text,
            html: None,
        }
    }
}

/// Whether lettre accepts an address (as the mail is built, trimmed).
fn check_address(address: &Address) -> Result<(), String> {
    let email = address.email.trim();
    email
        .parse::<lettre::Address>()
        .map(drop)
        .map_err(|e| format!("{email:?} is not a valid mail address: {e}"))
}

/// The results of the checks of [`MailPlan::preflight`] that depend only
/// on a plan's shape.
#[derive(Debug, Clone)]
struct ShapeCheck {
    /// The placeholder identity's Reply-To (a reply token is minted for
    /// it) and Message-ID can be made.
    identity: Result<(), String>,
    /// The letterhead's From is a valid address.
    from: Result<(), String>,
    /// The Reply-To, if any, is a valid address (checked only when the
    /// identity could be made).
    reply_to: Result<(), String>,
}

/// What makes two plans' shape checks the same, besides their letterhead
/// and the case-number prefix: the year of the case's placeholder number,
/// the purpose, the department a reply token is minted for, and the fixed
/// Reply-To.
#[derive(Debug)]
struct Shape {
    year: Option<i32>,
    purpose: String,
    reply_department: Option<String>,
    reply_to: Option<String>,
}

impl Shape {
    fn of(plan: &MailPlan) -> Shape {
        Shape {
            year: plan.case.as_ref().map(|case| case.created_at.year()),
            purpose: plan.purpose.clone(),
            reply_department: plan.reply_department.clone(),
            reply_to: plan.reply_to.as_ref().map(|a| a.email.clone()),
        }
    }

    fn fits(&self, plan: &MailPlan) -> bool {
        self.year == plan.case.as_ref().map(|case| case.created_at.year())
            && self.purpose == plan.purpose
            && self.reply_department.as_deref() == plan.reply_department.as_deref()
            && self.reply_to.as_deref() == plan.reply_to.as_ref().map(|a| a.email.as_str())
    }
}

/// The shape checks of [`MailPlan::preflight`] already made for one
/// letterhead and case-number prefix. The mails of a batch come in a few
/// shapes (an acknowledgement, a forward to each department), and checking
/// a shape mints a reply token: an HMAC, worth doing once per shape rather
/// than once per mail.
#[derive(Debug, Default)]
pub(crate) struct PreflightMemo {
    letterhead: Option<Arc<Letterhead>>,
    case_prefix: String,
    shapes: Vec<(Shape, ShapeCheck)>,
}

impl PreflightMemo {
    /// The shape checks of `plan`, made now unless made before.
    fn check(&mut self, plan: &MailPlan, case_prefix: &str) -> &ShapeCheck {
        let same_letterhead = self
            .letterhead
            .as_ref()
            .is_some_and(|known| Arc::ptr_eq(known, &plan.letterhead));
        if !same_letterhead || self.case_prefix != case_prefix {
            self.letterhead = Some(plan.letterhead.clone());
            case_prefix.clone_into(&mut self.case_prefix);
            self.shapes.clear();
        }
        let index = match self.shapes.iter().position(|(shape, _)| shape.fits(plan)) {
            Some(index) => index,
            None => {
                self.shapes
                    .push((Shape::of(plan), plan.check_shape(case_prefix)));
                self.shapes.len() - 1
            }
        };
        &self.shapes[index].1
    }
}

/// A purpose usable in Message-IDs (`[a-z0-9_-]{1,32}`): `wanted` when it
/// is one, else `fallback`.
pub(crate) fn purpose_or(wanted: &str, fallback: &str) -> String {
    let usable = (1..=32).contains(&wanted.len())
        && wanted
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if usable {
        wanted.to_owned()
    } else {
        fallback.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn active() -> Arc<ActivePolicy> {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        Arc::new(ActivePolicy::load(&rules, now()).expect("the default policy loads"))
    }

    fn letterhead(host: &str) -> Arc<Letterhead> {
        Arc::new(Letterhead {
            from: Address::new("complaints@corp.example", Some("Corp Gas")),
            complaint_address: "complaints@corp.example".to_owned(),
            secret: ReplySecret::new(b"compose-test-secret-0123456789".to_vec()).expect("a secret"),
            token_expires: now().date_naive() + chrono::Days::new(90),
            organisation: "Corp Gas".to_owned(),
            host: host.to_owned(),
            zone: chrono_tz::Asia::Shanghai,
            at: now(),
        })
    }

    /// A forward of a new case to `department`, to `to`.
    fn forward(
        active: &Arc<ActivePolicy>,
        letterhead: &Arc<Letterhead>,
        department: &str,
        to: &[&str],
    ) -> MailPlan {
        let sender = Address::new("wang@customers.example", None);
        let case = Case::new(CaseId(String::new()), now(), "own", sender, "漏气", "zh");
        MailPlan {
            active: active.clone(),
            letterhead: letterhead.clone(),
            purpose: "forward".to_owned(),
            template: "forward".to_owned(),
            language: "zh".to_owned(),
            case: Some(Arc::new(case)),
            to: to.iter().map(|a| Address::new(a, None)).collect(),
            reply_department: Some(department.to_owned()),
            reply_to: None,
            in_reply_to: None,
            references: Vec::new(),
            content: Content::Acknowledgement,
            description: "the forward".to_owned(),
        }
    }

    #[test]
    fn a_memo_checks_each_plan_of_a_shape_for_its_own_recipients() {
        let (active, letterhead) = (active(), letterhead("mail.corp.example"));
        let mut memo = PreflightMemo::default();
        let plans = [
            forward(&active, &letterhead, "network", &["network@gas.example"]),
            forward(&active, &letterhead, "network", &["wang@example..com"]),
            forward(&active, &letterhead, "network", &[]),
            forward(&active, &letterhead, "service", &["service@gas.example"]),
            forward(&active, &letterhead, "network", &["network@gas.example"]),
        ];
        let verdicts: Vec<Result<(), String>> = plans
            .iter()
            .map(|plan| plan.preflight_with("TS", &mut memo))
            .collect();
        for (plan, verdict) in plans.iter().zip(&verdicts) {
            assert_eq!(*verdict, plan.preflight("TS"));
        }
        assert_eq!(verdicts[0], Ok(()));
        assert!(verdicts[1]
            .as_ref()
            .is_err_and(|e| e.starts_with("\"wang@example..com\" is not a valid mail address")));
        assert_eq!(verdicts[2], Err("the mail has no recipient".to_owned()));
        assert_eq!(verdicts[3], Ok(()));
        // Two departments, one shape each, whatever the recipients.
        assert_eq!(memo.shapes.len(), 2);
    }

    #[test]
    fn a_memo_starts_over_for_another_letterhead_or_prefix() {
        let active = active();
        let good = letterhead("mail.corp.example");
        let bad = letterhead("no host");
        let mut memo = PreflightMemo::default();
        let to = ["network@gas.example"];
        let refused = forward(&active, &bad, "network", &to).preflight_with("TS", &mut memo);
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(
            forward(&active, &good, "network", &to).preflight_with("TS", &mut memo),
            Ok(())
        );
        let bad_prefix = forward(&active, &good, "network", &to).preflight_with("T S", &mut memo);
        assert_eq!(
            bad_prefix,
            forward(&active, &good, "network", &to).preflight("T S")
        );
        assert!(bad_prefix.is_err());
    }
}
