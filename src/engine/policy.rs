//! The policy the engine runs: rule files checked into a [`Policy`], the mail
//! templates beside them, and what the engine derives from both once per load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::mail::classify::department_addresses;
use crate::mail::template::{
    CaseView, DeadlineView, DigestView, DisplayNames, EscalationView, FieldView, MailView, Named,
    NoticeView, PersonView, TemplateContext, Templates,
};
use crate::rules::check::{check, Environment};
use crate::rules::load;
use crate::rules::{Diagnostic, Limits, Policy};

/// Template the engine acknowledges new complaints with.
pub const ACKNOWLEDGEMENT_TEMPLATE: &str = "acknowledgement";
/// Template the engine forwards complaints and customer replies with.
pub const FORWARD_TEMPLATE: &str = "forward";
/// Template of a department's result for the customer, with the satisfaction question.
pub const RESULT_TEMPLATE: &str = "result";
/// Template confirming to a department the commands of its reply that were applied.
pub const COMMAND_CONFIRMATION_TEMPLATE: &str = "command_confirmation";
/// Template listing to a department why none of its commands were applied.
pub const COMMAND_ERROR_TEMPLATE: &str = "command_error";
/// Template confirming to a customer that the complaint is withdrawn.
pub const WITHDRAWAL_CONFIRMATION_TEMPLATE: &str = "withdrawal_confirmation";
/// Template telling a customer that what the reply asked for is not possible now.
pub const TRANSITION_REFUSED_TEMPLATE: &str = "transition_refused";
/// Template telling a complainant that their case was merged into another one, and its number.
pub const MERGED_NOTICE_TEMPLATE: &str = "merged_notice";

/// A loaded, checked policy with its templates, ready to run.
#[derive(Debug)]
pub struct ActivePolicy {
    pub policy: Policy,
    pub templates: Templates,
    pub names: DisplayNames,
    /// Department name → the lower-cased addresses that may reply for it.
    pub department_addresses: BTreeMap<String, Vec<String>>,
    /// When this policy was loaded: schedules without a recorded run count
    /// their ticks from here.
    pub loaded_at: DateTime<Utc>,
    /// The directory it was loaded from (`None` for a policy built in memory).
    pub dir: Option<PathBuf>,
    /// Warnings of the checker and the template dry run, rendered.
    pub warnings: Vec<String>,
}

impl ActivePolicy {
    /// Loads and checks the rule files of `dir` and the templates in
    /// `dir/templates`. Every problem is returned, rendered for people.
    pub fn load(dir: &Path, now: DateTime<Utc>) -> Result<ActivePolicy, Vec<String>> {
        let loaded = load::load_dir(dir);
        if loaded.has_errors() {
            return Err(rendered_errors(&loaded.diagnostics, &loaded.sources));
        }
        let template_dir = dir.join("templates");
        let env = Environment {
            template_files: file_names(&template_dir),
        };
        let checked = check(loaded.sources, &loaded.files, Limits::default(), &env);
        let mut diagnostics = loaded.diagnostics;
        diagnostics.extend(checked.diagnostics);
        let Some(policy) = checked.policy else {
            return Err(rendered_errors(&diagnostics, &checked.sources));
        };
        let warnings: Vec<String> = diagnostics
            .iter()
            .filter(|d| !d.is_error())
            .map(|d| d.render(&checked.sources))
            .collect();
        let templates = Templates::load_dir(&template_dir, &policy.languages)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut active = ActivePolicy::new(policy, templates, now)?;
        active.dir = Some(dir.to_owned());
        active.warnings = warnings;
        Ok(active)
    }

    /// A policy and templates built elsewhere (in memory, for tests and
    /// `simulate`). Fails when a template the engine needs is missing or a
    /// template does not render with a complete example context.
    pub fn new(
        policy: Policy,
        templates: Templates,
        now: DateTime<Utc>,
    ) -> Result<ActivePolicy, Vec<String>> {
        let names = DisplayNames::from_policy(&policy);
        let departments = department_addresses(&policy);
        let active = ActivePolicy {
            policy,
            templates,
            names,
            department_addresses: departments,
            loaded_at: now,
            dir: None,
            warnings: Vec::new(),
        };
        let errors = active.dry_run();
        if errors.is_empty() {
            Ok(active)
        } else {
            Err(errors)
        }
    }

