//! The complaint lifecycle worked by mail, end to end on a temporary store:
//! department commands and customer replies as raw mail, on a manual clock.
//!
//! The policy is `tests/fixtures/lifecycle/rules/` with the project's
//! default templates (`rules/templates/`).

mod engine_harness;

use chrono::{Duration, NaiveDate};
use complaintd::case::{Case, CaseId, CaseState, Event, EventKind, FieldValue};
use complaintd::clock::Clock;
use complaintd::engine::{Outcome, RawMessage, DEPARTMENT_REPLY};
use complaintd::mail::inbound::{parse, IncomingMail};
use complaintd::mail::token::{self, ReplySecret};
use complaintd::store::OutboxEntry;
use engine_harness::{at, Harness, Setup};

use CaseState::*;

const SECRET: &[u8] = b"lifecycle-test-reply-secret-0123456789";
const CUSTOMER: &str = "wang@example.com";
const BILLING: &str = "billing@corp.example";
const SERVICE: &str = "service@corp.example";
const OFFICE: &str = "office@corp.example";

fn harness() -> Harness {
    Harness::open(&Setup {
        rules: "tests/fixtures/lifecycle/rules",
        domain: "corp.example",
        organisation: "Corp Gas",
        secret: SECRET,
    })
}

/// One raw mail, 8-bit UTF-8 text.
struct Mail<'a> {
    from: &'a str,
    to: &'a str,
    subject: &'a str,
    in_reply_to: Option<&'a str>,
    body: &'a str,
}

impl Harness {
    fn send(&self, mail: Mail<'_>) -> Outcome {
        let outcomes = self.send_together(vec![mail]);
        assert_eq!(outcomes.len(), 1);
        outcomes[0].clone()
    }

    /// Hands `mails` to the engine in one ingest call, as one poll of the
    /// mailbox would.
    fn send_together(&self, mails: Vec<Mail<'_>>) -> Vec<Outcome> {
        let raws: Vec<(u32, RawMessage)> = mails
            .into_iter()
            .map(|mail| {
                let uid = self.next_uid.get();
                self.next_uid.set(uid + 1);
                (uid, RawMessage::full(self.raw(mail)))
            })
            .collect();
        let count = raws.len();
        let report = self.engine.ingest("INBOX", "own", 7, raws).expect("ingest");
        assert_eq!(report.messages.len(), count);
        report.messages.into_iter().map(|m| m.outcome).collect()
    }

    fn raw(&self, mail: Mail<'_>) -> Vec<u8> {
        let n = self.next_message.get();
        self.next_message.set(n + 1);
        let mut raw = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0800\r\n\
             Message-ID: <m{n}@outside.example>\r\n",
            mail.from, mail.to, mail.subject
        );
        if let Some(parent) = mail.in_reply_to {
            raw.push_str(&format!(
                "In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"
            ));
        }
        raw.push_str(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n",
        );
        raw.push_str(&mail.body.replace('\n', "\r\n"));
        raw.push_str("\r\n");
        raw.into_bytes()
    }

    /// A billing complaint from the customer; returns its case.
    fn complaint(&self, from: &str) -> CaseId {
        match self.send(Mail {
            from,
            to: "complaints@corp.example",
            subject: "bill wrong",
            in_reply_to: None,
            body: "你好，这个月的气费账单多收了 120 元，请核实后退还。",
        }) {
            Outcome::NewCase {
                case, forwarded_to, ..
            } => {
                assert_eq!(forwarded_to, ["billing_dept"]);
                case
            }
            other => panic!("{other:?}"),
        }
    }

    /// An English complaint the policy routes to `service`; returns its case.
    fn english_complaint(&self, from: &str) -> CaseId {
        match self.send(Mail {
            from,
            to: "complaints@corp.example",
            subject: "Nobody came to fix the leak",
            in_reply_to: None,
            body: "Hello, I reported a gas smell at my address two days ago and nobody has come. Please send someone.",
        }) {
            Outcome::NewCase {
                case, forwarded_to, ..
            } => {
                assert_eq!(forwarded_to, ["service"]);
                assert_eq!(self.case(&case).language, "en");
                case
            }
            other => panic!("{other:?}"),
        }
    }

    /// A reply of `department` from `from` with a reply token of its own for
    /// the case, as if it had been sent a copy of the forward.
    fn reply_with_token(&self, id: &CaseId, department: &str, from: &str, body: &str) -> Outcome {
        let token = token::mint(
            &ReplySecret::new(SECRET.to_vec()).unwrap(),
            id,
            department,
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
        )
        .unwrap();
        let forward = self.last_mail(id, "forward");
        self.send(Mail {
            from,
            to: &format!("complaints+{token}@corp.example"),
            subject: &format!("Re: [{}] forward", id.0),
            in_reply_to: Some(&forward.message_id),
            body,
        })
    }

    /// Whether the case's clock `deadline` has stopped, and no timer of it is left.
    fn clock_ended(&self, id: &CaseId, deadline: &str) -> bool {
        let stopped = self.case(id).clocks[deadline].stopped_at.is_some();
        let timers = self
            .store()
            .timers_of_case(id)
            .unwrap()
            .into_iter()
            .filter(|t| t.deadline == deadline)
            .count();
        stopped && timers == 0
    }

    fn case(&self, id: &CaseId) -> Case {
        self.store().case(id).unwrap().expect("case exists")
    }

    fn events(&self, id: &CaseId) -> Vec<Event> {
        self.store().events(id).unwrap()
    }

    fn count(&self, id: &CaseId, purpose: &str) -> usize {
        self.outbox(id)
            .iter()
            .filter(|e| e.purpose == purpose)
            .count()
    }

    fn read(&self, entry: &OutboxEntry) -> IncomingMail {
        let bytes = self.store().outbox_message(&entry.id).unwrap().unwrap();
        parse(&bytes).expect("outgoing mail parses").mail
    }

    /// A department's reply to the newest forward of the case, as sent to
    /// the forward's reply-token address.
    fn department_reply(&self, id: &CaseId, from: &str, body: &str) -> Outcome {
        let (token_address, subject, parent) = self.forward_thread(id);
        self.send(Mail {
            from,
            to: &token_address,
            subject: &subject,
            in_reply_to: Some(&parent),
            body,
        })
    }

    /// The reply-token address, reply subject and Message-ID of the newest
    /// forward of the case.
    fn forward_thread(&self, id: &CaseId) -> (String, String, String) {
        let forward = self.last_mail(id, "forward");
        let token_address = self.read(&forward).reply_to[0].email.clone();
        (
            token_address,
            format!("Re: [{}] forward", id.0),
            forward.message_id,
        )
    }

    /// The customer's reply to the newest mail of `purpose` they got.
    fn customer_reply(&self, id: &CaseId, purpose: &str, body: &str) -> Outcome {
        let parent = self.last_mail(id, purpose);
        self.send(Mail {
            from: CUSTOMER,
            to: "complaints@corp.example",
            subject: &format!("Re: [{}] your complaint", id.0),
            in_reply_to: Some(&parent.message_id),
            body,
        })
    }
}

