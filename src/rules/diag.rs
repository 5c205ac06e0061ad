//! Diagnostics: a location plus a kind, rendered the way `just` and `rustc` do.
//!
//! ```text
//! error: unknown department `qualty`
//!   --> rules/20-route.rules:3:38
//!    |
//!  3 |     when category == product -> qualty
//!    |                                 ^^^^^^
//!    = help: did you mean `quality`?
//! ```

use std::fmt::{self, Write as _};

use unicode_width::UnicodeWidthStr;

use super::ast::Span;
use super::source::SourceMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "error",
            Level::Warning => "warning",
        })
    }
}

/// One problem found in a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub level: Level,
    pub message: String,
    pub span: Span,
    /// Extra lines shown as `= help: …`.
    pub help: Option<String>,
    /// Extra lines shown as `= note: …`.
    pub note: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            level: Level::Error,
            message: message.into(),
            span,
            help: None,
            note: None,
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            level: Level::Warning,
            message: message.into(),
            span,
            help: None,
            note: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }

    /// Renders the diagnostic with the quoted source line and carets.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let path = sources.path(self.span.file).display().to_string();
        let line_text = sources.line_of(self.span);
        let line_no = self.span.line.to_string();
        let gutter = " ".repeat(line_no.len());
        // Columns are characters; carets are placed by display width so that
        // Chinese text (two columns a character) lines up in a terminal.
        let prefix: String = line_text
            .chars()
            .take(self.span.col.saturating_sub(1) as usize)
            .collect();
        let snippet = sources.snippet(self.span);
        let first_line_of_snippet = snippet.split('\n').next().unwrap_or("");
        let caret_count = UnicodeWidthStr::width(first_line_of_snippet).max(1);
        let _ = writeln!(out, "{}: {}", self.level, self.message);
        let _ = writeln!(
            out,
            "{gutter}--> {path}:{}:{}",
            self.span.line, self.span.col
        );
        let _ = writeln!(out, "{gutter} |");
        let _ = writeln!(out, "{line_no} | {line_text}");
        let _ = writeln!(
            out,
            "{gutter} | {}{}",
            " ".repeat(UnicodeWidthStr::width(prefix.as_str())),
            "^".repeat(caret_count)
        );
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{gutter} = help: {help}");
        }
        if let Some(note) = &self.note {
            let _ = writeln!(out, "{gutter} = note: {note}");
        }
        out
    }
}

/// Renders all diagnostics, errors first in source order, then a summary line.
pub fn render_all(diagnostics: &[Diagnostic], sources: &SourceMap) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.span.file, d.span.start, d.level));
    let mut out = String::new();
    for d in &sorted {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    if errors > 0 || warnings > 0 {
        let _ = writeln!(
            out,
            "{}: {} error{}, {} warning{}",
            if errors > 0 { "failed" } else { "ok" },
            errors,
            if errors == 1 { "" } else { "s" },
            warnings,
            if warnings == 1 { "" } else { "s" }
        );
    }
    out
}

/// The closest candidate to `name` by edit distance, if it is close enough
/// to be a likely typo (the rule `just` uses: distance below a third of the length, at least 1).
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::source::span_at;

    #[test]
    fn renders_location_line_and_carets() {
        let mut sources = SourceMap::new();
        let text = "route {\n    otherwise -> servce\n}\n";
        let file = sources.add("rules/20-route.rules", text);
        let start = text.find("servce").unwrap();
        let span = span_at(file, text, start, start + "servce".len());
        let d = Diagnostic::error(span, "unknown department `servce`")
            .with_help("did you mean `service`?");
        assert_eq!(
            d.render(&sources),
            "error: unknown department `servce`\n \
             --> rules/20-route.rules:2:18\n  \
             |\n\
             2 |     otherwise -> servce\n  \
             |                  ^^^^^^\n  \
             = help: did you mean `service`?\n"
        );
    }

    #[test]
    fn carets_follow_display_width_of_chinese_text() {
        let mut sources = SourceMap::new();
        let text = "category 账单 \"收费\"\n";
        let file = sources.add("a.rules", text);
        let start = text.find("\"收费\"").unwrap();
        let span = span_at(file, text, start, start + "\"收费\"".len());
        let rendered = Diagnostic::error(span, "x").render(&sources);
        assert!(
            rendered.contains("\n  |               ^^^^^^\n"),
            "{rendered}"
        );
    }

    #[test]
    fn suggests_near_names_only() {
        let names = ["service", "quality", "office"];
        assert_eq!(did_you_mean("servce", names), Some("service"));
        assert_eq!(did_you_mean("qualty", names), Some("quality"));
        assert_eq!(did_you_mean("billing", names), None);
    }
}
