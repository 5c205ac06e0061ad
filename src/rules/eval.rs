//! Pure evaluation: a checked policy, a case, an input and an instant → actions.