fn state_changes(events: &[Event]) -> Vec<(CaseState, CaseState)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StateChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CommandRejected { reason, .. } => Some(format!("rejected: {reason}")),
            EventKind::SecurityAlert { reason, .. } => Some(format!("alert: {reason}")),
            _ => None,
        })
        .collect()
}

#[test]
fn a_complaint_is_resolved_reopened_resolved_again_and_closed_by_mail() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    assert_eq!(h.case(&id).state, Assigned);

    h.clock.advance(Duration::hours(2));
    let outcome = h.department_reply(
        &id,
        BILLING,
        "状态: 已解决\n处理结果: 经核实系抄表错误，多收的 120 元已退回您的账户。\n\n抄表员已重新培训。",
    );
    assert_eq!(
        outcome,
        Outcome::DepartmentReply {
            case: id.clone(),
            department: "billing_dept".into()
        }
    );
    assert_eq!(h.case(&id).state, Answered);
    let result = h.last_mail(&id, "result");
    assert_eq!(result.recipients, [CUSTOMER]);
    let result_mail = h.read(&result);
    assert!(
        result_mail.text.contains("多收的 120 元已退回您的账户"),
        "{}",
        result_mail.text
    );
    assert!(
        result_mail.text.contains("1–5") && result_mail.text.contains("不满意"),
        "the satisfaction question: {}",
        result_mail.text
    );
    let confirmation = h.last_mail(&id, "confirmation");
    assert_eq!(confirmation.recipients, [BILLING]);
    let confirmation_text = h.read(&confirmation).text;
    assert!(
        confirmation_text.contains("resolved"),
        "{confirmation_text}"
    );
    assert!(h.case(&id).clocks["follow_up"].stopped_at.is_none());
    assert!(h.case(&id).clocks["investigate"].stopped_at.is_some());

    h.clock.advance(Duration::hours(1));
    let outcome = h.customer_reply(&id, "result", "不满意\n钱还没有到账。");
    assert_eq!(
        outcome,
        Outcome::CustomerReply {
            case: id.clone(),
            forwarded_to: Some("billing_dept".into())
        }
    );
    let case = h.case(&id);
    assert_eq!(case.state, Assigned, "reopened and forwarded again");
    assert_eq!(case.reopen_count, 1);
    assert!(case.tags.contains("reopened"), "classify on reopened ran");
    assert_eq!(h.count(&id, "forward"), 2);
    let second_forward = h.read(&h.last_mail(&id, "forward"));
    assert!(second_forward.text.contains("钱还没有到账"));

    h.clock.advance(Duration::hours(1));
    h.department_reply(&id, BILLING, "状态: 已解决\n处理结果: 退款已于今日到账。");
    assert_eq!(h.case(&id).state, Answered);
    assert_eq!(h.count(&id, "result"), 2);

    h.clock.advance(Duration::hours(1));
    let outcome = h.customer_reply(&id, "result", "5");
    assert_eq!(
        outcome,
        Outcome::CustomerReply {
            case: id.clone(),
            forwarded_to: None
        },
        "a satisfied answer closes and is not forwarded"
    );
    let case = h.case(&id);
    assert_eq!(case.state, Closed);
    assert_eq!(case.fields["satisfaction"], FieldValue::Number(5.0));
    assert_eq!(
        state_changes(&h.events(&id)),
        [
            (Received, Acknowledged),
            (Acknowledged, Assigned),
            (Assigned, Resolved),
            (Resolved, Answered),
            (Answered, Reopened),
            (Reopened, Assigned),
            (Assigned, Resolved),
            (Resolved, Answered),
            (Answered, Closed),
        ]
    );
    let by_department = h
        .events(&id)
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::StateChanged { because, .. } if because.rule == DEPARTMENT_REPLY))
        .count();
    assert_eq!(by_department, 4, "each department step names its cause");
}

