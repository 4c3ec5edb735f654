//! Pure rendering of specs and decisions to argv and shell text.
