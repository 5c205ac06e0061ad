//! Parsing rule files: pest grammar (`grammar/rules.pest`) → typed AST with spans.