#[test]
fn replies_that_do_not_verify_change_nothing() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let other = h.complaint("li@example.com");
    let forward = h.last_mail(&id, "forward");
    let token_address = h.read(&forward).reply_to[0].email.clone();
    let other_forward = h.last_mail(&other, "forward");
    let other_token = h.read(&other_forward).reply_to[0].email.clone();
    let forged_token = format!(
        "complaints+{}@corp.example",
        token::mint(
            &ReplySecret::new(b"not-the-secret-of-this-daemon-0123456".to_vec()).unwrap(),
            &id,
            "billing_dept",
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
        )
        .unwrap()
    );
    let subject = format!("Re: [{}] forward", id.0);
    let body = "状态: 已解决\n处理结果: 已处理。";
    let attempts = [
        (
            "a non-department address",
            "evil@example.com",
            token_address.as_str(),
        ),
        (
            "a department address without token",
            BILLING,
            "complaints@corp.example",
        ),
        ("a token for another case", BILLING, other_token.as_str()),
        ("a forged token", BILLING, forged_token.as_str()),
    ];
    for (what, from, to) in attempts {
        let before = h.case(&id);
        let other_before = h.case(&other);
        let events_before = h.events(&id).len() + h.events(&other).len();
        let rejections_before =
            rejections(&h.events(&id)).len() + rejections(&h.events(&other)).len();
        let mails_before = h.outbox(&id).len() + h.outbox(&other).len();
        let outcome = h.send(Mail {
            from,
            to,
            subject: &subject,
            in_reply_to: Some(&forward.message_id),
            body,
        });
        assert!(
            matches!(outcome, Outcome::Unverified { .. }),
            "{what}: {outcome:?}"
        );
        assert_eq!(h.case(&id), before, "{what}");
        assert_eq!(h.case(&other), other_before, "{what}");
        let mut new_events = h.events(&id);
        new_events.extend(h.events(&other));
        assert_eq!(new_events.len(), events_before + 2, "{what}");
        assert_eq!(
            rejections(&new_events).len(),
            rejections_before + 1,
            "{what}: one alert or rejection"
        );
        assert_eq!(
            h.outbox(&id).len() + h.outbox(&other).len(),
            mails_before,
            "{what}: no mail"
        );
    }

    // An expired token: the department writes long after the forward.
    h.clock.advance(Duration::days(120));
    let before = h.case(&id);
    let outcome = h.department_reply(&id, BILLING, body);
    match outcome {
        Outcome::Unverified { reason, .. } => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.case(&id), before);
}

#[test]
fn a_reply_with_one_bad_command_applies_nothing_and_gets_an_error_mail() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let before = h.case(&id);
    h.department_reply(
        &id,
        BILLING,
        "状态: 已解决\n责任: 谁知道\n处理结果: 已退款。",
    );
    assert_eq!(h.case(&id), before);
    assert_eq!(h.count(&id, "result"), 0);
    let rejected = rejections(&h.events(&id));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let error = h.last_mail(&id, "command-error");
    assert_eq!(error.recipients, [BILLING]);
    let text = h.read(&error).text;
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("谁知道"), "{text}");
}

#[test]
fn an_illegal_status_is_refused_whole() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.department_reply(&id, BILLING, "状态: 不予受理\n原因: 不属于本单位受理范围");
    assert_eq!(h.case(&id).state, Rejected);
    let before = h.case(&id);
    h.department_reply(&id, BILLING, "备注: 再看看\n状态: 处理中");
    assert_eq!(h.case(&id), before);
    let text = h.read(&h.last_mail(&id, "command-error")).text;
    assert!(text.contains("finished and can change no more"), "{text}");
    assert!(
        !h.events(&id)
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Note { text } if text.contains("再看看"))),
        "the note of a refused reply is not recorded as applied"
    );
}

#[test]
fn a_transfer_reassigns_and_forwards_with_the_new_departments_token() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.department_reply(&id, BILLING, "转办: nowhere，不归我们");
    assert_eq!(h.case(&id).assignment.unwrap().department, "billing_dept");
    let text = h.read(&h.last_mail(&id, "command-error")).text;
    assert!(text.contains("nowhere"), "{text}");

    h.department_reply(&id, BILLING, "转办: 客户服务中心，属于服务态度问题");
    let case = h.case(&id);
    assert_eq!(case.assignment.unwrap().department, "service");
    let forward = h.last_mail(&id, "forward");
    assert_eq!(forward.recipients, ["service@corp.example"]);
    let token_address = h.read(&forward).reply_to[0].email.clone();
    let secret = ReplySecret::new(SECRET.to_vec()).unwrap();
    let verified = token::verify(
        &secret,
        &token_address,
        h.clock.now(),
        ["billing_dept", "service"],
    )
    .expect("the forward's Reply-To carries a valid token");
    assert_eq!(verified.department, "service", "{token_address}");

    // The new department can work the case with its token.
    h.department_reply(&id, "service@corp.example", "状态: 已受理");
    assert_eq!(h.case(&id).state, Accepted);
}

#[test]
fn a_customer_withdraws_and_a_second_withdrawal_is_refused() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.customer_reply(&id, "ack", "撤诉\n已经和营业厅当面解决了。");
    let case = h.case(&id);
    assert_eq!(case.state, Withdrawn);
    assert_eq!(
        case.fields["withdrawal_reason"],
        FieldValue::Text("已经和营业厅当面解决了。".into())
    );
    let confirmation = h.last_mail(&id, "withdrawn");
    assert_eq!(confirmation.recipients, [CUSTOMER]);
    assert!(h.read(&confirmation).text.contains("已撤回"));
    assert_eq!(h.count(&id, "forward"), 2, "the department hears of it");

    h.customer_reply(&id, "withdrawn", "撤回投诉");
    assert_eq!(h.case(&id).state, Withdrawn);
    let refused = h.last_mail(&id, "refused");
    assert_eq!(refused.recipients, [CUSTOMER]);
    assert_eq!(rejections(&h.events(&id)).len(), 1);
}

