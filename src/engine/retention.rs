//! The daily retention purge ("records kept for two years"): when it is due
//! and running it on the engine's side of the store.
//!
//! The store remembers when the last purge finished (`Store::last_purge`),
//! so a restart does not purge again at once; a store never purged is due at
//! once, and a purge that fell due while the daemon was down runs once at
//! the first wake-up. The scheduler runs it beside the timers
//! (`Timekeeper` in `daemon::adapters`).

use chrono::{DateTime, Duration, Utc};

use super::{Engine, EngineError};
use crate::store::{PurgeReport, PURGE_CHUNK_CASES};

/// Hours between two purges.
pub const PURGE_INTERVAL_HOURS: i64 = 24;

impl Engine {
    /// When the next purge is due: a day after the last one, or (never
    /// purged) long past, so it is due at any `now`; `None` when records are
    /// kept for ever.
    pub fn next_purge(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        if self.settings.retention_days == 0 {
            return Ok(None);
        }
        Ok(Some(match self.store.last_purge()? {
            Some(last) => last + Duration::hours(PURGE_INTERVAL_HOURS),
            None => DateTime::UNIX_EPOCH,
        }))
    }

    /// Runs the purge when it is due at `now`: `Some(report)` when it ran.
    /// Each chunk of cases is removed under the engine's writer lock, which
    /// is let go between chunks so ingest waits for one chunk at most.
    pub fn purge_if_due(&self, now: DateTime<Utc>) -> Result<Option<PurgeReport>, EngineError> {
        if self.settings.retention_days == 0 {
            return Ok(None);
        }
        if self.next_purge()?.is_none_or(|due| due > now) {
            return Ok(None);
        }
        let retention = Duration::days(i64::from(self.settings.retention_days));
        let report = self
            .store
            .purge_expired_guarded(now, retention, PURGE_CHUNK_CASES, || self.write_lock())?;
        self.store.flush()?;
        if !report.is_empty() {
            tracing::info!(
                cases = report.cases,
                incoming_mails = report.incoming_mails,
                outgoing_mails = report.outgoing_mails,
                attachments = report.attachments,
                quarantined = report.quarantined,
                discarded = report.discarded,
                ack_counters = report.ack_counters,
                retention_days = self.settings.retention_days,
                "retention purge: removed records older than the retention"
            );
        }
        Ok(Some(report))
    }
}
