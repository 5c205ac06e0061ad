//! The policy language: parsing, checking and pure evaluation of rule files.
//!
//! Data flows `source` → `parse` (AST with spans) → `check` (all diagnostics
//! at once, or a [`Policy`]) → `eval` (a case and an input → actions).
//! Nothing in this module does network, store or clock I/O; `load` reads
//! rule files from disk and that is all.

pub mod ast;
pub mod check;
pub mod diag;
pub mod eval;
pub mod explain;
pub mod load;
pub mod parse;
pub mod policy;
pub mod source;
pub mod testing;

pub use diag::{Diagnostic, Level};
pub use policy::{Limits, Policy};
pub use source::SourceMap;
