//! The async embedding suite (`runtime/tests/async_embedding`) against
//! `roost_smol`: the same hooks, policy and in-process API as on tokio.

mod rt {
    use roost_core::broker::Message;
    pub use roost_smol::{ServerHandle, start};

    /// What `ServerHandle::subscribe` returns.
    pub type Receiver = smol::channel::Receiver<Message>;

    /// The next message; `None` once the subscription has ended.
    pub async fn recv(rx: &mut Receiver) -> Option<Message> {
        rx.recv().await.ok()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(rx: &Receiver) -> bool {
        rx.is_empty()
    }
}

#[path = "../../runtime/tests/async_embedding/mod.rs"]
mod suite;
