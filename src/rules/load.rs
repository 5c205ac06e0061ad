//! Loading a policy: the `*.rules` files of a directory in name order plus the files they include, parsed.
//!
//! Loading never stops at the first problem: every file is parsed and every
//! file's error reported, so an administrator sees all of them at once.
//! Checking names and types across files is the checker's work, not this module's.

use std::collections::HashSet;
use std::hash::Hash;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::ast::{self, FileId, Item, Span, Spanned};
use super::diag::Diagnostic;
use super::parse::parse_file;
use super::source::SourceMap;

/// The result of loading: every file read, the files that parsed, and the problems found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every file read, including those that failed to parse.
    pub sources: SourceMap,
    /// The files that parsed, in load order: the directory's files in name
    /// order, each followed at once by the files it includes (and theirs).
    /// Spans name each item's [`FileId`] in `sources`.
    pub files: Vec<ast::File>,
    /// Read and parse errors, at most one parse error per file.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads the `*.rules` files directly in `dir` (not in subdirectories), in
/// name order, and the files they include. Paths in the source map are `dir`
/// joined with the file name, as given: `rules/10-classify.rules`.
pub fn load_dir(dir: &Path) -> Loaded {
    let mut loader = Loader::new(Disk, SourceMap::new());
    match policy_files(dir) {
        Ok(paths) if paths.is_empty() => {
            let id = loader.sources.add(dir, "");
            loader.diagnostics.push(
                Diagnostic::error(
                    empty_span(id),
                    format!("`{}` holds no policy files", dir.display()),
                )
                .with_help("policy files end in `.rules`, e.g. `10-classify.rules`"),
            );
        }
        Ok(paths) => {
            for path in paths {
                loader.load(path, None);
            }
        }
        Err(error) => {
            let id = loader.sources.add(dir, "");
            loader.diagnostics.push(Diagnostic::error(
                empty_span(id),
                format!(
                    "cannot read the policy directory `{}`: {}",
                    dir.display(),
                    io_reason(&error)
                ),
            ));
        }
    }
    loader.finish()
}

/// Parses policy text held in memory (tests, benches, `simulate`): every
/// file of `sources` in its order, as if they were a directory's files.
/// An `include` must name another file of `sources` (relative to the
/// including file's path); it is then loaded right after the includer.
pub fn load_sources(sources: SourceMap) -> Loaded {
    let paths: Vec<PathBuf> = sources.files().map(|(_, f)| f.path.clone()).collect();
    let mut loader = Loader::new(Memory, sources);
    for path in paths {
        loader.load(path, None);
    }
    loader.finish()
}

/// The `*.rules` files directly in `dir`, sorted by name; hidden files
/// (editor backups such as `.10-classify.rules.swp`) are skipped.
fn policy_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = dir.join(&name);
        let visible = !name.to_string_lossy().starts_with('.');
        let is_rules = Path::new(&name).extension().is_some_and(|e| e == "rules");
        if visible && is_rules && path.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

fn empty_span(file: FileId) -> Span {
    Span {
        file,
        start: 0,
        end: 0,
        line: 1,
        col: 1,
    }
}

/// An I/O error in plain words.
fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "it does not exist".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    }
}

/// Where policy text comes from: the file system, or a [`SourceMap`] in memory.
trait Backend {
    /// What makes two paths the same file (a canonical path, a file id).
    type Key: Clone + Eq + Hash;

    /// The identity of the file at `path`, or why there is none.
    fn key(&self, sources: &SourceMap, path: &Path) -> Result<Self::Key, String>;

    /// Reads the file and returns its id in `sources`; a file that was read
    /// but is not text is added all the same, with the position of the problem.
    fn open(
        &self,
        sources: &mut SourceMap,
        key: &Self::Key,
        path: &Path,
    ) -> Result<FileId, (String, Option<(FileId, usize)>)>;
}

struct Disk;

impl Backend for Disk {
    type Key = PathBuf;

    fn key(&self, _sources: &SourceMap, path: &Path) -> Result<PathBuf, String> {
        let canonical = std::fs::canonicalize(path).map_err(|e| io_reason(&e))?;
        if canonical.is_dir() {
            return Err("it is a directory".to_owned());
        }
        Ok(canonical)
    }

    fn open(
        &self,
        sources: &mut SourceMap,
        key: &PathBuf,
        path: &Path,
    ) -> Result<FileId, (String, Option<(FileId, usize)>)> {
        let bytes = std::fs::read(key).map_err(|e| (io_reason(&e), None))?;
        match String::from_utf8(bytes) {
            Ok(text) => Ok(sources.add(path, text)),
            Err(error) => {
                let valid = error.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
                // The lossy text is the same as the original up to `valid`.
                let id = sources.add(path, text);
                Err(("this file is not UTF-8 text".to_owned(), Some((id, valid))))
            }
        }
    }
}

