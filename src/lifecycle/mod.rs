//! The complaint lifecycle: which state changes are allowed, and what replies by mail mean.
//!
//! Pure code. The engine asks `check_transition` before it changes a case's
//! state, and uses `commands` to read a department's reply and `customer` to
//! read a customer's, so that every rule about the lifecycle lives here.

pub mod commands;
pub mod customer;

use crate::case::CaseState;

use CaseState::*;

/// The states a case may move to from `from`.
pub fn next_states(from: CaseState) -> &'static [CaseState] {
    match from {
        Received => &[
            Acknowledged,
            Assigned,
            Rejected,
            Withdrawn,
            Merged,
            AbnormallyClosed,
        ],
        Acknowledged => &[Assigned, Rejected, Withdrawn, Merged, AbnormallyClosed],
        Assigned => &[
            Assigned,
            Accepted,
            InProgress,
            WaitingOnCustomer,
            Resolved,
            Rejected,
            Withdrawn,
            Merged,
            AbnormallyClosed,
            Appealed,
        ],
        Accepted => &[
            Assigned,
            InProgress,
            WaitingOnCustomer,
            Resolved,
            Rejected,
            Withdrawn,
            Merged,
            AbnormallyClosed,
            Appealed,
        ],
        InProgress => &[
            Assigned,
            WaitingOnCustomer,
            Resolved,
            Withdrawn,
            Merged,
            AbnormallyClosed,
            Appealed,
        ],
        WaitingOnCustomer => &[InProgress, Resolved, Withdrawn, Merged, AbnormallyClosed],
        Resolved => &[Answered, InProgress, Appealed, Withdrawn],
        Answered => &[FollowUp, Closed, Reopened, Withdrawn, Appealed],
        FollowUp => &[Closed, Reopened, Withdrawn],
        Closed => &[Reopened],
        Reopened => &[
            Assigned,
            Accepted,
            InProgress,
            WaitingOnCustomer,
            Resolved,
            Withdrawn,
            AbnormallyClosed,
        ],
        Appealed => &[Assigned, InProgress, Resolved, Answered],
        Withdrawn | Rejected | AbnormallyClosed | Merged => &[],
    }
}

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionError {
    pub from: CaseState,
    pub to: CaseState,
}

impl std::fmt::Display for TransitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allowed = next_states(self.from);
        write!(
            f,
            "a case that is {} cannot become {}",
            words(self.from),
            words(self.to)
        )?;
        if allowed.is_empty() {
            write!(f, "; it is finished and can change no more")
        } else {
            let list: Vec<&str> = allowed.iter().map(|s| words(*s)).collect();
            write!(f, "; from here it can become: {}", list.join(", "))
        }
    }
}

impl std::error::Error for TransitionError {}

/// Checks a state change against the lifecycle.
pub fn check_transition(from: CaseState, to: CaseState) -> Result<(), TransitionError> {
    if next_states(from).contains(&to) {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

/// A state in plain words, for messages to people.
pub fn words(state: CaseState) -> &'static str {
    match state {
        Received => "received",
        Acknowledged => "acknowledged",
        Assigned => "assigned to a department",
        Accepted => "accepted by the department",
        InProgress => "in progress",
        WaitingOnCustomer => "waiting on the customer",
        Resolved => "resolved",
        Answered => "answered",
        FollowUp => "in follow-up",
        Closed => "closed",
        Reopened => "reopened",
        Withdrawn => "withdrawn",
        Rejected => "rejected",
        AbnormallyClosed => "abnormally closed",
        Merged => "merged",
        Appealed => "under appeal",
    }
}

/// The note a merge leaves on the case merged into: `case MERGED was merged
/// into this case by department DEPARTMENT[: REASON]`. The engine reads it
/// back with [`merged_case_in_note`] to find whom a result also goes to.
pub fn merge_note(merged: &str, department: &str, reason: &str) -> String {
    let mut note = format!("case {merged} was merged into this case by department {department}");
    if !reason.is_empty() {
        note.push_str(&format!(": {reason}"));
    }
    note
}

/// The merged case's number in a note written by [`merge_note`]. A
/// department's own note starts `note of department`, so it never matches.
pub fn merged_case_in_note(note: &str) -> Option<&str> {
    let rest = note.strip_prefix("case ")?;
    let (number, tail) = rest.split_once(' ')?;
    tail.starts_with("was merged into this case by department ")
        .then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_note_names_the_merged_case() {
        let note = merge_note("TS-2026-000002", "billing_dept", "同一张账单");
        assert_eq!(
            note,
            "case TS-2026-000002 was merged into this case by department billing_dept: 同一张账单"
        );
        assert_eq!(merged_case_in_note(&note), Some("TS-2026-000002"));
        assert_eq!(
            merged_case_in_note(&merge_note("TS-2026-000003", "office", "")),
            Some("TS-2026-000003")
        );
        assert_eq!(
            merged_case_in_note("note of department billing_dept: case TS-2026-000009 was merged into this case by department x"),
            None
        );
        assert_eq!(merged_case_in_note("case TS-2026-000004 was closed"), None);
    }

    #[test]
    fn the_main_path_is_allowed_step_by_step() {
        let path = [
            Received,
            Acknowledged,
            Assigned,
            Accepted,
            InProgress,
            Resolved,
            Answered,
            FollowUp,
            Closed,
        ];
        for pair in path.windows(2) {
            assert_eq!(
                check_transition(pair[0], pair[1]),
                Ok(()),
                "{:?} -> {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn a_dissatisfied_customer_reopens_and_the_case_runs_again() {
        for (from, to) in [
            (Answered, Reopened),
            (FollowUp, Reopened),
            (Closed, Reopened),
            (Reopened, Assigned),
        ] {
            assert_eq!(check_transition(from, to), Ok(()));
        }
    }

    #[test]
    fn finished_cases_change_no_more() {
        for done in [Withdrawn, Rejected, AbnormallyClosed, Merged] {
            for to in CaseState::ALL {
                let err = check_transition(done, to).unwrap_err();
                assert!(
                    err.to_string()
                        .ends_with("it is finished and can change no more"),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn an_illegal_change_says_what_is_possible() {
        let err = check_transition(Closed, InProgress).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a case that is closed cannot become in progress; from here it can become: reopened"
        );
    }

    #[test]
    fn no_open_state_is_a_dead_end() {
        for state in CaseState::ALL.into_iter().filter(|s| s.is_open()) {
            let next = next_states(state);
            assert!(!next.is_empty(), "{state:?} is a dead end");
        }
    }

    #[test]
    fn a_case_being_worked_can_be_closed_abnormally_or_merged_but_an_answered_one_cannot() {
        for from in [Assigned, Accepted, InProgress, WaitingOnCustomer] {
            assert_eq!(check_transition(from, AbnormallyClosed), Ok(()), "{from:?}");
            assert_eq!(check_transition(from, Merged), Ok(()), "{from:?}");
        }
        for from in [Resolved, Answered, FollowUp, Closed] {
            assert!(
                check_transition(from, AbnormallyClosed).is_err(),
                "{from:?}"
            );
            assert!(check_transition(from, Merged).is_err(), "{from:?}");
        }
    }

    #[test]
    fn a_follow_up_comes_only_after_the_answer() {
        for from in CaseState::ALL {
            assert_eq!(
                check_transition(from, FollowUp).is_ok(),
                from == Answered,
                "{from:?}"
            );
        }
    }
}