#[test]
fn an_appeal_is_heard_inside_its_window_and_refused_after_it() {
    for (days_later, heard) in [(1, true), (10, false)] {
        let h = harness();
        let id = h.complaint(CUSTOMER);
        h.department_reply(&id, BILLING, "责任: 我方");
        assert!(
            h.case(&id).clocks.contains_key("appeal"),
            "the window opens"
        );
        h.clock.advance(Duration::days(days_later));
        let before = h.case(&id);
        h.department_reply(&id, BILLING, "申诉: 表计故障属厂家责任");
        if heard {
            assert_eq!(h.case(&id).state, Appealed);
            let to_office = h.last_mail(&id, "forward");
            assert_eq!(to_office.recipients, ["office@corp.example"]);
            assert!(h.read(&to_office).text.contains("表计故障属厂家责任"));
        } else {
            assert_eq!(h.case(&id), before, "{days_later} days later");
            let text = h.read(&h.last_mail(&id, "command-error")).text;
            assert!(text.contains("appeal window closed"), "{text}");
        }
    }
}

#[test]
fn a_reply_after_closing_reopens_only_within_the_window() {
    for (days_later, reopens) in [(5, true), (40, false)] {
        let h = harness();
        let id = h.complaint(CUSTOMER);
        h.department_reply(&id, BILLING, "状态: 已解决\n处理结果: 已退款。");
        h.customer_reply(&id, "result", "满意");
        assert_eq!(h.case(&id).state, Closed);
        h.clock.advance(Duration::days(days_later));
        h.customer_reply(&id, "result", "又多收了。");
        let case = h.case(&id);
        if reopens {
            assert_eq!(case.state, Assigned, "{days_later} days after closing");
            assert_eq!(case.reopen_count, 1);
            assert_eq!(h.count(&id, "forward"), 2);
        } else {
            assert_eq!(case.state, Closed, "{days_later} days after closing");
            assert_eq!(case.reopen_count, 0);
            assert_eq!(h.count(&id, "forward"), 1);
        }
    }
}

/// Runs a department reply from `from` that must be refused whole: every
/// case of `cases` stays as it was; the first gets only the mail, one
/// `CommandRejected` event and one error mail to `from`, the others get
/// nothing. Returns the error mail's text.
fn refused(h: &Harness, cases: &[&CaseId], from: &str, reply: impl FnOnce() -> Outcome) -> String {
    let before: Vec<(Case, usize, usize)> = cases
        .iter()
        .map(|id| (h.case(id), h.events(id).len(), h.outbox(id).len()))
        .collect();
    let outcome = reply();
    assert!(
        matches!(outcome, Outcome::DepartmentReply { .. }),
        "{outcome:?}"
    );
    for (index, (id, (case, events, mails))) in cases.iter().zip(before).enumerate() {
        assert_eq!(h.case(id), case, "case {id} is unchanged");
        let new_events = h.events(id)[events..].to_vec();
        let new_mails = h.outbox(id).len() - mails;
        if index == 0 {
            assert_eq!(rejections(&new_events).len(), 1, "{new_events:?}");
            assert!(
                new_events.iter().all(|e| matches!(
                    e.kind,
                    EventKind::MailReceived { .. }
                        | EventKind::CommandRejected { .. }
                        | EventKind::MailQueued { .. }
                )),
                "nothing but the refusal is recorded: {new_events:?}"
            );
            assert_eq!(new_mails, 1, "only the error mail");
        } else {
            assert!(new_events.is_empty(), "{id}: {new_events:?}");
            assert_eq!(new_mails, 0, "{id}");
        }
    }
    let error = h.last_mail(cases[0], "command-error");
    assert_eq!(error.recipients, [from]);
    h.read(&error).text
}

fn notes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Note { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_follow_up_call_is_recorded_and_the_customer_still_closes() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.department_reply(
        &id,
        BILLING,
        "状态: 已解决\n处理结果: 多收的 120 元已退回。",
    );
    assert_eq!(h.case(&id).state, Answered);
    assert!(h.case(&id).clocks["follow_up"].stopped_at.is_none());

    h.clock.advance(Duration::hours(3));
    h.department_reply(
        &id,
        BILLING,
        "状态: 回访\n处理结果: 客户确认已到账，表示满意。\n备注: 电话回访",
    );
    let case = h.case(&id);
    assert_eq!(case.state, FollowUp);
    assert_eq!(
        case.fields["follow_up_result"],
        FieldValue::Text("客户确认已到账，表示满意。".into())
    );
    assert_eq!(
        case.fields["result"],
        FieldValue::Text("多收的 120 元已退回。".into()),
        "the answer the customer got stays"
    );
    assert_eq!(case.clocks["follow_up"].stopped_at, Some(h.clock.now()));
    assert!(h.clock_ended(&id, "follow_up"), "stops on follow_up");
    assert!(h.events(&id).iter().any(|e| e.kind
        == EventKind::ClockStopped {
            deadline: "follow_up".into(),
            met: true
        }));
    assert_eq!(
        h.count(&id, "result"),
        1,
        "a follow-up mails the customer nothing"
    );
    assert_eq!(
        state_changes(&h.events(&id)).last(),
        Some(&(Answered, FollowUp))
    );
    assert!(notes(&h.events(&id))
        .iter()
        .any(|n| n == "note of department billing_dept: 电话回访"));
    let confirmation = h.read(&h.last_mail(&id, "confirmation")).text;
    assert!(
        confirmation.contains("the case is now in follow-up")
            && confirmation.contains("follow-up result recorded"),
        "{confirmation}"
    );

    h.customer_reply(&id, "result", "4");
    assert_eq!(h.case(&id).state, Closed);
    assert_eq!(
        state_changes(&h.events(&id)).last(),
        Some(&(FollowUp, Closed))
    );
}

