//! Running the tests written in rule files (`complaintd rules test`).
