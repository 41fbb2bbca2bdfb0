//! The `[http]` endpoint of the `roost-mio` binary: /metrics scraped with a
//! Prometheus text parser while real clients connect and publish, /health,
//! /ready and the status page (`roost_conformance::observability`, shared
//! by every runtime).

roost_conformance::observability_tests!(env!("CARGO_BIN_EXE_roost-mio"));