#[test]
fn a_follow_up_in_english_and_by_the_complaint_office() {
    let h = harness();
    let id = h.english_complaint(CUSTOMER);
    h.department_reply(
        &id,
        SERVICE,
        "status: resolved\nresult: An engineer fixed the leak today.",
    );
    assert_eq!(h.case(&id).state, Answered);
    h.department_reply(
        &id,
        SERVICE,
        "Status: Follow-up\nnote: called back, the customer is content",
    );
    assert_eq!(h.case(&id).state, FollowUp);
    assert!(notes(&h.events(&id))
        .iter()
        .any(|n| n.ends_with("called back, the customer is content")));

    // The office does follow-ups too (gas regulation 6.1).
    let other = h.english_complaint("li@example.com");
    h.department_reply(&other, SERVICE, "status: resolved\nresult: Fixed.");
    h.reply_with_token(&other, "office", OFFICE, "status: follow-up");
    assert_eq!(h.case(&other).state, FollowUp);
    assert_eq!(h.last_mail(&other, "confirmation").recipients, [OFFICE]);
}

#[test]
fn a_follow_up_is_refused_before_the_answer_and_to_a_department_with_only_a_copy() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let text = refused(&h, &[&id], BILLING, || {
        h.department_reply(&id, BILLING, "状态: 回访")
    });
    assert!(text.contains("cannot become in follow-up"), "{text}");

    h.department_reply(&id, BILLING, "状态: 已解决\n处理结果: 已退款。");
    let text = refused(&h, &[&id], SERVICE, || {
        h.reply_with_token(&id, "service", SERVICE, "status: follow-up")
    });
    assert!(
        text.contains(
            "only the department the case is assigned to (billing_dept) or the complaint office (office) may do this, not department service"
        ),
        "{text}"
    );
}

#[test]
fn an_abnormal_close_records_its_reason_and_stops_the_clocks() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.department_reply(&id, BILLING, "状态: 处理中");
    assert!(!h.clock_ended(&id, "investigate"));
    let reason = "要求赔偿十万元，超出法律法规和公司政策，协商未达成一致";
    h.department_reply(&id, BILLING, &format!("状态: 异常关闭\n原因: {reason}"));
    let case = h.case(&id);
    assert_eq!(case.state, AbnormallyClosed);
    assert_eq!(case.fields["cause"], FieldValue::Text(reason.into()));
    assert!(
        h.clock_ended(&id, "investigate"),
        "stops on abnormally_closed"
    );
    assert_eq!(
        state_changes(&h.events(&id)).last(),
        Some(&(InProgress, AbnormallyClosed))
    );
    let confirmation = h.read(&h.last_mail(&id, "confirmation")).text;
    assert!(
        confirmation.contains("the case is now abnormally closed"),
        "{confirmation}"
    );

    // A finished case is not closed again, nor its reason rewritten; a
    // note is still recorded.
    let text = refused(&h, &[&id], BILLING, || {
        h.department_reply(&id, BILLING, "状态: 异常关闭\n原因: 再次确认")
    });
    assert!(
        text.contains("the case is abnormally closed: it is finished and can change no more"),
        "{text}"
    );
    let before = h.case(&id);
    h.department_reply(&id, BILLING, "备注: 客户又来电，已解释");
    assert_eq!(h.case(&id), before);
    assert!(notes(&h.events(&id))
        .iter()
        .any(|n| n.ends_with("客户又来电，已解释")));
}

#[test]
fn an_abnormal_close_in_english_and_without_its_reason() {
    let h = harness();
    let id = h.english_complaint(CUSTOMER);
    let text = refused(&h, &[&id], SERVICE, || {
        h.department_reply(&id, SERVICE, "status: abnormal-close")
    });
    assert!(
        text.contains("line 1: `status: abnormal-close`: an abnormal close needs its reason"),
        "{text}"
    );
    h.department_reply(
        &id,
        SERVICE,
        "status: abnormal-close\ncause: asks for compensation far beyond the law and our policy",
    );
    assert_eq!(h.case(&id).state, AbnormallyClosed);
}

#[test]
fn a_rejection_stops_the_clocks_that_stop_on_rejected() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    assert!(!h.clock_ended(&id, "investigate"));
    h.department_reply(&id, BILLING, "状态: 不予受理\n原因: 不属于本单位受理范围");
    assert_eq!(h.case(&id).state, Rejected);
    assert!(h.clock_ended(&id, "investigate"), "stops on rejected");
}

#[test]
fn a_merge_ends_the_case_tells_its_complainant_and_notes_it_on_the_other() {
    let h = harness();
    let first = h.complaint(CUSTOMER);
    let second = h.complaint("li@example.com");
    h.clock.advance(Duration::hours(1));
    let first_before = h.case(&first);
    let first_events = h.events(&first).len();
    h.department_reply(
        &second,
        BILLING,
        &format!("合并: {}，同一张账单\n备注: 重复投诉", first.0),
    );

    let case = h.case(&second);
    assert_eq!(case.state, Merged);
    assert_eq!(
        case.fields["merged_into"],
        FieldValue::Text(first.0.clone())
    );
    assert!(h.clock_ended(&second, "investigate"), "stops on merged");
    assert_eq!(
        state_changes(&h.events(&second)).last(),
        Some(&(Assigned, Merged))
    );

    let notice = h.last_mail(&second, "merged");
    assert_eq!(notice.recipients, ["li@example.com"]);
    let text = h.read(&notice).text;
    assert!(
        text.contains(&format!("已合并到 {} 一并处理", first.0)) && text.contains(&second.0),
        "{text}"
    );
    let confirmation = h.read(&h.last_mail(&second, "confirmation")).text;
    assert!(
        confirmation.contains(&format!("merged into case {}", first.0)),
        "{confirmation}"
    );

    assert_eq!(
        h.case(&first),
        first_before,
        "the other case keeps its state"
    );
    let added = h.events(&first)[first_events..].to_vec();
    assert_eq!(
        notes(&added),
        [format!(
            "case {} was merged into this case by department billing_dept: 同一张账单",
            second.0
        )],
        "{added:?}"
    );
    assert_eq!(added.len(), 1);
}

