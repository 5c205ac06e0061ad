//! A checked policy: the declarations of all files, grouped and indexed for
//! the evaluator, with regexes compiled and calendars built once at load.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use regex::Regex;

use super::ast::{
    CategoryDecl, ChannelDecl, ClassifyBlock, DeadlineDecl, DepartmentDecl, EscalateBlock,
    FieldDecl, FileId, RouteBlock, ScheduleDecl, Span, TemplateDecl, TestDecl,
};
use super::check::{RESPONSIBILITY_VALUES, VALIDITY_VALUES};
use super::source::SourceMap;
use crate::calendar::Calendar;
use crate::case::CaseState;

/// Limits on the work one evaluation may do; settings, not constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest compiled regex, in bytes (`regex::RegexBuilder::size_limit`).
    pub max_regex_size: usize,
    /// Longest text a condition looks at; longer mail bodies are cut there.
    pub max_text_len: usize,
    /// Most rules that may fire on one input before evaluation stops.
    pub max_fired_rules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_regex_size: 1 << 20,
            max_text_len: 256 * 1024,
            max_fired_rules: 1000,
        }
    }
}

/// A policy that passed the checker. Built only by `check::check`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub sources: SourceMap,
    /// Severity levels, lowest first; a level's rank is its index.
    pub severities: Vec<String>,
    pub categories: Vec<CategoryDecl>,
    pub fields: Vec<FieldDecl>,
    pub channels: Vec<ChannelDecl>,
    /// Template languages; the first is the default.
    pub languages: Vec<String>,
    pub calendars: HashMap<String, Calendar>,
    /// The calendar used where a deadline or schedule names none (the first declared).
    pub default_calendar: Option<String>,
    pub departments: Vec<DepartmentDecl>,
    pub templates: Vec<TemplateDecl>,
    /// Classification blocks in file order.
    pub classify: Vec<ClassifyBlock>,
    pub routes: RouteBlock,
    pub deadlines: Vec<DeadlineDecl>,
    pub escalations: Vec<EscalateBlock>,
    pub schedules: Vec<ScheduleDecl>,
    /// Each schedule's parsed crontab, by schedule name.
    pub crons: HashMap<String, cron::Schedule>,
    pub tests: Vec<TestDecl>,
    /// Every regex literal of the policy, compiled, keyed by the literal's span.
    pub regexes: HashMap<Span, Regex>,
    pub limits: Limits,
    /// What the evaluator would otherwise work out on every evaluation.
    pub prepared: Prepared,
}

/// Names and texts derived from a policy once, when it is checked, so that
/// an evaluation borrows them instead of building them per case.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// `route #N` or the route's own name, one per route in order.
    pub route_names: Vec<String>,
    /// `deadline NAME`, one per deadline in order.
    pub deadline_rules: Vec<String>,
    /// `pause NAME`, one per deadline in order.
    pub pause_rules: Vec<String>,
    /// Every name the policy or the language declares (severities,
    /// categories, channels, departments, languages, states, responsibility
    /// and validity values).
    pub declared_names: HashSet<String, BuildHasherDefault<ShortKeyHasher>>,
    /// Each source file's path as shown in a `file:line:col` location.
    pub file_paths: Vec<String>,
    /// The compiled regexes of [`Policy::regexes`] by file and byte range,
    /// with a hash that costs a few multiplications, not SipHash's rounds.
    pub regexes: HashMap<(FileId, usize, usize), Regex, BuildHasherDefault<ShortKeyHasher>>,
    /// Verdicts one new complaint produces at most, short of timers and pauses.
    pub trace_capacity: usize,
}

