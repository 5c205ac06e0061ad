//! `rules explain`: what the policy makes of one mail, rule by rule, with the
//! values each rule saw, the route and why, and the deadline arithmetic.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::ast::Span;
use super::eval::{
    apply, evaluate, location_of, snippet_of, Action, CaseHistory, Evaluation, Input, Stage,
    TimerKind, Verdict,
};
use super::policy::Policy;
use crate::case::{Case, CaseId, MailFacts};

/// Evaluates `mail` as a new complaint (arriving at `mail.received_at`
/// through `mail.channel`) and renders the evaluation for people.
pub fn explain_new_complaint(
    policy: &Policy,
    mail: &MailFacts,
    history: &dyn CaseHistory,
) -> String {
    let now = mail.received_at;
    let mut case = Case::new(
        CaseId("EXPLAIN".to_owned()),
        now,
        &mail.channel,
        mail.sender.clone(),
        &mail.subject,
        &mail.language,
    );
    let evaluation = evaluate(policy, &case, &Input::NewComplaint(mail), history, now);
    apply(&mut case, &evaluation.actions, now);
    render(policy, mail, &case, &evaluation)
}

/// The zone times are shown in: the default calendar's, else UTC.
pub fn display_zone(policy: &Policy) -> Tz {
    policy
        .default_calendar
        .as_deref()
        .and_then(|name| policy.calendar(name))
        .map_or(Tz::UTC, |calendar| calendar.zone())
}

fn local(t: DateTime<Utc>, zone: Tz) -> String {
    t.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()
}

