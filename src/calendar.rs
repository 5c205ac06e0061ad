//! Business calendars: working hours, holidays, make-up days and business-time arithmetic.

use crate::rules::ast::CalendarDecl;
use crate::rules::Diagnostic;

/// A business calendar (filled in by the calendar work).
#[derive(Debug, Clone)]
pub struct Calendar {}

impl Calendar {
    /// Builds a calendar from its declaration (placeholder until the calendar lands).
    pub fn from_decl(_decl: &CalendarDecl) -> Result<Calendar, Vec<Diagnostic>> {
        Ok(Calendar {})
    }
}
