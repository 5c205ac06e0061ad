//! Business calendars: working hours, holidays, make-up days and business-time arithmetic.

/// A business calendar (filled in by the calendar work).
#[derive(Debug, Clone)]
pub struct Calendar {}