impl Prepared {
    /// Derives the names and texts of `policy` (its own `prepared` is ignored).
    pub fn of(policy: &Policy) -> Prepared {
        let route_names = policy
            .routes
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                route
                    .name
                    .as_ref()
                    .map_or_else(|| format!("route #{}", index + 1), |n| n.node.clone())
            })
            .collect();
        let deadline_rules = policy
            .deadlines
            .iter()
            .map(|d| format!("deadline {}", d.name.node))
            .collect();
        let pause_rules = policy
            .deadlines
            .iter()
            .map(|d| format!("pause {}", d.name.node))
            .collect();
        let fixed = CaseState::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(RESPONSIBILITY_VALUES.iter().copied())
            .chain(VALIDITY_VALUES.iter().copied());
        let declared_names = policy
            .severities
            .iter()
            .map(String::as_str)
            .chain(policy.categories.iter().map(|c| c.name.node.as_str()))
            .chain(policy.channels.iter().map(|c| c.name.node.as_str()))
            .chain(policy.departments.iter().map(|d| d.name.node.as_str()))
            .chain(policy.languages.iter().map(String::as_str))
            .chain(fixed)
            .map(str::to_owned)
            .collect();
        let file_paths = policy
            .sources
            .files()
            .map(|(_, file)| file.path.to_string_lossy().into_owned())
            .collect();
        let regexes = policy
            .regexes
            .iter()
            .map(|(span, regex)| (span_key(*span), regex.clone()))
            .collect();
        let rules: usize = policy.classify.iter().map(|b| b.rules.len()).sum();
        let deadlines: usize = policy.deadlines.iter().map(|d| d.durations.len() + 1).sum();
        Prepared {
            route_names,
            deadline_rules,
            pause_rules,
            declared_names,
            file_paths,
            regexes,
            trace_capacity: rules + policy.routes.routes.len() + 1 + deadlines,
        }
    }
}

impl Policy {
    /// Fills [`Policy::prepared`] from the rest of the policy.
    pub fn prepare(mut self) -> Policy {
        self.prepared = Prepared::of(&self);
        self
    }

    /// `name` as the policy or the language declares it, if it does.
    pub fn declared_name(&self, name: &str) -> Option<&str> {
        self.prepared.declared_names.get(name).map(String::as_str)
    }

    /// The compiled regex of the literal at `span`.
    pub fn regex(&self, span: Span) -> Option<&Regex> {
        match self.prepared.regexes.get(&span_key(span)) {
            Some(regex) => Some(regex),
            // Not prepared: the checker's map has every literal.
            None => self.regexes.get(&span),
        }
    }

    /// `file:line:col` of a span, when it points into the policy's sources.
    pub fn location(&self, span: Span) -> Option<String> {
        if span.line == 0 {
            return None;
        }
        let path = match self.prepared.file_paths.get(span.file as usize) {
            Some(path) => std::borrow::Cow::Borrowed(path.as_str()),
            // Not prepared (or a file added since): read the source map.
            None => self
                .sources
                .files()
                .nth(span.file as usize)?
                .1
                .path
                .to_string_lossy(),
        };
        // Built by hand: this runs for every action, and `format!` is slow.
        let mut location = String::with_capacity(path.len() + 2 * 10 + 2);
        location.push_str(&path);
        location.push(':');
        push_decimal(&mut location, span.line);
        location.push(':');
        push_decimal(&mut location, span.col);
        Some(location)
    }

    /// Rank of a severity level (0 = lowest), if declared.
    pub fn severity_rank(&self, level: &str) -> Option<usize> {
        self.severities.iter().position(|s| s == level)
    }

    pub fn department(&self, name: &str) -> Option<&DepartmentDecl> {
        self.departments.iter().find(|d| d.name.node == name)
    }

    pub fn deadline(&self, name: &str) -> Option<&DeadlineDecl> {
        self.deadlines.iter().find(|d| d.name.node == name)
    }

    pub fn escalation(&self, deadline: &str) -> Option<&EscalateBlock> {
        self.escalations
            .iter()
            .find(|e| e.deadline.node == deadline)
    }

    pub fn calendar(&self, name: &str) -> Option<&Calendar> {
        self.calendars.get(name)
    }

    pub fn field(&self, name: &str) -> Option<&FieldDecl> {
        self.fields.iter().find(|f| f.name.node == name)
    }
}

/// What identifies a literal's span: its file and byte range.
fn span_key(span: Span) -> (FileId, usize, usize) {
    (span.file, span.start, span.end)
}

/// The multiply-rotate hash of rustc (`FxHasher`), for keys of a few words
/// (names, spans) that come from the policy, not from an adversary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShortKeyHasher(u64);

impl ShortKeyHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for ShortKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut rest = n;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in digits[..len].iter().rev() {
        out.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_like_display() {
        for n in [0, 7, 10, 99, 1_000, 65_536, u32::MAX] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
