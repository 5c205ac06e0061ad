//! Schedules (`schedule weekly_majors "0 9 * * MON" … digest …`) and the
//! scheduler's wake-up time.
//!
//! The store keeps, per schedule, the instant up to which its ticks have been
//! handled. A run handles every tick up to `now` at once: after downtime a
//! schedule that missed several ticks sends ONE digest, not one per tick.
//! A schedule never run before counts its ticks from when the policy that
//! declared it was loaded (recorded at load, so a restart does not move it).

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::compose::{Content, MailPlan};
use super::policy::ActivePolicy;
use super::{Engine, EngineError};
use crate::case::Address;
use crate::mail::template::{CaseView, DigestView};
use crate::rules::ast::{Recipient, ScheduleDecl};
use crate::rules::eval::holds;
use crate::store::{CaseFilter, ChangeSet};

/// Purpose of digest mail.
pub const DIGEST: &str = "digest";

impl Engine {
    /// The earliest instant something is due: a timer, or a schedule's next
    /// tick (possibly in the past, when one was missed). `None` when nothing
    /// is pending. On a storage error the error is logged and the answer is
    /// a minute from now, so the scheduler tries again soon.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let retry = || Some(self.clock.now() + Duration::minutes(1));
        let timer = match self.store.next_timer_due() {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "cannot read the next timer");
                return retry();
            }
        };
        let active = self.policy();
        let mut earliest = timer;
        for schedule in &active.policy.schedules {
            match self.next_tick(&active, schedule) {
                Ok(Some(tick)) => earliest = Some(earliest.map_or(tick, |e| e.min(tick))),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, schedule = %schedule.name.node, "cannot read a schedule's progress");
                    return retry();
                }
            }
        }
        earliest
    }

    /// Runs every schedule whose next tick since its last run is at or
    /// before `now`: one digest per schedule, however many ticks were
    /// missed. Returns how many schedules ran.
    pub fn run_schedules(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let mut ran = 0;
        for schedule in &active.policy.schedules {
            let Some(tick) = self.next_tick(&active, schedule)? else {
                continue;
            };
            if tick > now {
                continue;
            }
            self.run_schedule(&active, schedule, now)?;
            ran += 1;
        }
        if ran > 0 {
            self.store.flush()?;
        }
        Ok(ran)
    }

    /// The first tick of `schedule` after the instant its ticks are handled to.
    fn next_tick(
        &self,
        active: &ActivePolicy,
        schedule: &ScheduleDecl,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let name = &schedule.name.node;
        let Some(cron) = active.policy.crons.get(name) else {
            return Ok(None);
        };
        let since = self
            .store
            .schedule_handled_until(name)?
            .unwrap_or(active.loaded_at);
        let zone = self.schedule_zone(active, schedule);
        Ok(cron
            .after(&since.with_timezone(&zone))
            .next()
            .map(|tick| tick.with_timezone(&Utc)))
    }

    fn schedule_zone(&self, active: &ActivePolicy, schedule: &ScheduleDecl) -> Tz {
        schedule
            .calendar
            .as_ref()
            .and_then(|name| active.policy.calendar(&name.node))
            .map_or_else(
                || active.display_zone(self.settings.time_zone),
                |calendar| calendar.zone(),
            )
    }

    fn run_schedule(
        &self,
        active: &std::sync::Arc<ActivePolicy>,
        schedule: &ScheduleDecl,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let name = &schedule.name.node;
        let policy = &active.policy;
        let letterhead = self.letterhead(active, now);
        let mut cases = Vec::new();
        for case in self.store.list_cases(&CaseFilter::default())? {
            let included = match &schedule.filter {
                None => true,
                Some(filter) => {
                    let history = self.store.history_excluding(&case.id);
                    holds(policy, &case, filter, &history, now).0
                }
            };
            if included {
                cases.push(CaseView::new(&case, &active.names, letterhead.zone, now));
            }
        }
        let recipients = schedule_recipients(active, schedule);
        let mut changes = ChangeSet::new();
        if recipients.is_empty() {
            tracing::warn!(schedule = %name, "schedule has nobody to send its digest to");
        } else {
            let plan = MailPlan {
                active: active.clone(),
                letterhead,
                purpose: DIGEST.to_owned(),
                template: schedule.template.node.clone(),
                language: active.default_language(),
                case: None,
                to: recipients,
                reply_department: None,
                reply_to: None,
                in_reply_to: None,
                references: Vec::new(),
                content: Content::Digest {
                    digest: DigestView {
                        schedule: name.clone(),
                        cases,
                    },
                },
                description: format!("the digest of schedule {name}"),
            };
            // A failing template is logged by the commit, which renders the mail.
            match plan.preflight(&self.settings.case_prefix) {
                Ok(()) => {
                    changes
                        .queue_mail_without_case(plan.into_draft(&self.settings.sender_address))?;
                }
                Err(error) => {
                    tracing::error!(schedule = %name, %error, "digest cannot be built; not sent");
                }
            }
        }
        changes.record_schedule_run(name, now);
        self.store.apply(&changes)?;
        tracing::info!(schedule = %name, "schedule ran");
        Ok(())
    }

    /// Records the load time as the start of every schedule that has no
    /// recorded progress yet, so its ticks count from there across restarts.
    pub(super) fn record_schedule_baselines(&self) -> Result<(), EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let mut changes = ChangeSet::new();
        let mut any = false;
        for schedule in &active.policy.schedules {
            let name = &schedule.name.node;
            if self.store.schedule_handled_until(name)?.is_none() {
                changes.record_schedule_run(name, active.loaded_at);
                any = true;
            }
        }
        if any {
            self.store.apply(&changes)?;
        }
        Ok(())
    }
}

/// The addresses a schedule sends to. Recipients that name a case
/// (`assignee`, `customer`) mean nothing for a digest and are skipped.
fn schedule_recipients(active: &ActivePolicy, schedule: &ScheduleDecl) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::new();
    let mut add = |address: &str| {
        let address = Address::new(
            address.trim().trim_start_matches('<').trim_end_matches('>'),
            None,
        );
        if !out.iter().any(|a| a.email == address.email) {
            out.push(address);
        }
    };
    for recipient in &schedule.recipients {
        match &recipient.node {
            Recipient::Department(name, role) => {
                let Some(department) = active.policy.department(&name.node) else {
                    continue;
                };
                match role {
                    None => department.addresses.iter().for_each(|a| add(&a.node)),
                    Some(role) if role.node == "manager" => {
                        if let Some(manager) = &department.manager {
                            add(&manager.node);
                        }
                    }
                    Some(role) => {
                        if let Some((_, address)) = department
                            .contacts
                            .iter()
                            .find(|(n, _)| n.node == role.node)
                        {
                            add(&address.node);
                        }
                    }
                }
            }
            Recipient::Address(address) => add(address),
            Recipient::Assignee | Recipient::AssigneeRole(_) | Recipient::Customer => {
                tracing::warn!(schedule = %schedule.name.node, "a digest recipient that names a case is skipped");
            }
        }
    }
    out
}
