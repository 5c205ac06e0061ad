//! The store's outbox as an [`OutboxSource`]: the sender's view of queued mail.

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{OutboxError, OutboxSource, OutgoingMail};
use crate::metrics::Metrics;
use crate::store::{DeliveryFailure, Store};

/// Adapts [`Store`] to the sender, and keeps the outbox-depth gauge current.
pub struct StoreOutbox {
    store: Store,
    wakeup: Notify,
    metrics: Metrics,
}

impl StoreOutbox {
    pub fn new(store: Store, metrics: Metrics) -> Self {
        metrics.refresh_outbox_depth(|| store.queue_depth());
        StoreOutbox {
            store,
            wakeup: Notify::new(),
            metrics,
        }
    }

    /// Wakes the sender: call after committing anything that queued mail.
    pub fn notify_queued(&self) {
        self.metrics
            .refresh_outbox_depth(|| self.store.queue_depth());
        self.wakeup.notify_one();
    }

    fn update_depth(&self) {
        self.metrics
            .refresh_outbox_depth(|| self.store.queue_depth());
    }
}

impl OutboxSource for StoreOutbox {
    async fn mark_attempt(&self, id: &str, at: DateTime<Utc>) -> Result<(), OutboxError> {
        self.store
            .outbox_attempt(id, at)
            .map_err(OutboxError::new)?;
        // The record must outlive a crash during DATA to mark the mail as in doubt.
        self.store.flush_async().await.map_err(OutboxError::new)?;
        Ok(())
    }

    async fn next_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutgoingMail>, OutboxError> {
        let entries = self
            .store
            .due_outbox(now, limit)
            .map_err(OutboxError::new)?;
        let mut due = Vec::with_capacity(entries.len());
        for entry in entries {
            match self
                .store
                .outbox_message(&entry.id)
                .map_err(OutboxError::new)?
            {
                Some(bytes) => due.push(OutgoingMail {
                    attempts: entry.state.failed_attempts(),
                    id: entry.id,
                    envelope_from: entry.envelope_from,
                    recipients: entry.recipients,
                    bytes,
                }),
                None => {
                    // Without its bytes the entry could never be sent; ending it keeps
                    // it from blocking the head of the queue forever.
                    tracing::error!(id = %entry.id, "outbox: entry without its message bytes");
                    self.store
                        .outbox_failed(
                            &entry.id,
                            DeliveryFailure::Permanent {
                                error: "the stored message is missing".into(),
                            },
                            now,
                        )
                        .map_err(OutboxError::new)?;
                }
            }
        }
        self.update_depth();
        Ok(due)
    }

    async fn mark_sent(&self, id: &str, at: DateTime<Utc>, reply: &str) -> Result<(), OutboxError> {
        tracing::debug!(%id, %reply, "outbox: accepted by the server");
        self.store.outbox_sent(id, at).map_err(OutboxError::new)?;
        self.update_depth();
        Ok(())
    }

    async fn mark_temporary_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        let failure = DeliveryFailure::Temporary {
            error: error.to_owned(),
            next_attempt,
        };
        self.store
            .outbox_failed(id, failure, at)
            .map_err(OutboxError::new)?;
        Ok(())
    }

    async fn mark_permanent_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), OutboxError> {
        let failure = DeliveryFailure::Permanent {
            error: error.to_owned(),
        };
        self.store
            .outbox_failed(id, failure, at)
            .map_err(OutboxError::new)?;
        self.update_depth();
        Ok(())
    }

    async fn next_attempt_at(&self) -> Result<Option<DateTime<Utc>>, OutboxError> {
        self.store.next_outbox_due().map_err(OutboxError::new)
    }

    fn wakeup(&self) -> &Notify {
        &self.wakeup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Address, Case, CaseId};
    use crate::store::{ChangeSet, MailDraft, MailIdentity, OutboxState, RenderedMail};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    fn render(identity: &MailIdentity) -> Result<RenderedMail, String> {
        let case = identity
            .case
            .as_ref()
            .map_or("none".to_owned(), |c| c.0.clone());
        let subject = format!("[{case}] received");
        let message_id = format!(
            "<{case}.{}.{}@example.test>",
            identity.purpose, identity.sequence
        );
        Ok(RenderedMail {
            bytes: format!("Message-ID: {message_id}\r\nSubject: {subject}\r\n\r\nok\r\n")
                .into_bytes(),
            message_id,
            subject,
            template_failure: None,
        })
    }

    /// A store with one new case whose acknowledgement is queued at `t0`.
    fn store_with_one_mail(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(dir.path().join("db")).unwrap();
        let mut changes = ChangeSet::for_message("<m1@example.test>", t0()).unwrap();
        let case = changes
            .new_case(Case::new(
                CaseId("unnumbered".into()),
                t0(),
                "email",
                Address::new("customer@example.test", None),
                "a complaint",
                "en",
            ))
            .unwrap();
        changes.link_message(&case).unwrap();
        changes
            .queue_mail(
                &case,
                MailDraft::new(
                    "ack",
                    "acknowledgement",
                    "complaints@example.test",
                    vec!["customer@example.test".into()],
                    t0(),
                    render,
                ),
            )
            .unwrap();
        store.apply(&changes).unwrap();
        store
    }

    #[tokio::test]
    async fn walks_a_mail_through_retry_to_sent() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let outbox = StoreOutbox::new(store_with_one_mail(&dir), metrics.clone());
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l == "complaintd_outbox_depth 1"));

        let due = outbox.next_due(t0(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let mail = &due[0];
        assert_eq!(mail.attempts, 0);
        assert_eq!(mail.recipients, ["customer@example.test"]);
        assert!(String::from_utf8_lossy(&mail.bytes).contains("Message-ID: <"));

        let retry_at = t0() + chrono::Duration::minutes(5);
        outbox
            .mark_temporary_failure(&mail.id, t0(), "451 try later", retry_at)
            .await
            .unwrap();
        assert!(outbox.next_due(t0(), 10).await.unwrap().is_empty());
        assert_eq!(outbox.next_attempt_at().await.unwrap(), Some(retry_at));

        let again = outbox.next_due(retry_at, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        assert_eq!(
            again[0].bytes, mail.bytes,
            "the same bytes on every attempt"
        );

        outbox
            .mark_sent(&mail.id, retry_at, "250 ok")
            .await
            .unwrap();
        assert_eq!(outbox.next_attempt_at().await.unwrap(), None);
        let entry = outbox.store.outbox_entry(&mail.id).unwrap().unwrap();
        assert_eq!(entry.state, OutboxState::Sent { at: retry_at });
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l == "complaintd_outbox_depth 0"));
    }

    #[tokio::test]
    async fn a_permanent_failure_ends_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = StoreOutbox::new(store_with_one_mail(&dir), Metrics::new());
        let mail = outbox.next_due(t0(), 10).await.unwrap().remove(0);
        outbox
            .mark_permanent_failure(&mail.id, t0(), "550 no such user")
            .await
            .unwrap();
        assert!(outbox
            .next_due(t0() + chrono::Duration::days(30), 10)
            .await
            .unwrap()
            .is_empty());
        let entry = outbox.store.outbox_entry(&mail.id).unwrap().unwrap();
        assert!(
            matches!(entry.state, OutboxState::PermanentFailure { ref error, .. } if error == "550 no such user"),
            "{entry:?}"
        );
    }
}
