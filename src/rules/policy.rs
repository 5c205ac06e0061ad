//! A checked policy: the declarations of all files, grouped and indexed for
//! the evaluator, with regexes compiled and calendars built once at load.

use std::collections::HashMap;

use regex::Regex;

use super::ast::{
    CategoryDecl, ChannelDecl, ClassifyBlock, DeadlineDecl, DepartmentDecl, EscalateBlock,
    FieldDecl, RouteBlock, ScheduleDecl, Span, TemplateDecl, TestDecl,
};
use super::source::SourceMap;
use crate::calendar::Calendar;

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
}

impl Policy {
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