#[test]
fn a_merge_in_english_takes_the_number_in_any_case() {
    let h = harness();
    let first = h.english_complaint(CUSTOMER);
    let second = h.english_complaint("li@example.com");
    h.department_reply(
        &second,
        SERVICE,
        &format!("Merge: {}\n\nSame leak.", first.0.to_lowercase()),
    );
    assert_eq!(h.case(&second).state, Merged);
    let text = h.read(&h.last_mail(&second, "merged")).text;
    assert!(
        text.contains(&format!("handled together as {}", first.0)),
        "{text}"
    );
}

#[test]
fn a_merge_is_refused_into_itself_a_missing_or_finished_case_and_to_others() {
    let h = harness();
    let first = h.complaint(CUSTOMER);
    let second = h.complaint("li@example.com");
    let withdrawn = h.complaint("zhao@example.com");
    h.send(Mail {
        from: "zhao@example.com",
        to: "complaints@corp.example",
        subject: &format!("Re: [{}] your complaint", withdrawn.0),
        in_reply_to: Some(&h.last_mail(&withdrawn, "ack").message_id),
        body: "撤诉",
    });
    assert_eq!(h.case(&withdrawn).state, Withdrawn);

    let cases = [
        (
            format!("合并: {}", second.0),
            "a case cannot be merged into itself".to_owned(),
        ),
        (
            "merge: TS-2026-999999".to_owned(),
            "there is no case TS-2026-999999".to_owned(),
        ),
        (
            format!("合并: {}", withdrawn.0),
            format!(
                "case {} is withdrawn; a case can be merged only into one that is still open",
                withdrawn.0
            ),
        ),
        (
            format!("合并: {}\n状态: 已受理", first.0),
            "`merge:` ends this case".to_owned(),
        ),
    ];
    for (body, expected) in cases {
        let text = refused(&h, &[&second, &first, &withdrawn], BILLING, || {
            h.department_reply(&second, BILLING, &body)
        });
        assert!(text.contains(&expected), "{body}: {text}");
        assert_eq!(h.count(&second, "merged"), 0, "{body}");
    }

    // A department with only a copy may not merge; the office may.
    let body = format!("合并: {}", first.0);
    let text = refused(&h, &[&second, &first], SERVICE, || {
        h.reply_with_token(&second, "service", SERVICE, &body)
    });
    assert!(
        text.contains("only the department the case is assigned to (billing_dept) or the complaint office (office)"),
        "{text}"
    );
    h.reply_with_token(&second, "office", OFFICE, &body);
    assert_eq!(h.case(&second).state, Merged);
    assert!(notes(&h.events(&first)).iter().any(|n| n
        == &format!(
            "case {} was merged into this case by department office",
            second.0
        )));
}

/// The complaint text of [`Harness::complaint`], which mail to the
/// unverified complainant must not carry.
const COMPLAINT_CONTENT: &str = "多收了 120 元";

#[test]
fn a_rejection_tells_the_complainant_the_reason_in_chinese() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let reason = "所反映问题属物业管理范围，不属于本单位受理范围，请向物业公司反映";
    h.clock.advance(Duration::hours(1));
    h.department_reply(&id, BILLING, &format!("状态: 不予受理\n原因: {reason}"));
    let case = h.case(&id);
    assert_eq!(case.state, Rejected);
    assert_eq!(case.fields["cause"], FieldValue::Text(reason.into()));

    let notice = h.last_mail(&id, "rejection");
    assert_eq!(notice.recipients, [CUSTOMER]);
    assert_eq!(notice.template, "rejection_notice");
    let mail = h.read(&notice);
    assert!(
        mail.subject.contains(&id.0) && mail.subject.contains("不予受理"),
        "{}",
        mail.subject
    );
    assert!(
        mail.text.contains(reason) && mail.text.contains(&id.0),
        "{}",
        mail.text
    );
    assert!(
        !mail.text.contains(COMPLAINT_CONTENT) && !mail.text.contains("bill wrong"),
        "nothing of the case but its number and the reason: {}",
        mail.text
    );
    let confirmation = h.read(&h.last_mail(&id, "confirmation")).text;
    assert!(
        confirmation.contains(&format!(
            "the rejection notice to {CUSTOMER} was sent with the reason"
        )),
        "{confirmation}"
    );
}

#[test]
fn an_abnormal_close_tells_the_complainant_the_reason_in_english() {
    let h = harness();
    let id = h.english_complaint(CUSTOMER);
    h.department_reply(&id, SERVICE, "status: in-progress");
    let reason = "the compensation asked for is far beyond the law and our policy";
    h.department_reply(
        &id,
        SERVICE,
        &format!("status: abnormal-close\ncause: {reason}"),
    );
    assert_eq!(h.case(&id).state, AbnormallyClosed);
    let notice = h.last_mail(&id, "abnormal-close");
    assert_eq!(notice.recipients, [CUSTOMER]);
    assert_eq!(notice.template, "abnormal_close_notice");
    let mail = h.read(&notice);
    assert_eq!(
        mail.subject,
        format!("[{0}] Your complaint {0} is closed", id.0),
        "in the case's language"
    );
    assert!(mail.text.contains(reason), "{}", mail.text);
    assert!(
        !mail.text.contains("gas smell") && !mail.text.contains("Nobody came"),
        "nothing of the case but its number and the reason: {}",
        mail.text
    );
    assert_eq!(h.count(&id, "rejection"), 0);
}

