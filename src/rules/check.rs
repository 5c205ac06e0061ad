//! The checker: resolves names and types across all files, reports every problem at once.
//!
//! It never stops at the first problem: every declaration is looked at, every
//! name resolved, and all diagnostics come back together, errors and warnings.
//! Only a policy without errors becomes a [`Policy`].

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use regex::RegexBuilder;

use super::ast::*;
use super::diag::{did_you_mean, Diagnostic};
use super::policy::{Limits, Policy};
use super::source::SourceMap;
use crate::calendar::Calendar;
use crate::case::CaseState;

/// The outcome of checking: the policy when there were no errors, and all diagnostics.
#[derive(Debug)]
pub struct Checked {
    pub sources: SourceMap,
    pub policy: Option<Policy>,
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// What the checker may know about the world outside the rule files.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// File names present in the policy's `templates/` directory; `None` skips
    /// the check (for policies held in memory).
    pub template_files: Option<BTreeSet<String>>,
}

/// Parses a crontab line: five fields (minute first, seconds implied 0) as
/// administrators know them, or the six/seven fields of the `cron` crate.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {}", text.trim()),
        6 | 7 => text.trim().to_owned(),
        n => {
            return Err(format!(
                "a schedule has 5 fields (minute hour day month weekday), this one has {n}"
            ))
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| e.to_string())
}

/// The value types a condition can compare.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Text,
    TextList,
    Number,
    Date,
    Flag,
    /// One of a fixed set of names, e.g. a severity, a category, a status.
    Names {
        what: &'static str,
        names: Vec<String>,
        ordered: bool,
    },
    /// A set of free names (tags).
    NameSet,
}

impl Ty {
    fn describe(&self) -> String {
        match self {
            Ty::Text => "text".into(),
            Ty::TextList => "a list of texts".into(),
            Ty::Number => "a number".into(),
            Ty::Date => "a date".into(),
            Ty::Flag => "a flag (true or false)".into(),
            Ty::Names { what, .. } => format!("a {what}"),
            Ty::NameSet => "a set of tags".into(),
        }
    }
}

const BUILTIN_PATHS: &[&str] = &[
    "subject",
    "text",
    "sender",
    "sender.domain",
    "sender.name",
    "recipients",
    "channel",
    "attachments.count",
    "attachments.names",
    "attachments.types",
    "language",
    "severity",
    "category",
    "responsibility",
    "validity",
    "status",
    "tags",
    "open",
    "overdue",
    "route",
    "assignee",
    "reopenings",
];

/// Fields a rule may set besides custom fields.
const SETTABLE_BUILTINS: &[&str] = &["category", "responsibility", "validity"];

pub const RESPONSIBILITY_VALUES: &[&str] = &["ours", "not_ours"];
pub const VALIDITY_VALUES: &[&str] = &["valid", "invalid"];

/// Checks a parsed policy. `sources` must hold every file the spans refer to.
pub fn check(sources: SourceMap, files: &[File], limits: Limits, env: &Environment) -> Checked {
    let mut checker = Checker::new(&sources, limits, env);
    checker.collect(files);
    checker.check_all();
    let diagnostics = std::mem::take(&mut checker.diags);
    let policy = if diagnostics.iter().any(|d| d.is_error()) {
        None
    } else {
        Some(checker.into_policy(sources.clone()))
    };
    Checked {
        sources,
        policy,
        diagnostics,
    }
}

struct Checker<'a> {
    sources: &'a SourceMap,
    limits: Limits,
    env: &'a Environment,
    diags: Vec<Diagnostic>,
    severity: Option<SeverityDecl>,
    categories: Vec<CategoryDecl>,
    fields: Vec<FieldDecl>,
    channels: Vec<ChannelDecl>,
    languages: Option<LanguagesDecl>,
    calendars: Vec<CalendarDecl>,
    departments: Vec<DepartmentDecl>,
    templates: Vec<TemplateDecl>,
    classify: Vec<ClassifyBlock>,
    routes: Vec<RouteBlock>,
    deadlines: Vec<DeadlineDecl>,
    escalations: Vec<EscalateBlock>,
    schedules: Vec<ScheduleDecl>,
    tests: Vec<TestDecl>,
    built_calendars: HashMap<String, Calendar>,
    regexes: HashMap<Span, regex::Regex>,
    crons: HashMap<String, cron::Schedule>,
    /// Whether some condition reads the `overdue` flag (which any running
    /// clock past its due time sets) where it could decide about a finished
    /// case: anywhere but beside `open` in an `and`.
    reads_overdue_of_finished: bool,
    /// How many `open and …` the expression being checked lies within.
    open_guards: usize,
    /// Where each file starts, for problems that belong to no declaration.
    first_span: Span,
}

