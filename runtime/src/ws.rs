//! WebSocket stage (in progress).