/// The first line of the policy text at `span`.
fn source_line(policy: &Policy, span: Span) -> String {
    snippet_of(policy, span)
        .and_then(|s| s.lines().next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn seen_text(verdict: &Verdict) -> String {
    verdict
        .seen
        .iter()
        .map(|(what, value)| format!("{what} = {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn render(policy: &Policy, mail: &MailFacts, case: &Case, evaluation: &Evaluation) -> String {
    let zone = display_zone(policy);
    let mut out = String::new();
    let sender = match &mail.sender.name {
        Some(name) => format!("{name} <{}>", mail.sender.email),
        None => mail.sender.email.clone(),
    };
    let _ = writeln!(out, "Complaint \"{}\" from {sender}", mail.subject);
    let _ = writeln!(
        out,
        "  channel {}, language {}, arrives {} ({})",
        if mail.channel.is_empty() {
            "(none)"
        } else {
            &mail.channel
        },
        if mail.language.is_empty() {
            "(unknown)"
        } else {
            &mail.language
        },
        local(mail.received_at, zone),
        zone.name()
    );

    let _ = writeln!(out, "\nClassification");
    let mut any = false;
    for verdict in evaluation.verdicts(Stage::Classify) {
        any = true;
        let description = policy
            .classify
            .iter()
            .flat_map(|b| b.rules.iter())
            .find(|r| r.name.node == verdict.rule)
            .and_then(|r| r.description.as_ref())
            .map(|d| format!(" \"{}\"", d.node))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<10} {}{description}  {}",
            if verdict.fired { "fired" } else { "not fired" },
            verdict.rule,
            location_of(policy, verdict.span).unwrap_or_default()
        );
        if !verdict.seen.is_empty() {
            let _ = writeln!(out, "               saw  {}", seen_text(verdict));
        }
        if !verdict.notes.is_empty() {
            let _ = writeln!(out, "               did  {}", verdict.notes.join("; "));
        }
    }
    if !any {
        let _ = writeln!(out, "  (no classification rules)");
    }

    let _ = writeln!(out, "\nRoute");
    for verdict in evaluation.verdicts(Stage::Route) {
        let _ = writeln!(
            out,
            "  {:<10} {}  {}",
            if verdict.fired { "chosen" } else { "no match" },
            verdict.rule,
            location_of(policy, verdict.span).unwrap_or_default()
        );
        if !verdict.seen.is_empty() {
            let _ = writeln!(out, "               saw  {}", seen_text(verdict));
        }
        if !verdict.notes.is_empty() {
            let _ = writeln!(out, "               did  {}", verdict.notes.join("; "));
        }
    }

    let _ = writeln!(out, "\nDeadlines");
    for decl in &policy.deadlines {
        let name = &decl.name.node;
        let display = decl
            .display
            .as_ref()
            .map(|d| format!(" \"{}\"", d.node))
            .unwrap_or_default();
        let started = evaluation.actions.iter().find_map(|a| match a {
            Action::StartClock {
                deadline,
                duration,
                due,
                counted,
                calendar,
                ..
            } if deadline == name => Some((duration, due, counted, calendar)),
            _ => None,
        });
        let Some((duration, due, counted, calendar)) = started else {
            let rule = format!("deadline {name}");
            let no_clock = decl.otherwise_none.is_some_and(|span| {
                evaluation
                    .trace
                    .iter()
                    .any(|v| v.stage == Stage::Deadline && v.rule == rule && v.span == span)
            });
            if no_clock {
                let _ = writeln!(
                    out,
                    "  {name}{display}: no clock for this case (no `when` line matched: otherwise -> none)"
                );
                continue;
            }
            let starts: Vec<&str> = decl
                .starts_on
                .iter()
                .map(|e| super::eval::clock_event_name(e.node))
                .collect();
            let _ = writeln!(
                out,
                "  {name}{display}: not started (starts on {})",
                starts.join(", ")
            );
            continue;
        };
        let _ = writeln!(
            out,
            "  {name}{display}: due {} ({}), {duration}{}",
            local(*due, zone),
            zone.name(),
            calendar
                .as_deref()
                .map(|c| format!(" on calendar {c}"))
                .unwrap_or_default()
        );
        let rule = format!("deadline {name}");
        for verdict in evaluation
            .trace
            .iter()
            .filter(|v| v.stage == Stage::Deadline && v.rule == rule)
        {
            let mut line = source_line(policy, verdict.span);
            if decl.otherwise.is_some_and(|d| d.span == verdict.span) {
                line = format!("otherwise -> {line}");
            }
            let _ = writeln!(
                out,
                "    {:<10} {}",
                if verdict.fired { "applies" } else { "no match" },
                if line.is_empty() {
                    verdict.rule.to_string()
                } else {
                    line
                }
            );
            if !verdict.seen.is_empty() {
                let _ = writeln!(out, "               saw  {}", seen_text(verdict));
            }
        }
        let _ = writeln!(out, "    {counted}");
        let block = policy.escalation(name);
        for action in &evaluation.actions {
            if let Action::ScheduleTimer {
                deadline,
                kind: TimerKind::Step(index),
                fire_at,
                ..
            } = action
            {
                if deadline != name {
                    continue;
                }
                let step_line = block
                    .and_then(|b| b.steps.get(*index))
                    .map(|s| source_line(policy, s.span))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    step #{}    {} ({})  {step_line}",
                    index + 1,
                    local(*fire_at, zone),
                    zone.name()
                );
            }
        }
    }

    let _ = writeln!(out, "\nResult");
    let fields: Vec<String> = case
        .fields
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    let _ = writeln!(
        out,
        "  {}",
        if fields.is_empty() {
            "(no fields)".to_owned()
        } else {
            fields.join(", ")
        }
    );
    if !case.tags.is_empty() {
        let _ = writeln!(
            out,
            "  tags {}",
            case.tags.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    match &case.assignment {
        Some(assignment) if assignment.cc.is_empty() => {
            let _ = writeln!(
                out,
                "  route {} (by {})",
                assignment.department, assignment.rule
            );
        }
        Some(assignment) => {
            let _ = writeln!(
                out,
                "  route {}, cc {} (by {})",
                assignment.department,
                assignment.cc.join(", "),
                assignment.rule
            );
        }
        None => {
            let _ = writeln!(out, "  not routed");
        }
    }
    out
}
