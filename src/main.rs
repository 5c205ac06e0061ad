//! The `complaintd` command line.
fn main() {}