#[test]
fn an_english_rejection_and_a_chinese_abnormal_close_go_in_the_cases_language() {
    let h = harness();
    let english = h.english_complaint(CUSTOMER);
    h.department_reply(
        &english,
        SERVICE,
        "status: reject\ncause: the address is outside our supply area",
    );
    let mail = h.read(&h.last_mail(&english, "rejection"));
    assert_eq!(
        mail.subject,
        format!("[{0}] Your complaint {0} is not accepted", english.0)
    );
    assert!(
        mail.text.contains("the address is outside our supply area"),
        "{}",
        mail.text
    );

    let chinese = h.complaint("li@example.com");
    h.department_reply(
        &chinese,
        BILLING,
        "原因: 要求赔偿十万元，超出公司政策\n状态: 非正常结案",
    );
    let notice = h.last_mail(&chinese, "abnormal-close");
    assert_eq!(notice.recipients, ["li@example.com"]);
    let mail = h.read(&notice);
    assert_eq!(
        mail.subject,
        format!("[{0}] 您的投诉 {0} 已结案", chinese.0)
    );
    assert!(
        mail.text.contains("要求赔偿十万元，超出公司政策"),
        "{}",
        mail.text
    );
}

#[test]
fn a_rejection_or_abnormal_close_without_its_reason_is_refused_whole() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    for body in ["状态: 不予受理", "备注: 不归我们管\n状态: 驳回"] {
        let text = refused(&h, &[&id], BILLING, || {
            h.department_reply(&id, BILLING, body)
        });
        assert!(
            text.contains("a rejection needs its reason, which the complainant is told"),
            "{body}: {text}"
        );
    }
    let english = h.english_complaint("li@example.com");
    let text = refused(&h, &[&english], SERVICE, || {
        h.department_reply(&english, SERVICE, "status: reject")
    });
    assert!(
        text.contains("line 1: `status: reject`: a rejection needs its reason"),
        "{text}"
    );
    let text = refused(&h, &[&id], BILLING, || {
        h.department_reply(&id, BILLING, "状态: 异常关闭")
    });
    assert!(
        text.contains("an abnormal close needs its reason"),
        "{text}"
    );
    assert_eq!(
        h.count(&id, "rejection") + h.count(&english, "rejection"),
        0
    );
    assert_eq!(h.count(&id, "abnormal-close"), 0);
}

#[test]
fn the_complainants_of_merged_cases_get_the_result_of_the_case_they_were_merged_into() {
    let h = harness();
    let target = h.complaint(CUSTOMER);
    let english = h.english_complaint("li@example.com");
    let chinese = h.complaint("zhao@example.com");
    let bystander = h.complaint("qian@example.com");
    let again = h.complaint(CUSTOMER);
    h.department_reply(
        &again,
        BILLING,
        &format!("合并: {}，同一人重复投诉", target.0),
    );
    h.department_reply(
        &english,
        SERVICE,
        &format!("merge: {}\n\nSame bill.", target.0),
    );
    h.department_reply(
        &chinese,
        BILLING,
        &format!("合并: {}，同一张账单", target.0),
    );
    assert_eq!(h.case(&english).state, Merged);
    assert_eq!(h.case(&chinese).state, Merged);
    let english_before = h.case(&english);
    let chinese_before = h.case(&chinese);

    h.clock.advance(Duration::hours(2));
    let result = "经核实系抄表错误，多收的 120 元已退回。";
    h.department_reply(
        &target,
        BILLING,
        &format!("状态: 已解决\n处理结果: {result}"),
    );
    assert_eq!(h.case(&target).state, Answered);
    assert_eq!(h.last_mail(&target, "result").recipients, [CUSTOMER]);

    let english_result = h.last_mail(&english, "result");
    assert_eq!(english_result.recipients, ["li@example.com"]);
    assert_eq!(english_result.template, "merged_result");
    let mail = h.read(&english_result);
    assert_eq!(
        mail.subject,
        format!(
            "[{0}] The outcome of your complaint {0} (handled as {1})",
            english.0, target.0
        )
    );
    assert!(
        mail.text.contains(result)
            && mail
                .text
                .contains(&format!("merged into complaint {}", target.0)),
        "{}",
        mail.text
    );
    assert!(
        !mail.text.contains("gas smell") && !mail.text.contains(COMPLAINT_CONTENT),
        "{}",
        mail.text
    );

    let chinese_result = h.last_mail(&chinese, "result");
    assert_eq!(chinese_result.recipients, ["zhao@example.com"]);
    let mail = h.read(&chinese_result);
    assert!(
        mail.text.contains(&format!(
            "您的投诉 {} 已合并到投诉 {} 一并处理",
            chinese.0, target.0
        )) && mail.text.contains(result),
        "{}",
        mail.text
    );

    assert_eq!(
        h.count(&bystander, "result"),
        0,
        "a case not merged hears nothing"
    );
    assert_eq!(
        h.count(&again, "result"),
        0,
        "the target's own complainant gets the result once"
    );
    assert!(notes(&h.events(&again)).iter().any(|n| n
        == &format!(
            "the result of case {}, which this case was merged into, was not sent again: the complainant already has it",
            target.0
        )));
    assert_eq!(h.count(&target, "result"), 1);
    assert_eq!(
        h.case(&english),
        english_before,
        "the merged cases stay merged"
    );
    assert_eq!(h.case(&chinese), chinese_before);
    assert!(notes(&h.events(&english)).iter().any(|n| n
        == &format!(
            "the result of case {}, which this case was merged into, was sent to the complainant",
            target.0
        )));
    let confirmation = h.read(&h.last_mail(&target, "confirmation")).text;
    assert!(
        confirmation.contains(&format!("li@example.com (case {})", english.0))
            && confirmation.contains(&format!("zhao@example.com (case {})", chinese.0)),
        "{confirmation}"
    );
}

