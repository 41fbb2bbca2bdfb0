//! TLS stage (in progress).
