//! Finished cases escalate no more: on the default policy (`rules/`), a case
//! that is rejected, withdrawn, closed abnormally, merged or closed has its
//! deadline clocks stopped, and firing the timers long past every due time
//! queues no reminder, supervision or overdue mail for it, while an open case
//! of the same kind next to it is escalated as usual.

mod engine_harness;

use chrono::Duration;
use complaintd::case::{CaseId, CaseState, EventKind};
use complaintd::clock::Clock;
use complaintd::engine::{Outcome, RawMessage};
use complaintd::mail::inbound::parse;
use complaintd::rules::ast::ClockEvent;
use engine_harness::{Harness, Setup};

const SECRET: &[u8] = b"finished-cases-test-reply-secret-0123456789";
const CUSTOMER: &str = "wang@example.com";
const BILLING: &str = "billing@gas.example";

/// The mail purposes of the default policy's escalation ladders.
const ESCALATIONS: [&str; 3] = ["reminder", "supervision", "overdue"];

fn harness() -> Harness {
    Harness::open(&Setup {
        rules: "rules",
        domain: "gas.example",
        organisation: "Gas",
        secret: SECRET,
    })
}

impl Harness {
    /// Ingests one raw mail, as one poll of the `own` channel's mailbox.
    fn send(
        &self,
        from: &str,
        to: &str,
        subject: &str,
        in_reply_to: Option<&str>,
        body: &str,
    ) -> Outcome {
        let n = self.next_message.get();
        self.next_message.set(n + 1);
        let mut raw = format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
             Date: Tue, 24 Nov 2026 10:00:00 +0800\r\nMessage-ID: <f{n}@outside.example>\r\n"
        );
        if let Some(parent) = in_reply_to {
            raw.push_str(&format!(
                "In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"
            ));
        }
        raw.push_str(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n",
        );
        raw.push_str(&body.replace('\n', "\r\n"));
        raw.push_str("\r\n");
        let uid = self.next_uid.get();
        self.next_uid.set(uid + 1);
        let report = self
            .engine
            .ingest(
                "INBOX",
                "own",
                7,
                vec![(uid, RawMessage::full(raw.into_bytes()))],
            )
            .expect("ingest");
        assert_eq!(report.messages.len(), 1);
        report.messages[0].outcome.clone()
    }

    /// A billing complaint (own channel, not major) that the default policy
    /// forwards to `billing_dept`; its `investigate` clock runs.
    fn billing_complaint(&self, from: &str) -> CaseId {
        match self.send(
            from,
            "complaints@gas.example",
            "账单有误",
            None,
            "你好，这个月的气费账单多收了 120 元，请核实后退还。",
        ) {
            Outcome::NewCase {
                case, forwarded_to, ..
            } => {
                assert_eq!(forwarded_to, ["billing_dept"]);
                let clock = &self.store().case(&case).unwrap().unwrap().clocks["investigate"];
                assert_eq!(clock.stopped_at, None, "investigate runs once forwarded");
                case
            }
            other => panic!("{other:?}"),
        }
    }

    /// A reply of the billing department to the newest forward of the case,
    /// sent to the forward's reply-token address.
    fn department_reply(&self, id: &CaseId, body: &str) -> Outcome {
        let forward = self.last_mail(id, "forward");
        let bytes = self.store().outbox_message(&forward.id).unwrap().unwrap();
        let token_address = parse(&bytes).unwrap().mail.reply_to[0].email.clone();
        self.send(
            BILLING,
            &token_address,
            &format!("Re: [{}] forward", id.0),
            Some(&forward.message_id),
            body,
        )
    }

    /// The customer's reply to the acknowledgement of the case.
    fn customer_reply_to_ack(&self, id: &CaseId, body: &str) -> Outcome {
        let ack = self.last_mail(id, "ack");
        self.send(
            CUSTOMER,
            "complaints@gas.example",
            &format!("Re: [{}] 投诉已受理", id.0),
            Some(&ack.message_id),
            body,
        )
    }

    fn state(&self, id: &CaseId) -> CaseState {
        self.store().case(id).unwrap().unwrap().state
    }

    /// Moves the clock two weeks on, past every due time and escalation step
    /// of the default policy, and fires what is due.
    fn fire_long_after(&self) {
        self.clock.advance(Duration::days(14));
        self.engine.fire_due(self.clock.now()).expect("timers fire");
    }

    /// The escalation mails queued for the case, by purpose.
    fn escalations(&self, id: &CaseId) -> Vec<String> {
        self.outbox(id)
            .into_iter()
            .filter(|e| ESCALATIONS.contains(&e.purpose.as_str()))
            .map(|e| e.purpose)
            .collect()
    }

    fn breaches(&self, id: &CaseId) -> usize {
        self.store()
            .events(id)
            .unwrap()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ClockBreached { .. }))
            .count()
    }

    /// Asserts that the finished case got no escalation mail and no breach,
    /// and that its clocks are all stopped with no timer left.
    fn assert_quiet(&self, id: &CaseId, how: &str) {
        assert_eq!(self.escalations(id), Vec::<String>::new(), "{how}");
        assert_eq!(self.breaches(id), 0, "{how}: breach recorded");
        let case = self.store().case(id).unwrap().unwrap();
        for (name, clock) in &case.clocks {
            assert!(
                clock.stopped_at.is_some(),
                "{how}: clock {name} still runs on a finished case"
            );
        }
        assert_eq!(
            self.store().timers_of_case(id).unwrap().len(),
            0,
            "{how}: timers left"
        );
    }

    /// Asserts that the open control case climbed the whole `investigate`
    /// ladder (reminder at half time, supervision when due, overdue a working
    /// day later) and that its breach was recorded.
    fn assert_escalated(&self, id: &CaseId) {
        let mut escalations = self.escalations(id);
        escalations.sort();
        assert_eq!(escalations, ["overdue", "reminder", "supervision"]);
        assert_eq!(self.breaches(id), 1);
    }
}