    /// The file stem of a declared template (`template weekly_digest
    /// "weekly-digest"`), or, when none is declared, the name with `_`
    /// written `-` (the convention of the default templates' files).
    pub fn template_stem(&self, name: &str) -> String {
        self.policy
            .templates
            .iter()
            .find(|t| t.name.node == name)
            .map_or_else(|| name.replace('_', "-"), |t| t.file_stem.node.clone())
    }

    /// The language internal mail (forwards, escalations, digests) is written in.
    pub fn default_language(&self) -> String {
        self.policy
            .languages
            .first()
            .cloned()
            .unwrap_or_else(|| "en".to_owned())
    }

    /// The language to answer a mail in: its own when the policy has
    /// templates in it, else the policy's default.
    pub fn language_for(&self, detected: &str) -> String {
        if self.policy.languages.iter().any(|l| l == detected) {
            detected.to_owned()
        } else {
            self.default_language()
        }
    }

    /// The zone times are shown in: the default calendar's, else `fallback`.
    pub fn display_zone(&self, fallback: Tz) -> Tz {
        self.policy
            .default_calendar
            .as_deref()
            .and_then(|name| self.policy.calendar(name))
            .map_or(fallback, |calendar| calendar.zone())
    }

    /// Renders every template in every language it has with an example
    /// context that sets every documented variable, so a misspelt variable
    /// is refused at load instead of when a complaint arrives.
    fn dry_run(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let default = self.default_language();
        for needed in [ACKNOWLEDGEMENT_TEMPLATE, FORWARD_TEMPLATE] {
            let stem = self.template_stem(needed);
            if self.templates.language_for(&stem, &default).is_none() {
                errors.push(format!(
                    "templates/{stem}.{default}.txt: the engine needs the `{needed}` template \
                     in the default language `{default}`"
                ));
            }
        }
        let stems: BTreeSet<String> = self
            .policy
            .templates
            .iter()
            .map(|t| t.file_stem.node.clone())
            .chain([
                self.template_stem(ACKNOWLEDGEMENT_TEMPLATE),
                self.template_stem(FORWARD_TEMPLATE),
            ])
            .collect();
        let context = example_context();
        for stem in &stems {
            for language in &self.policy.languages {
                if !self.templates.has(stem, language) {
                    continue;
                }
                if let Err(error) = self.templates.render(stem, language, &context) {
                    errors.push(error.to_string());
                }
            }
        }
        errors
    }
}

fn rendered_errors(diagnostics: &[Diagnostic], sources: &crate::rules::SourceMap) -> Vec<String> {
    diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.render(sources))
        .collect()
}

/// File names in a directory, or `None` when there is none.
fn file_names(dir: &Path) -> Option<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
    )
}

/// A context in which every documented template variable is set.
fn example_context() -> TemplateContext {
    let named = |name: &str| Named {
        name: name.to_owned(),
        display: name.to_owned(),
    };
    let case = CaseView {
        number: "TS-2026-000001".to_owned(),
        subject: "subject".to_owned(),
        received_at: "2026-01-05 09:00".to_owned(),
        channel: named("own"),
        language: "zh".to_owned(),
        status: "assigned".to_owned(),
        severity: Some("general".to_owned()),
        category: Some(named("other")),
        responsibility: Some("ours".to_owned()),
        tags: vec!["tag".to_owned()],
        department: Some(named("service")),
        cc_departments: vec![named("office")],
        fields: vec![FieldView {
            field: named("loss"),
            value: "1".to_owned(),
        }],
        sender: PersonView {
            name: "name".to_owned(),
            email: "customer@example.com".to_owned(),
        },
        deadlines: vec![DeadlineView {
            deadline: named("resolve"),
            due: "2026-01-06 09:00".to_owned(),
            state: "running".to_owned(),
            overdue: false,
        }],
    };
    TemplateContext {
        organisation: "organisation".to_owned(),
        language: "zh".to_owned(),
        now: "2026-01-05 09:00".to_owned(),
        case: Some(case.clone()),
        mail: Some(MailView {
            from: case.sender.clone(),
            subject: "subject".to_owned(),
            text: "text".to_owned(),
            received_at: "2026-01-05 09:00".to_owned(),
            attachments: Vec::new(),
        }),
        department: Some(named("service")),
        reply_address: Some("complaints+token@example.com".to_owned()),
        escalation: Some(EscalationView {
            deadline: named("resolve"),
            due: "2026-01-06 09:00".to_owned(),
            step: 0,
        }),
        digest: Some(DigestView {
            schedule: "weekly".to_owned(),
            cases: vec![case],
        }),
        notice: Some(NoticeView {
            text: "text".to_owned(),
            items: vec!["item".to_owned()],
        }),
    }
}
