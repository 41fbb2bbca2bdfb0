//! What every roost runtime shares, whatever drives its sockets.
//!
//! # Owned here
//!
//! * [`config`]: the broker configuration (TOML file + command-line flags).
//! * [`passwd`]: password files (`user:argon2-hash` lines) and the
//!   `roost passwd` command.
//! * [`acl`]: Mosquitto-style ACL files and topic-matching for them.
//! * [`tls`]: TLS as a sans-IO byte stage on `rustls`.
//! * [`ws`]: WebSocket as a sans-IO byte stage on `tungstenite`.
//! * [`driver`]: the sans-IO driver every runtime's loop calls: it feeds
//!   the engine, carries out its actions, keeps each connection's stages and
//!   output queue, and owns every bound and policy that is the same on all
//!   runtimes (password-check queue, store batching, linger, shutdown).
//! * [`hooks`]: the embedding program's asynchronous hooks, for every
//!   runtime.
//! * [`pool`]: the worker threads that run the driver's blocking jobs.
//! * [`clock`]: the runtime's clock, as the engine's time.
//! * [`net`]: listening sockets.
//! * [`cli`]: what every binary does before it serves.
//! * [`service`]: what it does as a service: pid file, systemd
//!   notifications, the configuration file re-read on SIGHUP.
//!
//! # Stages
//!
//! A connection is a stack of byte stages; each takes bytes from below and
//! gives bytes upward, and the reverse, without touching a socket:
//!
//! ```text
//!  socket ──ciphertext──▶ TlsStage ──plaintext──▶ WsStage ──MQTT bytes──▶ engine
//!  socket ◀─────────────  TlsStage ◀────────────  WsStage ◀─────────────  engine
//! ```
//!
//! `tcp` uses no stage, `tls` only [`tls::TlsStage`], `ws` only
//! [`ws::WsStage`], `wss` both. A runtime reads from the socket, feeds the
//! lowest stage, passes what comes out upward, and after the engine has
//! produced output, writes it downward and flushes what the lowest stage has
//! to the socket. Every stage bounds what a peer can make it buffer; see each
//! module's notes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acl;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod driver;
pub mod embed;
pub mod hooks;
pub mod net;
pub mod passwd;
pub mod pool;
pub mod service;
pub mod tls;
pub mod ws;
