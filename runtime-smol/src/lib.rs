//! The roost broker driven by `smol`.
//!
//! Not built yet: this crate will be a thin loop around `roost-runtime`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