#[test]
fn a_forwarded_complaint_rejected_by_its_department_is_not_escalated() {
    let h = harness();
    let rejected = h.billing_complaint(CUSTOMER);
    let open = h.billing_complaint("li@example.com");
    h.clock.advance(Duration::hours(1));
    h.department_reply(&rejected, "状态: 不予受理\n原因: 不属于本单位受理范围");
    assert_eq!(h.state(&rejected), CaseState::Rejected);
    h.fire_long_after();
    h.assert_quiet(&rejected, "rejected");
    h.assert_escalated(&open);
}

#[test]
fn a_withdrawn_complaint_is_not_escalated() {
    let h = harness();
    let withdrawn = h.billing_complaint(CUSTOMER);
    let open = h.billing_complaint("li@example.com");
    h.clock.advance(Duration::hours(1));
    h.customer_reply_to_ack(&withdrawn, "撤诉\n已经和营业厅当面解决了。");
    assert_eq!(h.state(&withdrawn), CaseState::Withdrawn);
    h.fire_long_after();
    h.assert_quiet(&withdrawn, "withdrawn");
    h.assert_escalated(&open);
}

#[test]
fn an_abnormally_closed_complaint_is_not_escalated() {
    let h = harness();
    let closed = h.billing_complaint(CUSTOMER);
    let open = h.billing_complaint("li@example.com");
    h.clock.advance(Duration::hours(1));
    h.department_reply(
        &closed,
        "状态: 非正常结案\n原因: 客户要求赔偿远超法律法规及公司政策，无法达成一致",
    );
    assert_eq!(h.state(&closed), CaseState::AbnormallyClosed);
    h.fire_long_after();
    h.assert_quiet(&closed, "abnormally closed");
    h.assert_escalated(&open);
}

#[test]
fn a_merged_complaint_is_not_escalated_and_the_case_it_joined_is() {
    let h = harness();
    let joined = h.billing_complaint("li@example.com");
    let merged = h.billing_complaint(CUSTOMER);
    h.clock.advance(Duration::hours(1));
    h.department_reply(&merged, &format!("合并: {}，同一张账单", joined.0));
    assert_eq!(h.state(&merged), CaseState::Merged);
    h.fire_long_after();
    h.assert_quiet(&merged, "merged");
    h.assert_escalated(&joined);
}

#[test]
fn a_case_moved_straight_to_closed_is_not_escalated() {
    let h = harness();
    let closed = h.billing_complaint(CUSTOMER);
    let open = h.billing_complaint("li@example.com");
    let later = h.clock.now() + Duration::hours(1);
    h.clock.set(later);
    h.engine
        .lifecycle_event(&closed, ClockEvent::Closed, later)
        .expect("lifecycle event");
    assert_eq!(h.state(&closed), CaseState::Closed);
    h.fire_long_after();
    h.assert_quiet(&closed, "closed");
    h.assert_escalated(&open);
}