struct Memory;

impl Backend for Memory {
    type Key = FileId;

    fn key(&self, sources: &SourceMap, path: &Path) -> Result<FileId, String> {
        let wanted = normalize(path);
        sources
            .files()
            .find(|(_, f)| normalize(&f.path) == wanted)
            .map(|(id, _)| id)
            .ok_or_else(|| "it does not exist".to_owned())
    }

    fn open(
        &self,
        _sources: &mut SourceMap,
        key: &FileId,
        _path: &Path,
    ) -> Result<FileId, (String, Option<(FileId, usize)>)> {
        Ok(*key)
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

struct Loader<B: Backend> {
    backend: B,
    sources: SourceMap,
    files: Vec<ast::File>,
    diagnostics: Vec<Diagnostic>,
    /// Files loaded or being loaded: each is loaded once.
    seen: HashSet<B::Key>,
    /// The chain of includes being followed, to recognise a cycle.
    stack: Vec<(B::Key, PathBuf)>,
}

impl<B: Backend> Loader<B> {
    fn new(backend: B, sources: SourceMap) -> Self {
        Loader {
            backend,
            sources,
            files: Vec::new(),
            diagnostics: Vec::new(),
            seen: HashSet::new(),
            stack: Vec::new(),
        }
    }

    fn finish(self) -> Loaded {
        Loaded {
            sources: self.sources,
            files: self.files,
            diagnostics: self.diagnostics,
        }
    }

    /// Loads `path` and, depth first, what it includes. `site` is the
    /// `include "…"` string that asked for it (none for a directory's file).
    fn load(&mut self, path: PathBuf, site: Option<&Spanned<String>>) {
        let key = match self.backend.key(&self.sources, &path) {
            Ok(key) => key,
            Err(reason) => {
                self.report_unreadable(&path, site, &reason);
                return;
            }
        };
        if let Some(first) = self.stack.iter().position(|(k, _)| *k == key) {
            if let Some(site) = site {
                self.report_cycle(first, &path, site);
            }
            return;
        }
        if !self.seen.insert(key.clone()) {
            return;
        }
        let id = match self.backend.open(&mut self.sources, &key, &path) {
            Ok(id) => id,
            Err((reason, Some((id, offset)))) => {
                let text = &self.sources.get(id).text;
                let span = super::source::span_at(id, text, offset, offset);
                self.diagnostics.push(
                    Diagnostic::error(span, reason).with_help(
                        "save the file as UTF-8 (most editors offer it under “Save as”)",
                    ),
                );
                return;
            }
            Err((reason, None)) => {
                self.report_unreadable(&path, site, &reason);
                return;
            }
        };
        let parsed = parse_file(id, &self.sources.get(id).text);
        let file = match parsed {
            Ok(file) => file,
            Err(diagnostic) => {
                self.diagnostics.push(diagnostic);
                return;
            }
        };
        let includes: Vec<Spanned<String>> = file
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Include(target) => Some(target.clone()),
                _ => None,
            })
            .collect();
        self.files.push(file);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.stack.push((key, path));
        for include in &includes {
            self.load(base.join(&include.node), Some(include));
        }
        self.stack.pop();
    }

    fn report_unreadable(&mut self, path: &Path, site: Option<&Spanned<String>>, reason: &str) {
        let span = match site {
            Some(site) => site.span,
            None => {
                let id = self.sources.add(path, "");
                empty_span(id)
            }
        };
        let what = if site.is_some() {
            "cannot include"
        } else {
            "cannot read"
        };
        self.diagnostics.push(Diagnostic::error(
            span,
            format!("{what} `{}`: {reason}", path.display()),
        ));
    }

    fn report_cycle(&mut self, first: usize, path: &Path, site: &Spanned<String>) {
        let mut chain: Vec<String> = self.stack[first..]
            .iter()
            .map(|(_, p)| format!("`{}`", p.display()))
            .collect();
        chain.push(format!("`{}`", path.display()));
        let message = if chain.len() == 2 {
            format!("{} includes itself", chain[0])
        } else {
            format!("include cycle: {}", chain.join(" includes "))
        };
        self.diagnostics.push(
            Diagnostic::error(site.span, message)
                .with_help("a file is loaded once; remove one of these includes"),
        );
    }
}