impl<'a> Checker<'a> {
    fn new(sources: &'a SourceMap, limits: Limits, env: &'a Environment) -> Self {
        Checker {
            sources,
            limits,
            env,
            diags: Vec::new(),
            severity: None,
            categories: Vec::new(),
            fields: Vec::new(),
            channels: Vec::new(),
            languages: None,
            calendars: Vec::new(),
            departments: Vec::new(),
            templates: Vec::new(),
            classify: Vec::new(),
            routes: Vec::new(),
            deadlines: Vec::new(),
            escalations: Vec::new(),
            schedules: Vec::new(),
            tests: Vec::new(),
            built_calendars: HashMap::new(),
            regexes: HashMap::new(),
            crons: HashMap::new(),
            reads_overdue_of_finished: false,
            open_guards: 0,
            first_span: Span {
                file: 0,
                start: 0,
                end: 0,
                line: 1,
                col: 1,
            },
        }
    }

    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(span, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn warning(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::warning(span, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn location(&self, span: Span) -> String {
        format!(
            "{}:{}:{}",
            self.sources.path(span.file).display(),
            span.line,
            span.col
        )
    }

    /// Reports `name` as unknown, with a "did you mean" among `candidates`.
    fn unknown<'c>(
        &mut self,
        what: &str,
        name: &Ident,
        candidates: impl IntoIterator<Item = &'c str>,
    ) {
        let candidates: Vec<&str> = candidates.into_iter().collect();
        let suggestion = did_you_mean(&name.node, candidates.iter().copied()).map(str::to_owned);
        let d = self.error(name.span, format!("unknown {what} `{}`", name.node));
        if let Some(s) = suggestion {
            d.help = Some(format!("did you mean `{s}`?"));
        } else if !candidates.is_empty() && candidates.len() <= 8 {
            d.help = Some(format!(
                "declared {what}s: {}",
                candidates
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    fn collect(&mut self, files: &[File]) {
        let mut severities: Vec<SeverityDecl> = Vec::new();
        let mut languages: Vec<LanguagesDecl> = Vec::new();
        for file in files {
            for item in &file.items {
                match item {
                    Item::Include(_) => {}
                    Item::Severity(d) => severities.push(d.clone()),
                    Item::Category(d) => self.categories.push(d.clone()),
                    Item::Field(d) => self.fields.push(d.clone()),
                    Item::Channel(d) => self.channels.push(d.clone()),
                    Item::Languages(d) => languages.push(d.clone()),
                    Item::Calendar(d) => self.calendars.push(d.clone()),
                    Item::Department(d) => self.departments.push(d.clone()),
                    Item::Template(d) => self.templates.push(d.clone()),
                    Item::Classify(d) => self.classify.push(d.clone()),
                    Item::Route(d) => self.routes.push(d.clone()),
                    Item::Deadline(d) => self.deadlines.push(d.clone()),
                    Item::Escalate(d) => self.escalations.push(d.clone()),
                    Item::Schedule(d) => self.schedules.push(d.clone()),
                    Item::Test(d) => self.tests.push(d.clone()),
                }
            }
        }
        let mut severities = severities.into_iter();
        self.severity = severities.next();
        for extra in severities {
            let first = self
                .severity
                .as_ref()
                .map(|s| self.location(s.span))
                .unwrap_or_default();
            self.error(extra.span, "severity levels are declared twice")
                .note = Some(format!("first declared at {first}"));
        }
        let mut languages = languages.into_iter();
        self.languages = languages.next();
        for extra in languages {
            let first = self
                .languages
                .as_ref()
                .map(|s| self.location(s.span))
                .unwrap_or_default();
            self.error(extra.span, "template languages are declared twice")
                .note = Some(format!("first declared at {first}"));
        }
    }

    fn check_all(&mut self) {
        self.check_declarations();
        self.check_calendars();
        self.check_departments();
        self.check_templates();
        self.check_classify();
        self.check_routes();
        self.check_deadlines();
        self.check_escalations();
        self.check_schedules();
        self.check_tests();
        // Last: it needs to know whether any condition above read `overdue`.
        self.check_finished_clocks();
    }

    // ----- declarations -----

    fn check_declarations(&mut self) {
        match self.severity.clone() {
            None => {
                self.error(self.first_span, "the policy declares no severity levels")
                    .help =
                    Some("add a line such as `severity general < important < major`".into());
            }
            Some(decl) => {
                let names: Vec<Ident> = decl.levels.clone();
                self.duplicates("severity level", names.iter());
                if names.len() < 2 {
                    self.error(decl.span, "a severity scale needs at least two levels");
                }
            }
        }
        let categories: Vec<Ident> = self.categories.iter().map(|c| c.name.clone()).collect();
        self.duplicates("category", categories.iter());
        let channels: Vec<Ident> = self.channels.iter().map(|c| c.name.clone()).collect();
        self.duplicates("channel", channels.iter());
        let fields: Vec<Ident> = self.fields.iter().map(|c| c.name.clone()).collect();
        self.duplicates("field", fields.iter());
        for field in &fields {
            if BUILTIN_PATHS.contains(&field.node.as_str()) || field.node.contains('.') {
                self.error(
                    field.span,
                    format!(
                        "`{}` is a built-in name and cannot be declared as a field",
                        field.node
                    ),
                );
            }
        }
        if let Some(langs) = self.languages.clone() {
            self.duplicates("language", langs.languages.iter());
        }
        let calendars: Vec<Ident> = self.calendars.iter().map(|c| c.name.clone()).collect();
        self.duplicates("calendar", calendars.iter());
        let departments: Vec<Ident> = self.departments.iter().map(|c| c.name.clone()).collect();
        self.duplicates("department", departments.iter());
        let templates: Vec<Ident> = self.templates.iter().map(|c| c.name.clone()).collect();
        self.duplicates("template", templates.iter());
        let deadlines: Vec<Ident> = self.deadlines.iter().map(|c| c.name.clone()).collect();
        self.duplicates("deadline", deadlines.iter());
        let schedules: Vec<Ident> = self.schedules.iter().map(|c| c.name.clone()).collect();
        self.duplicates("schedule", schedules.iter());
        let rules: Vec<Ident> = self
            .classify
            .iter()
            .flat_map(|b| b.rules.iter().map(|r| r.name.clone()))
            .collect();
        self.duplicates("rule", rules.iter());
        let route_names: Vec<Ident> = self
            .routes
            .iter()
            .flat_map(|b| b.routes.iter().filter_map(|r| r.name.clone()))
            .collect();
        self.duplicates("route", route_names.iter());
        let tests: Vec<Ident> = self.tests.iter().map(|t| t.name.clone()).collect();
        self.duplicates("test", tests.iter());
    }

    fn duplicates<'i>(&mut self, what: &str, names: impl Iterator<Item = &'i Ident>) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut found = Vec::new();
        for name in names {
            if let Some(first) = seen.get(name.node.as_str()) {
                found.push((name.clone(), *first));
            } else {
                seen.insert(&name.node, name.span);
            }
        }
        for (name, first) in found {
            let at = self.location(first);
            self.error(name.span, format!("duplicate {what} `{}`", name.node))
                .note = Some(format!("first declared at {at}"));
        }
    }

    fn check_calendars(&mut self) {
        for decl in self.calendars.clone() {
            match Calendar::from_decl(&decl) {
                Ok(calendar) => {
                    self.built_calendars
                        .insert(decl.name.node.clone(), calendar);
                }
                Err(diags) => self.diags.extend(diags),
            }
        }
    }

    fn calendar_names(&self) -> Vec<String> {
        self.calendars.iter().map(|c| c.name.node.clone()).collect()
    }

    fn resolve_calendar(&mut self, name: &Ident) {
        if !self.calendars.iter().any(|c| c.name.node == name.node) {
            let names = self.calendar_names();
            self.unknown("calendar", name, names.iter().map(String::as_str));
        }
    }

    fn check_departments(&mut self) {
        let mut owners: HashMap<String, Ident> = HashMap::new();
        for dept in self.departments.clone() {
            if dept.addresses.is_empty() {
                self.error(
                    dept.name.span,
                    format!("department `{}` has no address", dept.name.node),
                );
            }
            for addr in dept
                .addresses
                .iter()
                .chain(dept.manager.iter())
                .chain(dept.contacts.iter().map(|(_, a)| a))
            {
                if !is_plausible_address(&addr.node) {
                    self.error(addr.span, format!("`{}` is not a mail address", addr.node))
                        .help = Some("write it as <name@domain.example>".into());
                }
            }
            for addr in &dept.addresses {
                let key = addr.node.to_lowercase();
                if let Some(other) = owners.get(&key) {
                    if other.node != dept.name.node {
                        let other = other.node.clone();
                        self.error(addr.span, format!("address `{}` belongs to two departments", addr.node)).note =
                            Some(format!("also an address of department `{other}`; replies could not be attributed"));
                    }
                } else {
                    owners.insert(key, dept.name.clone());
                }
            }
            let contacts: Vec<Ident> = dept.contacts.iter().map(|(n, _)| n.clone()).collect();
            self.duplicates("contact", contacts.iter());
            for contact in &contacts {
                if contact.node == "manager" {
                    self.error(
                        contact.span,
                        "`manager` is declared with its own line, not as a contact",
                    );
                }
            }
            if let Some(cal) = &dept.calendar {
                self.resolve_calendar(cal);
            }
        }
    }

    fn check_templates(&mut self) {
        let languages: Vec<String> = match &self.languages {
            Some(l) => l.languages.iter().map(|i| i.node.clone()).collect(),
            None => Vec::new(),
        };
        let Some(files) = self.env.template_files.clone() else {
            return;
        };
        for template in self.templates.clone() {
            let stem = &template.file_stem.node;
            if stem.contains('/') || stem.contains('\\') || stem.starts_with('.') {
                self.error(
                    template.file_stem.span,
                    "a template names a file in `templates/`, not a path",
                );
                continue;
            }
            let wanted: Vec<String> = if languages.is_empty() {
                vec![format!("{stem}.txt")]
            } else {
                languages
                    .iter()
                    .map(|l| format!("{stem}.{l}.txt"))
                    .collect()
            };
            let missing: Vec<&String> = wanted.iter().filter(|w| !files.contains(*w)).collect();
            if !missing.is_empty() {
                let list = missing
                    .iter()
                    .map(|m| format!("templates/{m}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let candidates: Vec<&str> = files.iter().map(String::as_str).collect();
                let prefix = format!("{stem}.");
                let hint = if candidates.iter().any(|c| c.starts_with(&prefix)) {
                    Some(format!(
                        "each declared language needs its own file: {}",
                        languages.join(", ")
                    ))
                } else {
                    did_you_mean(missing[0], candidates).map(|s| format!("did you mean `{s}`?"))
                };
                let d = self.error(
                    template.file_stem.span,
                    format!("template file missing: {list}"),
                );
                d.help = hint;
            }
        }
    }

    // ----- names used in conditions and actions -----

    fn severity_names(&self) -> Vec<String> {
        self.severity
            .as_ref()
            .map(|s| s.levels.iter().map(|l| l.node.clone()).collect())
            .unwrap_or_default()
    }

    fn category_names(&self) -> Vec<String> {
        self.categories
            .iter()
            .map(|c| c.name.node.clone())
            .collect()
    }

    fn department_names(&self) -> Vec<String> {
        self.departments
            .iter()
            .map(|c| c.name.node.clone())
            .collect()
    }

    fn template_names(&self) -> Vec<String> {
        self.templates.iter().map(|c| c.name.node.clone()).collect()
    }

    fn deadline_names(&self) -> Vec<String> {
        self.deadlines.iter().map(|c| c.name.node.clone()).collect()
    }

    fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|c| c.name.node.clone()).collect()
    }

    fn path_type(&self, path: &str) -> Option<Ty> {
        let names = |what: &'static str, names: Vec<String>, ordered: bool| {
            Some(Ty::Names {
                what,
                names,
                ordered,
            })
        };
        match path {
            "subject" | "text" | "sender" | "sender.domain" | "sender.name" => Some(Ty::Text),
            "recipients" | "attachments.names" | "attachments.types" => Some(Ty::TextList),
            "attachments.count" | "reopenings" => Some(Ty::Number),
            "channel" => names(
                "channel",
                self.channels.iter().map(|c| c.name.node.clone()).collect(),
                false,
            ),
            "language" => Some(Ty::Names {
                what: "language",
                names: Vec::new(),
                ordered: false,
            }),
            "severity" => names("severity level", self.severity_names(), true),
            "category" => names("category", self.category_names(), false),
            "responsibility" => names("responsibility", to_strings(RESPONSIBILITY_VALUES), false),
            "validity" => names("validity", to_strings(VALIDITY_VALUES), false),
            "status" => names(
                "status",
                CaseState::ALL
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect(),
                false,
            ),
            "route" | "assignee" => names("department", self.department_names(), false),
            "tags" => Some(Ty::NameSet),
            "open" | "overdue" => Some(Ty::Flag),
            other => self
                .fields
                .iter()
                .find(|f| f.name.node == other)
                .map(|f| match f.ty.node {
                    FieldType::Text => Ty::Text,
                    FieldType::Number => Ty::Number,
                    FieldType::Flag => Ty::Flag,
                    FieldType::Date => Ty::Date,
                }),
        }
    }

    fn all_path_names(&self) -> Vec<String> {
        let mut all: Vec<String> = to_strings(BUILTIN_PATHS);
        all.extend(self.field_names());
        all
    }

    /// The type of an operand, or `None` after reporting why it has none.
    fn operand_type(&mut self, operand: &Operand) -> Option<Ty> {
        match operand {
            Operand::Header(_) => Some(Ty::Text),
            Operand::Count(agg) => {
                self.check_aggregate(&agg.node);
                Some(Ty::Number)
            }
            Operand::Path(path) => {
                let joined: String = path
                    .node
                    .iter()
                    .map(|i| i.node.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                if joined == "overdue" && self.open_guards == 0 {
                    self.reads_overdue_of_finished = true;
                }
                match self.path_type(&joined) {
                    Some(ty) => Some(ty),
                    None => {
                        let candidates = self.all_path_names();
                        let ident = Spanned::new(joined, path.span);
                        self.unknown("field", &ident, candidates.iter().map(String::as_str));
                        None
                    }
                }
            }
        }
    }

    fn check_aggregate(&mut self, agg: &Aggregate) {
        match agg {
            Aggregate::CasesFromSender { window } | Aggregate::DistinctSenders { window, .. } => {
                self.check_duration(window);
                if window.node.unit.is_business() {
                    self.error(window.span, "aggregate windows count elapsed time; write hours or days, not working time");
                }
            }
            Aggregate::Reopenings => {}
        }
        if let Aggregate::DistinctSenders { key, .. } = agg {
            if key.node == GroupKey::SameCategory && self.categories.is_empty() {
                self.error(key.span, "`same category` needs declared categories");
            }
        }
    }

    /// Checks that `value` fits `ty`; reports a type error at the value otherwise.
    fn check_value(
        &mut self,
        ty: &Ty,
        value: &Spanned<Value>,
        context: &str,
        captures: Option<usize>,
    ) {
        let span = value.span;
        match (&value.node, ty) {
            (Value::Capture(n), _) => {
                match captures {
                    None => {
                        self.error(span, format!("`${n}` can only be used in the actions of a rule whose condition matches a regex"));
                    }
                    Some(groups) if (*n as usize) > groups => {
                        self.error(span, format!("`${n}` refers to capture group {n}, but the rule's regex has {groups}"));
                    }
                    Some(_) => {}
                }
            }
            (Value::Name(name), Ty::Names { what, names, .. }) => {
                if !names.is_empty() && !names.contains(name) {
                    let ident = Spanned::new(name.clone(), span);
                    self.unknown(what, &ident, names.iter().map(String::as_str));
                }
            }
            (Value::Name(_), Ty::NameSet) => {}
            (Value::Text(_), Ty::NameSet) => {}
            (Value::Text(_), Ty::Text | Ty::TextList) => {}
            (Value::Number(_), Ty::Number) => {}
            (Value::Date(_), Ty::Date) => {}
            (Value::Bool(_), Ty::Flag) => {}
            (Value::Text(t), Ty::Names { what, .. }) => {
                self.error(
                    span,
                    format!(
                        "type error: {context} is {}, but is compared with the text \"{t}\"",
                        ty.describe()
                    ),
                )
                .help = Some(format!("write the {what} without quotes: {t}"));
            }
            (Value::Name(n), Ty::Text | Ty::TextList) => {
                self.error(
                    span,
                    format!(
                        "type error: {context} is {}, but `{n}` is a name",
                        ty.describe()
                    ),
                )
                .help = Some(format!("put text in quotes: \"{n}\""));
            }
            (other, _) => {
                self.error(
                    span,
                    format!(
                        "type error: {context} is {}, but is compared with {}",
                        ty.describe(),
                        describe_value(other)
                    ),
                );
            }
        }
    }

    fn check_regex(&mut self, regex: &Spanned<RegexLit>) -> Option<usize> {
        let built = RegexBuilder::new(&regex.node.pattern)
            .case_insensitive(regex.node.case_insensitive)
            .unicode(true)
            .size_limit(self.limits.max_regex_size)
            .build();
        match built {
            Ok(re) => {
                let groups = re.captures_len() - 1;
                self.regexes.insert(regex.span, re);
                Some(groups)
            }
            Err(e) => {
                let message = match &e {
                    regex::Error::CompiledTooBig(limit) => {
                        format!("regex is too large: it compiles to more than {limit} bytes (setting max_regex_size)")
                    }
                    other => format!(
                        "invalid regex: {}",
                        first_meaningful_line(&other.to_string())
                    ),
                };
                self.error(regex.span, message);
                None
            }
        }
    }

    /// Checks a condition; returns the number of capture groups of the regexes it matches.
    fn check_expr(&mut self, expr: &Expr) -> usize {
        match expr {
            Expr::And(a, b, _) if is_open_flag(a) || is_open_flag(b) => {
                // Under `open and …` the other side matters only for open
                // cases, so an `overdue` there never counts a finished one.
                self.open_guards += 1;
                let depth = self.check_expr(a).max(self.check_expr(b));
                self.open_guards -= 1;
                depth
            }
            Expr::And(a, b, _) | Expr::Or(a, b, _) => self.check_expr(a).max(self.check_expr(b)),
            Expr::Not(a, _) => {
                self.check_expr(a);
                0
            }
            Expr::Always(_) => 0,
            Expr::Arrival { calendar, .. } => {
                self.resolve_calendar(calendar);
                0
            }
            Expr::Compare {
                left, op, right, ..
            } => {
                let context = operand_text(left);
                let Some(ty) = self.operand_type(left) else {
                    return 0;
                };
                match op.node {
                    CompareOp::Eq | CompareOp::Ne => {
                        if matches!(ty, Ty::TextList | Ty::NameSet) {
                            self.error(
                                op.span,
                                format!(
                                    "{context} is {}; use `has` or `contains` instead of `{}`",
                                    ty.describe(),
                                    op_text(op.node)
                                ),
                            );
                        } else {
                            self.check_value(&ty, right, &context, None);
                        }
                    }
                    CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge => {
                        let ordered =
                            matches!(ty, Ty::Number | Ty::Date | Ty::Names { ordered: true, .. });
                        if !ordered {
                            self.error(
                                op.span,
                                format!(
                                    "{context} is {} and has no order; `{}` cannot compare it",
                                    ty.describe(),
                                    op_text(op.node)
                                ),
                            );
                        } else {
                            self.check_value(&ty, right, &context, None);
                        }
                    }
                    CompareOp::Contains => match ty {
                        Ty::Text | Ty::TextList => {
                            self.check_value(&Ty::Text, right, &context, None)
                        }
                        Ty::NameSet => self.check_value(&ty, right, &context, None),
                        _ => {
                            self.error(
                                op.span,
                                format!("{context} is {}; `contains` works on text", ty.describe()),
                            );
                        }
                    },
                }
                0
            }
            Expr::HasAny { left, values, .. } => {
                let context = operand_text(left);
                if let Some(ty) = self.operand_type(left) {
                    let element = match ty {
                        Ty::Text | Ty::TextList => Some(Ty::Text),
                        Ty::NameSet => Some(Ty::NameSet),
                        Ty::Names { .. } => Some(ty.clone()),
                        _ => None,
                    };
                    match element {
                        Some(element) => {
                            for v in values {
                                self.check_value(&element, v, &context, None);
                            }
                        }
                        None => {
                            self.error(
                                left.span(),
                                format!(
                                    "{context} is {}; `has` works on text, lists and tags",
                                    ty.describe()
                                ),
                            );
                        }
                    }
                }
                0
            }
            Expr::Matches { left, regex, .. } => {
                let context = operand_text(left);
                let groups = self.check_regex(regex);
                if let Some(ty) = self.operand_type(left) {
                    if !matches!(ty, Ty::Text | Ty::TextList | Ty::NameSet) {
                        self.error(
                            regex.span,
                            format!(
                                "{context} is {}; only text can match a regex",
                                ty.describe()
                            ),
                        );
                    }
                }
                groups.unwrap_or(9)
            }
            Expr::IsSet { left, .. } => {
                self.operand_type(left);
                0
            }
            Expr::Flag { left, .. } => {
                let context = operand_text(left);
                if let Some(ty) = self.operand_type(left) {
                    if ty != Ty::Flag {
                        self.error(
                            left.span(),
                            format!(
                                "{context} is {}, not a flag; compare it with a value",
                                ty.describe()
                            ),
                        );
                    }
                }
                0
            }
        }
    }

    fn check_duration(&mut self, duration: &Spanned<Duration>) {
        if duration.node.unit == DurationUnit::EndOfDay {
            // `until end of day` has no amount to check.
            return;
        }
        if duration.node.amount == 0 {
            self.error(duration.span, "impossible duration: it is zero");
        } else if duration.node.amount > max_amount(duration.node.unit) {
            self.error(
                duration.span,
                format!("impossible duration: more than {} years", 10),
            );
        }
    }

    // ----- classification -----

    fn check_classify(&mut self) {
        for block in self.classify.clone() {
            let mut stopped_always: Option<Ident> = None;
            for rule in &block.rules {
                if let Some(stopper) = &stopped_always {
                    let name = stopper.node.clone();
                    self.warning(
                        rule.name.span,
                        format!("rule `{}` can never fire", rule.name.node),
                    )
                    .note = Some(format!(
                        "rule `{name}` above always matches and stops the block"
                    ));
                }
                let groups = self.check_expr(&rule.condition);
                for action in &rule.actions {
                    self.check_action(action, groups);
                }
                if rule.stop
                    && matches!(rule.condition, Expr::Always(_))
                    && stopped_always.is_none()
                {
                    stopped_always = Some(rule.name.clone());
                }
            }
        }
    }

    fn check_action(&mut self, action: &Spanned<RuleAction>, captures: usize) {
        match &action.node {
            RuleAction::RaiseSeverity(level) | RuleAction::SetSeverity(level) => {
                self.resolve_severity(level)
            }
            RuleAction::Tag(_) => {}
            RuleAction::Set { field, value } => {
                let name = field.node.as_str();
                if name == "severity" {
                    self.error(
                        field.span,
                        "set severity with `severity >= LEVEL` (raise) or `severity = LEVEL`",
                    );
                    return;
                }
                let settable = SETTABLE_BUILTINS.contains(&name)
                    || self.fields.iter().any(|f| f.name.node == name);
                if !settable {
                    if BUILTIN_PATHS.contains(&name) {
                        self.error(
                            field.span,
                            format!("`{name}` is read-only: rules cannot change it"),
                        );
                    } else {
                        let mut candidates = to_strings(SETTABLE_BUILTINS);
                        candidates.extend(self.field_names());
                        self.unknown("field", field, candidates.iter().map(String::as_str));
                    }
                    return;
                }
                if let Some(ty) = self.path_type(name) {
                    let captures = if captures > 0 { Some(captures) } else { None };
                    self.check_value(&ty, value, name, captures);
                }
            }
        }
    }

    fn resolve_severity(&mut self, level: &Ident) {
        let names = self.severity_names();
        if !names.is_empty() && !names.contains(&level.node) {
            self.unknown("severity level", level, names.iter().map(String::as_str));
        }
    }

    fn resolve_department(&mut self, name: &Ident) {
        if !self.departments.iter().any(|d| d.name.node == name.node) {
            let names = self.department_names();
            self.unknown("department", name, names.iter().map(String::as_str));
        }
    }

    fn resolve_template(&mut self, name: &Ident) {
        if !self.templates.iter().any(|t| t.name.node == name.node) {
            let names = self.template_names();
            self.unknown("template", name, names.iter().map(String::as_str));
        }
    }

    // ----- routing -----

    fn check_routes(&mut self) {
        let routes = self.routes.clone();
        if routes.is_empty() {
            self.error(
                self.first_span,
                "the policy has no `route` block: cases could not be assigned",
            )
            .help = Some("add `route { otherwise -> DEPARTMENT }`".into());
        }
        for (i, block) in routes.iter().enumerate() {
            if i > 0 {
                let first = self.location(routes[0].span);
                self.error(block.span, "a second `route` block").note = Some(format!(
                    "the first is at {first}; put all routes in one block, in order"
                ));
            }
            let mut catch_all: Option<String> = None;
            let mut seen_conditions: Vec<(String, String)> = Vec::new();
            for (n, route) in block.routes.iter().enumerate() {
                let label = route.name.as_ref().map_or_else(
                    || format!("route #{}", n + 1),
                    |l| format!("route `{}`", l.node),
                );
                if let Some(by) = &catch_all {
                    self.warning(route.span, format!("{label} is unreachable"))
                        .note = Some(format!("{by} above matches every case"));
                } else if let Some((_, by)) = seen_conditions
                    .iter()
                    .find(|(c, _)| *c == expr_key(&route.condition))
                {
                    let by = by.clone();
                    self.warning(route.span, format!("{label} is unreachable"))
                        .note = Some(format!("{by} above has the same condition"));
                }
                self.check_expr(&route.condition);
                self.check_route_target(&route.target);
                if matches!(route.condition, Expr::Always(_)) {
                    catch_all = Some(label.clone());
                }
                seen_conditions.push((expr_key(&route.condition), label));
            }
            match &block.otherwise {
                Some(target) => {
                    if let Some(by) = &catch_all {
                        self.warning(target.span, "`otherwise` is unreachable").note =
                            Some(format!("{by} above matches every case"));
                    }
                    self.check_route_target(target);
                }
                None if catch_all.is_none() => {
                    self.error(block.span, "routes can fall through: this block has no `otherwise`")
                        .help = Some("end the block with `otherwise -> DEPARTMENT`, so that every case is assigned".into());
                }
                None => {}
            }
        }
    }

    fn check_route_target(&mut self, target: &RouteTarget) {
        self.resolve_department(&target.department);
        for cc in &target.cc {
            self.resolve_department(cc);
            if cc.node == target.department.node {
                self.warning(
                    cc.span,
                    format!("`{}` is both the assignee and in cc", cc.node),
                );
            }
        }
    }

    // ----- deadlines and escalation -----

    fn check_deadlines(&mut self) {
        for deadline in self.deadlines.clone() {
            if let Some(cal) = &deadline.calendar {
                self.resolve_calendar(cal);
            }
            if deadline.starts_on.is_empty() {
                self.error(
                    deadline.name.span,
                    format!(
                        "deadline `{}` never starts: add `starts on EVENT`",
                        deadline.name.node
                    ),
                );
            }
            if deadline.stops_on.is_empty() && deadline.hard_stop.is_none() {
                self.warning(
                    deadline.name.span,
                    format!(
                        "deadline `{}` never stops: add `stops on EVENT`",
                        deadline.name.node
                    ),
                );
            }
            for start in &deadline.starts_on {
                if deadline.stops_on.iter().any(|s| s.node == start.node) {
                    self.error(
                        start.span,
                        "a deadline cannot start and stop on the same event",
                    );
                }
            }
            if let Some(field) = &deadline.starts_at {
                self.check_starts_at(field);
            }
            if let Some(pause) = &deadline.pause_while {
                self.check_expr(pause);
            }
            let mut durations: Vec<Spanned<Duration>> = Vec::new();
            for rule in &deadline.durations {
                self.check_expr(&rule.condition);
                durations.push(rule.duration);
            }
            for &span in &deadline.misplaced_none {
                self.error(
                    span,
                    "`none` is only the `otherwise` of a deadline, not the length of a `when` line",
                )
                .help = Some(
                    "give this line a duration, and end the deadline with `otherwise -> none` if the other cases have no clock".into(),
                );
            }
            if let Some(span) = deadline.otherwise_none {
                if deadline.durations.is_empty() && deadline.misplaced_none.is_empty() {
                    self.error(
                        span,
                        format!(
                            "deadline `{}` never starts a clock: it has no `when` line before `otherwise -> none`",
                            deadline.name.node
                        ),
                    )
                    .help = Some("add `when CONDITION -> DURATION` lines for the cases it applies to".into());
                }
            }
            match deadline.otherwise {
                Some(d) => durations.push(d),
                None if deadline.otherwise_none.is_some() => {}
                None => {
                    self.error(
                        deadline.span,
                        format!(
                            "deadline `{}` can fall through: it has no `otherwise` duration",
                            deadline.name.node
                        ),
                    )
                    .help = Some(
                        "end it with `otherwise -> DURATION`, or with `otherwise -> none` if the other cases have no clock".into(),
                    );
                }
            }
            for d in &durations {
                self.check_duration(d);
                if d.node.unit.is_business()
                    && deadline.calendar.is_none()
                    && self.calendars.is_empty()
                {
                    self.error(
                        d.span,
                        "working time needs a business calendar, and none is declared",
                    );
                }
                if d.node.unit == DurationUnit::EndOfDay
                    && deadline.calendar.is_none()
                    && self.calendars.is_empty()
                {
                    self.error(
                        d.span,
                        "`until end of day` needs a calendar for its time zone, and none is declared",
                    );
                }
            }
        }
    }

    /// `starts at FIELD`: a declared field that holds a date.
    fn check_starts_at(&mut self, field: &Ident) {
        let declared = self
            .fields
            .iter()
            .find(|f| f.name.node == field.node)
            .map(|f| f.ty.node);
        match declared {
            None => {
                let names = self.field_names();
                self.unknown("field", field, names.iter().map(String::as_str));
            }
            Some(FieldType::Date) => {}
            Some(other) => {
                let kind = match other {
                    FieldType::Text => "text",
                    FieldType::Number => "number",
                    FieldType::Flag => "flag",
                    FieldType::Date => "date",
                };
                self.error(
                    field.span,
                    format!(
                        "a deadline can only start at a date field, and `{}` is a {kind} field",
                        field.node
                    ),
                )
                .help = Some("declare it as `field NAME date`".into());
            }
        }
    }

    fn check_escalations(&mut self) {
        let mut seen: HashMap<String, Span> = HashMap::new();
        for block in self.escalations.clone() {
            if let Some(first) = seen.get(&block.deadline.node) {
                let at = self.location(*first);
                self.error(
                    block.deadline.span,
                    format!(
                        "deadline `{}` has two escalation ladders",
                        block.deadline.node
                    ),
                )
                .note = Some(format!("the first is at {at}"));
            }
            seen.insert(block.deadline.node.clone(), block.deadline.span);
            let deadline = self
                .deadlines
                .iter()
                .find(|d| d.name.node == block.deadline.node)
                .cloned();
            if deadline.is_none() {
                let names = self.deadline_names();
                self.unknown(
                    "deadline",
                    &block.deadline,
                    names.iter().map(String::as_str),
                );
            }
            for step in &block.steps {
                match step.at.node {
                    StepOffset::Percent(p) if p == 0 || p > 1000 => {
                        self.error(
                            step.at.span,
                            format!("impossible step: {p}% of the deadline"),
                        );
                    }
                    StepOffset::AfterStart(d)
                    | StepOffset::BeforeDue(d)
                    | StepOffset::AfterDue(d) => {
                        self.check_duration(&Spanned::new(d, step.at.span));
                    }
                    StepOffset::Percent(_) => {}
                }
                if let Some(deadline) = &deadline {
                    if let Some(hard) = deadline.hard_stop {
                        let after = matches!(step.at.node, StepOffset::AfterDue(_))
                            || matches!(step.at.node, StepOffset::Percent(p) if p > 100);
                        if after {
                            let at = self.location(hard);
                            self.error(
                                step.at.span,
                                format!(
                                    "this step lies after the hard stop of deadline `{}`",
                                    deadline.name.node
                                ),
                            )
                            .note = Some(format!(
                                "the clock ends at its due time (`hard stop` at {at})"
                            ));
                        }
                    }
                }
                for r in &step.recipients {
                    self.check_recipient(r);
                }
                self.resolve_template(&step.template);
                if let Some(level) = &step.raise_severity {
                    self.resolve_severity(level);
                }
                if let Some(cond) = &step.condition {
                    self.check_expr(cond);
                }
            }
        }
    }

    /// A deadline whose clock keeps running when the case is finished, while
    /// an escalation ladder or an `overdue` condition acts on it, would remind
    /// and supervise people about a case that will not change again. A
    /// deadline that starts on a finishing event is meant to run on finished
    /// cases and is left alone.
    fn check_finished_clocks(&mut self) {
        for deadline in self.deadlines.clone() {
            let starts_on_finish = deadline
                .starts_on
                .iter()
                .any(|e| FINISHING_EVENTS.contains(&e.node));
            if starts_on_finish {
                continue;
            }
            let missing: Vec<ClockEvent> = FINISHING_EVENTS
                .into_iter()
                .filter(|event| !deadline.stops_on.iter().any(|e| e.node == *event))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let escalated = self
                .escalations
                .iter()
                .any(|block| block.deadline.node == deadline.name.node);
            let consequence = if escalated {
                "its escalations would go on for a finished case"
            } else if self.reads_overdue_of_finished {
                "a finished case would count as `overdue`"
            } else {
                continue;
            };
            let described: Vec<&str> = missing.iter().map(|e| finishing_text(*e)).collect();
            let written: Vec<&str> = missing.iter().map(|e| event_keyword(*e)).collect();
            self.warning(
                deadline.name.span,
                format!(
                    "deadline `{}` keeps running when a case is {}; {consequence}",
                    deadline.name.node,
                    join_or(&described)
                ),
            )
            .help = Some(format!(
                "add {} to `stops on`: {}",
                if missing.len() == 1 { "it" } else { "them" },
                written.join(", ")
            ));
        }
    }

    fn check_recipient(&mut self, recipient: &Spanned<Recipient>) {
        match &recipient.node {
            Recipient::Assignee | Recipient::Customer => {}
            Recipient::Address(a) => {
                if !is_plausible_address(a) {
                    self.error(recipient.span, format!("`{a}` is not a mail address"));
                }
            }
            Recipient::AssigneeRole(role) => {
                if role.node != "manager"
                    && !self
                        .departments
                        .iter()
                        .any(|d| d.contacts.iter().any(|(n, _)| n.node == role.node))
                {
                    let mut roles: Vec<String> = vec!["manager".into()];
                    roles.extend(
                        self.departments
                            .iter()
                            .flat_map(|d| d.contacts.iter().map(|(n, _)| n.node.clone())),
                    );
                    roles.sort();
                    roles.dedup();
                    self.unknown("contact", role, roles.iter().map(String::as_str));
                }
            }
            Recipient::Department(dept, role) => {
                let found = self
                    .departments
                    .iter()
                    .find(|d| d.name.node == dept.node)
                    .cloned();
                match found {
                    None => {
                        let mut names = self.department_names();
                        names.extend(["assignee".to_owned(), "customer".to_owned()]);
                        self.unknown("department", dept, names.iter().map(String::as_str));
                    }
                    Some(d) => {
                        if let Some(role) = role {
                            if role.node == "manager" {
                                if d.manager.is_none() {
                                    self.error(
                                        role.span,
                                        format!("department `{}` has no manager", d.name.node),
                                    );
                                }
                            } else if !d.contacts.iter().any(|(n, _)| n.node == role.node) {
                                let mut roles: Vec<String> = vec!["manager".into()];
                                roles.extend(d.contacts.iter().map(|(n, _)| n.node.clone()));
                                self.unknown(
                                    &format!("contact of `{}`", d.name.node),
                                    role,
                                    roles.iter().map(String::as_str),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    // ----- schedules -----

    fn check_schedules(&mut self) {
        for schedule in self.schedules.clone() {
            match parse_cron(&schedule.cron.node) {
                Ok(s) => {
                    self.crons.insert(schedule.name.node.clone(), s);
                }
                Err(e) => {
                    self.error(schedule.cron.span, format!("invalid schedule: {e}"))
                        .help = Some(
                        "write minute hour day-of-month month day-of-week, e.g. \"0 9 * * MON\""
                            .into(),
                    );
                }
            }
            if let Some(cal) = &schedule.calendar {
                self.resolve_calendar(cal);
            }
            if let Some(filter) = &schedule.filter {
                self.check_expr(filter);
            }
            if schedule.recipients.is_empty() {
                self.error(
                    schedule.name.span,
                    format!(
                        "schedule `{}` sends to nobody: add `to RECIPIENT`",
                        schedule.name.node
                    ),
                );
            }
            for r in &schedule.recipients {
                if matches!(
                    r.node,
                    Recipient::Assignee | Recipient::AssigneeRole(_) | Recipient::Customer
                ) {
                    self.error(
                        r.span,
                        "a schedule covers many cases: send it to a department or an address",
                    );
                } else {
                    self.check_recipient(r);
                }
            }
            self.resolve_template(&schedule.template);
        }
    }

    // ----- tests -----

    fn check_tests(&mut self) {
        let rule_names: Vec<String> = self
            .classify
            .iter()
            .flat_map(|b| b.rules.iter().map(|r| r.name.node.clone()))
            .collect();
        for test in self.tests.clone() {
            if let Some(channel) = &test.channel {
                if !self.channels.iter().any(|c| c.name.node == channel.node) {
                    let names: Vec<String> =
                        self.channels.iter().map(|c| c.name.node.clone()).collect();
                    self.unknown("channel", channel, names.iter().map(String::as_str));
                }
            }
            for given in &test.history {
                if let Some(cat) = &given.category {
                    if !self.categories.iter().any(|c| c.name.node == cat.node) {
                        let names = self.category_names();
                        self.unknown("category", cat, names.iter().map(String::as_str));
                    }
                }
            }
            for expectation in &test.expectations {
                match &expectation.node {
                    Expectation::Field { field, value } => match self.path_type(&field.node) {
                        Some(ty) => self.check_value(&ty, value, &field.node, None),
                        None => {
                            let candidates = self.all_path_names();
                            self.unknown("field", field, candidates.iter().map(String::as_str));
                        }
                    },
                    Expectation::Tag(_) | Expectation::NoTag(_) => {}
                    Expectation::Route { department, cc } => {
                        self.resolve_department(department);
                        for c in cc {
                            self.resolve_department(c);
                        }
                    }
                    Expectation::Due { deadline, .. } => {
                        if !self.deadlines.iter().any(|d| d.name.node == deadline.node) {
                            let names = self.deadline_names();
                            self.unknown("deadline", deadline, names.iter().map(String::as_str));
                        }
                    }
                    Expectation::Fired { rule, .. } => {
                        if !rule_names.contains(&rule.node) {
                            self.unknown("rule", rule, rule_names.iter().map(String::as_str));
                        }
                    }
                }
            }
        }
    }

    fn into_policy(self, sources: SourceMap) -> Policy {
        let default_calendar = self.calendars.first().map(|c| c.name.node.clone());
        let routes = self.routes.into_iter().next().unwrap_or(RouteBlock {
            routes: Vec::new(),
            otherwise: None,
            span: Span::default(),
        });
        Policy {
            sources,
            severities: self
                .severity
                .map(|s| s.levels.into_iter().map(|l| l.node).collect())
                .unwrap_or_default(),
            categories: self.categories,
            fields: self.fields,
            channels: self.channels,
            languages: self
                .languages
                .map(|l| l.languages.into_iter().map(|i| i.node).collect())
                .unwrap_or_default(),
            calendars: self.built_calendars,
            default_calendar,
            departments: self.departments,
            templates: self.templates,
            classify: self.classify,
            routes,
            deadlines: self.deadlines,
            escalations: self.escalations,
            schedules: self.schedules,
            crons: self.crons,
            tests: self.tests,
            regexes: self.regexes,
            limits: self.limits,
            prepared: Default::default(),
        }
        .prepare()
    }
}

/// The events after which a case is finished (`CaseState::is_open` is false):
/// only a closed case may be reopened, and a reopening starts clocks afresh.
const FINISHING_EVENTS: [ClockEvent; 5] = [
    ClockEvent::Closed,
    ClockEvent::Withdrawn,
    ClockEvent::Rejected,
    ClockEvent::AbnormallyClosed,
    ClockEvent::Merged,
];

/// A finishing event as the end of "when a case is …".
fn finishing_text(event: ClockEvent) -> &'static str {
    match event {
        ClockEvent::AbnormallyClosed => "abnormally closed",
        other => event_keyword(other),
    }
}

/// An event as a policy writes it in `starts on` and `stops on`.
fn event_keyword(event: ClockEvent) -> &'static str {
    super::eval::clock_event_name(event)
}

/// `a`, `a or b`, `a, b or c`.
fn join_or(items: &[&str]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn to_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn max_amount(unit: DurationUnit) -> u32 {
    // Ten years in each unit: anything longer is a typo, not a policy.
    match unit {
        DurationUnit::Minutes | DurationUnit::WorkingMinutes => 10 * 366 * 24 * 60,
        DurationUnit::Hours | DurationUnit::WorkingHours => 10 * 366 * 24,
        DurationUnit::Days | DurationUnit::WorkingDays => 10 * 366,
        DurationUnit::Weeks => 10 * 53,
        DurationUnit::EndOfDay => 0,
    }
}

fn is_plausible_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !a.chars().any(|c| {
                    c.is_whitespace() || c == '<' || c == '>' || c == ',' || c.is_control()
                })
        }
        None => false,
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Name(n) => format!("the name `{n}`"),
        Value::Text(t) => format!("the text \"{t}\""),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("`{b}`"),
        Value::Date(d) => format!("the date {d}"),
        Value::Capture(n) => format!("`${n}`"),
    }
}

fn op_text(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "==",
        CompareOp::Ne => "!=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Contains => "contains",
    }
}

fn operand_text(operand: &Operand) -> String {
    match operand {
        Operand::Path(p) => format!(
            "`{}`",
            p.node
                .iter()
                .map(|i| i.node.as_str())
                .collect::<Vec<_>>()
                .join(".")
        ),
        Operand::Header(h) => format!("header \"{}\"", h.node),
        Operand::Count(_) => "the count".to_owned(),
    }
}

/// A span-free rendering of a condition, to spot two routes with the same condition.
fn expr_key(expr: &Expr) -> String {
    fn value_key(v: &Value) -> String {
        format!("{v:?}")
    }
    match expr {
        Expr::And(a, b, _) => format!("({} and {})", expr_key(a), expr_key(b)),
        Expr::Or(a, b, _) => format!("({} or {})", expr_key(a), expr_key(b)),
        Expr::Not(a, _) => format!("not {}", expr_key(a)),
        Expr::Always(_) => "always".into(),
        Expr::Compare {
            left, op, right, ..
        } => format!(
            "{} {:?} {}",
            operand_text(left),
            op.node,
            value_key(&right.node)
        ),
        Expr::HasAny {
            left, all, values, ..
        } => format!(
            "{} has {} {:?}",
            operand_text(left),
            if *all { "all" } else { "any" },
            values
                .iter()
                .map(|v| value_key(&v.node))
                .collect::<Vec<_>>()
        ),
        Expr::Matches { left, regex, .. } => format!(
            "{} ~ /{}/{}",
            operand_text(left),
            regex.node.pattern,
            regex.node.case_insensitive
        ),
        Expr::IsSet { left, negated, .. } => format!("{} is set {negated}", operand_text(left)),
        Expr::Flag { left, .. } => operand_text(left),
        Expr::Arrival { test, calendar, .. } => format!("received {test:?} of {}", calendar.node),
    }
}

/// The regex crate's errors span several lines; the first carries the point.
fn first_meaningful_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_owned())
        .unwrap_or_else(|| message.lines().next().unwrap_or("").trim().to_owned())
}

/// Whether `expr` is the bare flag `open` (the case is not finished).
fn is_open_flag(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Flag { left: Operand::Path(path), .. }
            if path.node.len() == 1 && path.node[0].node == "open"
    )
}
