//! The async embedding suite (`runtime/tests/async_embedding`) against
//! `roost_tokio`.

mod rt {
    use roost_core::broker::Message;
    pub use roost_tokio::{ServerHandle, start};

    /// What `ServerHandle::subscribe` returns.
    pub type Receiver = tokio::sync::mpsc::Receiver<Message>;

    /// The next message; `None` once the subscription has ended.
    pub async fn recv(rx: &mut Receiver) -> Option<Message> {
        rx.recv().await
    }

    /// Whether nothing is waiting.
    pub fn is_empty(rx: &Receiver) -> bool {
        rx.is_empty()
    }
}

#[path = "../../runtime/tests/async_embedding/mod.rs"]
mod suite;
