//! fuzz bodies
