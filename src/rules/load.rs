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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::diag::render_all;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn paths(loaded: &Loaded) -> Vec<String> {
        loaded
            .sources
            .files()
            .map(|(_, f)| f.path.display().to_string())
            .collect()
    }

    /// The category names of each parsed file, in load order.
    fn categories(loaded: &Loaded) -> Vec<Vec<String>> {
        loaded
            .files
            .iter()
            .map(|f| {
                f.items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Category(c) => Some(c.name.node.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_default_policy_loads_without_problems() {
        let loaded = load_dir(Path::new("rules"));
        assert_eq!(render_all(&loaded.diagnostics, &loaded.sources), "");
        assert_eq!(
            paths(&loaded),
            [
                "rules/00-organisation.rules",
                "rules/10-classify.rules",
                "rules/20-route.rules",
                "rules/30-deadlines.rules",
                "rules/90-tests.rules"
            ]
        );
        assert_eq!(loaded.files.len(), 5);
    }

    #[test]
    fn only_rules_files_directly_in_the_directory_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "20-b.rules", "category b");
        write(root, "10-a.rules", "category a");
        write(root, "notes.txt", "not a policy");
        write(root, ".10-a.rules.swp", "category swap");
        write(root, "examples/x.rules", "category example");
        write(root, "templates/reminder.zh.txt", "text");
        let loaded = load_dir(root);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(categories(&loaded), [vec!["a"], vec!["b"]]);
        assert_eq!(
            paths(&loaded),
            [
                root.join("10-a.rules").display().to_string(),
                root.join("20-b.rules").display().to_string()
            ]
        );
    }

    #[test]
    fn includes_are_relative_loaded_once_and_follow_their_includer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "10-main.rules",
            "include \"shared/common.rules\"\ninclude \"20-other.rules\"\ncategory main",
        );
        write(
            root,
            "20-other.rules",
            "include \"shared/common.rules\"\ncategory other",
        );
        write(
            root,
            "shared/common.rules",
            "include \"../shared/deeper.rules\"\ncategory common",
        );
        write(root, "shared/deeper.rules", "category deeper");
        let loaded = load_dir(root);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(
            categories(&loaded),
            [vec!["main"], vec!["common"], vec!["deeper"], vec!["other"]]
        );
        // Each item's span names the file it came from.
        for (id, file) in loaded.files.iter().enumerate() {
            let Some(Item::Category(c)) = file.items.last() else {
                panic!()
            };
            assert_eq!(c.span.file, id as FileId);
            assert_eq!(
                loaded.sources.snippet(c.span),
                format!("category {}", c.name)
            );
        }
    }

    #[test]
    fn a_missing_include_is_reported_at_its_string() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-main.rules",
            "category a\ninclude \"nope.rules\"\n",
        );
        let loaded = load_dir(dir.path());
        assert_eq!(loaded.files.len(), 1);
        let main = dir.path().join("10-main.rules");
        let missing = dir.path().join("nope.rules");
        assert_eq!(
            loaded.diagnostics[0].render(&loaded.sources),
            format!(
                "error: cannot include `{}`: it does not exist\n \
                 --> {}:2:9\n  \
                 |\n\
                 2 | include \"nope.rules\"\n  \
                 |         ^^^^^^^^^^^^\n",
                missing.display(),
                main.display()
            )
        );
    }

    #[test]
    fn an_include_cycle_is_reported_where_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "10-a.rules", "include \"b.inc\"\ncategory a");
        write(root, "b.inc", "include \"c.inc\"\ncategory b");
        write(root, "c.inc", "category c\ninclude \"10-a.rules\"");
        let loaded = load_dir(root);
        assert_eq!(loaded.diagnostics.len(), 1, "{:?}", loaded.diagnostics);
        let d = &loaded.diagnostics[0];
        assert_eq!(
            d.message,
            format!(
                "include cycle: `{}` includes `{}` includes `{}` includes `{}`",
                root.join("10-a.rules").display(),
                root.join("b.inc").display(),
                root.join("c.inc").display(),
                root.join("10-a.rules").display()
            )
        );
        assert_eq!(loaded.sources.snippet(d.span), "\"10-a.rules\"");
        assert_eq!(loaded.sources.path(d.span.file), root.join("c.inc"));
        // Every file of the cycle is still loaded, once.
        assert_eq!(categories(&loaded), [vec!["a"], vec!["b"], vec!["c"]]);
    }

    #[test]
    fn a_file_including_itself() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-a.rules", "include \"./10-a.rules\"");
        let loaded = load_dir(dir.path());
        assert_eq!(loaded.diagnostics.len(), 1);
        assert!(loaded.diagnostics[0].message.ends_with("includes itself"));
    }

    #[test]
    fn every_file_with_an_error_is_reported_and_the_others_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "10-bad.rules", "category \"oops\"");
        write(root, "20-good.rules", "category fine");
        write(root, "30-bad.rules", "route { otherwise -> }");
        let loaded = load_dir(root);
        assert_eq!(categories(&loaded), [vec!["fine"]]);
        let messages: Vec<(String, &str)> = loaded
            .diagnostics
            .iter()
            .map(|d| {
                (
                    loaded.sources.path(d.span.file).display().to_string(),
                    d.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            messages,
            [
                (
                    root.join("10-bad.rules").display().to_string(),
                    "expected a name, found `\"oops\"`"
                ),
                (
                    root.join("30-bad.rules").display().to_string(),
                    "expected a department, found `}`"
                )
            ]
        );
        assert!(loaded.has_errors());
    }

    #[test]
    fn a_file_that_is_not_utf8_is_reported_at_the_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"category a\ncategory b \"".to_vec();
        bytes.extend_from_slice(&[0xB7, 0xFE]);
        bytes.extend_from_slice(b"\"\n");
        std::fs::write(dir.path().join("10-gbk.rules"), bytes).unwrap();
        let loaded = load_dir(dir.path());
        assert!(loaded.files.is_empty());
        let d = &loaded.diagnostics[0];
        assert_eq!(d.message, "this file is not UTF-8 text");
        assert_eq!((d.span.line, d.span.col), (2, 13));
    }

    #[test]
    fn a_missing_or_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load_dir(dir.path());
        assert_eq!(
            loaded.diagnostics[0].message,
            format!("`{}` holds no policy files", dir.path().display())
        );
        let gone = dir.path().join("gone");
        let loaded = load_dir(&gone);
        assert_eq!(
            loaded.diagnostics[0].message,
            format!(
                "cannot read the policy directory `{}`: it does not exist",
                gone.display()
            )
        );
    }

    #[test]
    fn sources_in_memory_resolve_includes_among_themselves() {
        let mut sources = SourceMap::new();
        sources.add(
            "p/10-main.rules",
            "include \"lib/common.rules\"\ncategory main",
        );
        sources.add(
            "p/20-next.rules",
            "category next\ninclude \"missing.rules\"",
        );
        sources.add(
            "p/lib/common.rules",
            "include \"../10-main.rules\"\ncategory common",
        );
        let loaded = load_sources(sources);
        assert_eq!(
            categories(&loaded),
            [vec!["main"], vec!["common"], vec!["next"]]
        );
        let found: Vec<(&str, &str)> = loaded
            .diagnostics
            .iter()
            .map(|d| (d.message.as_str(), loaded.sources.snippet(d.span)))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "include cycle: `p/10-main.rules` includes `p/lib/common.rules` includes `p/lib/../10-main.rules`",
                    "\"../10-main.rules\""
                ),
                (
                    "cannot include `p/missing.rules`: it does not exist",
                    "\"missing.rules\""
                )
            ]
        );
    }
}
