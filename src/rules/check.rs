//! The checker: resolves names and types across all files, reports every problem at once.
