//! Pure container-lifetime decisions: probe observations in, a decision out.
