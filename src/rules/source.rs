//! The policy's source files, kept so that diagnostics can quote them.

use std::path::{Path, PathBuf};

use super::ast::{FileId, Span};

/// One loaded source file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as shown in diagnostics (relative to where the user pointed us).
    pub path: PathBuf,
    pub text: String,
}

/// All files of a policy, addressed by [`FileId`].
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            path: path.into(),
            text: text.into(),
        });
        (self.files.len() - 1) as FileId
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id as usize]
    }

    pub fn path(&self, id: FileId) -> &Path {
        &self.files[id as usize].path
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (i as FileId, f))
    }

    /// The text a span covers.
    pub fn snippet(&self, span: Span) -> &str {
        let text = &self.get(span.file).text;
        text.get(span.start..span.end).unwrap_or("")
    }

    /// The full source line (without its newline) on which `span` starts.
    pub fn line_of(&self, span: Span) -> &str {
        let text = &self.get(span.file).text;
        let start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        text[start..end].trim_end_matches('\r')
    }
}

/// Computes line and column (1-based; column counted in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() as u32 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() as u32 + 1;
    (line, col)
}

/// Builds a span for `start..end` in file `file` whose text is `text`.
pub fn span_at(file: FileId, text: &str, start: usize, end: usize) -> Span {
    let (line, col) = line_col(text, start);
    Span {
        file,
        start,
        end,
        line,
        col,
    }
}
