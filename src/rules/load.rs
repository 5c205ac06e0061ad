//! Loading a policy directory: files in name order, includes, parse and check.