#[test]
fn a_complainants_reply_on_a_merged_case_goes_to_the_department_of_the_case_it_joined() {
    let h = harness();
    let target = h.complaint(CUSTOMER);
    let merged = h.english_complaint("li@example.com");
    h.reply_with_token(&merged, "office", OFFICE, &format!("merge: {}", target.0));
    assert_eq!(h.case(&merged).state, Merged);
    let target_before = h.case(&target);

    let outcome = h.send(Mail {
        from: "li@example.com",
        to: "complaints@corp.example",
        subject: &format!("Re: [{}] merged", merged.0),
        in_reply_to: Some(&h.last_mail(&merged, "merged").message_id),
        body: "I have photos of the meter, attached later.",
    });
    assert_eq!(
        outcome,
        Outcome::CustomerReply {
            case: merged.clone(),
            forwarded_to: Some("billing_dept".into())
        }
    );
    assert_eq!(
        h.case(&merged).state,
        Merged,
        "the merged case stays merged"
    );
    let forward = h.last_mail(&merged, "forward");
    assert_eq!(forward.recipients, [BILLING]);
    assert!(h.read(&forward).text.contains("I have photos of the meter"));
    assert!(h.events(&merged).iter().any(|e| matches!(
        &e.kind,
        EventKind::MailReceived { from, .. } if from == "li@example.com"
    )));
    assert_eq!(h.case(&target), target_before);
    assert!(notes(&h.events(&target)).iter().any(|n| n
        == &format!(
            "the complainant of case {}, merged into this case, wrote again; the mail was forwarded to department billing_dept",
            merged.0
        )));
}

#[test]
fn a_result_reaches_the_complainants_of_a_chain_of_merges_and_of_a_merge_in_the_same_batch() {
    let h = harness();
    let target = h.complaint(CUSTOMER);
    let middle = h.complaint("zhao@example.com");
    let first = h.english_complaint("li@example.com");
    let late = h.complaint("qian@example.com");
    h.department_reply(&first, SERVICE, &format!("merge: {}", middle.0));
    h.department_reply(&middle, BILLING, &format!("合并: {}", target.0));
    assert_eq!(h.case(&middle).state, Merged);

    // The merge of `late` and the target's result arrive in one poll.
    let (late_token, late_subject, late_parent) = h.forward_thread(&late);
    let (target_token, target_subject, target_parent) = h.forward_thread(&target);
    let merge = format!("合并: {}", target.0);
    let result = "多收的 120 元已退回。";
    let answer = format!("状态: 已解决\n处理结果: {result}");
    let outcomes = h.send_together(vec![
        Mail {
            from: BILLING,
            to: &late_token,
            subject: &late_subject,
            in_reply_to: Some(&late_parent),
            body: &merge,
        },
        Mail {
            from: BILLING,
            to: &target_token,
            subject: &target_subject,
            in_reply_to: Some(&target_parent),
            body: &answer,
        },
    ]);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::DepartmentReply { .. })),
        "{outcomes:?}"
    );
    assert_eq!(h.case(&late).state, Merged);
    assert_eq!(h.case(&target).state, Answered);

    for (case, complainant) in [
        (&middle, "zhao@example.com"),
        (&first, "li@example.com"),
        (&late, "qian@example.com"),
    ] {
        let mail = h.last_mail(case, "result");
        assert_eq!(mail.recipients, [complainant], "{case}");
        let text = h.read(&mail).text;
        assert!(
            text.contains(result) && text.contains(&case.0) && text.contains(&target.0),
            "{case}: {text}"
        );
        assert_eq!(h.count(case, "result"), 1, "{case}");
    }
    assert_eq!(h.count(&target, "result"), 1);
}

#[test]
fn a_department_sets_a_declared_field_by_reply_and_its_clock_starts_from_it() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    h.department_reply(
        &id,
        BILLING,
        "状态: 处理中\n承诺办结日期: 2026-11-27\n\n已联系客户。",
    );
    let case = h.case(&id);
    assert_eq!(case.state, InProgress);
    assert_eq!(
        case.field("promised"),
        Some(&FieldValue::Date(
            NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
        ))
    );
    let set: Vec<String> = h
        .events(&id)
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FieldSet { field, because, .. } if field == "promised" => {
                Some(because.rule.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(set, ["department reply of billing_dept"]);
    // The end of 11-27 in Shanghai, plus one natural day.
    assert_eq!(
        case.clocks["second_follow_up"].due,
        at("2026-11-29T00:00:00+08:00")
    );
    let confirmation = h.read(&h.last_mail(&id, "confirmation")).text;
    assert!(
        confirmation.contains("promised: 2026-11-27"),
        "{confirmation}"
    );

    // A later reply in English by the field's name sets it again.
    h.department_reply(&id, BILLING, "promised: 2026-11-30");
    assert_eq!(
        h.case(&id).field("promised"),
        Some(&FieldValue::Date(
            NaiveDate::from_ymd_opt(2026, 11, 30).unwrap()
        ))
    );
}

#[test]
fn a_field_value_that_does_not_read_refuses_the_whole_reply() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let text = refused(&h, &[&id], BILLING, || {
        h.department_reply(&id, BILLING, "状态: 处理中\n承诺办结日期: 下周五")
    });
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("`下周五` is not a date"), "{text}");
    assert!(!h.case(&id).clocks.contains_key("second_follow_up"));
}

#[test]
fn a_field_not_declared_set_by_department_is_refused() {
    let h = harness();
    let id = h.complaint(CUSTOMER);
    let text = refused(&h, &[&id], BILLING, || {
        h.department_reply(&id, BILLING, "状态: 处理中\n损失金额: 100")
    });
    assert!(
        text.contains("the field `loss` is not set by departments"),
        "{text}"
    );
    assert_eq!(h.case(&id).field("loss"), None);
}
