//! Wake-up slots for runtimes whose connections are tasks (tokio, smol).
//!
//! The driver says [`crate::driver::Event::Wake`] when a connection has
//! output or a new [`crate::driver::Interest`]; the runtime must get the
//! connection's task to run. Each connection has one slot here: a flag and
//! the waker of its task, which is the only one that ever waits on it.
//!
//! It replaces a `Notify` per connection (tokio's, or smol's bounded
//! channel of one), which cost an allocation per connection (about 1 KB on
//! smol: the channel and its event listeners) and a larger future in every
//! connection's task. A slot is 24 bytes in one table.
//!
//! ```text
//!   Event::Wake(id) ──► Wakeups::wake(id): flag set, stored waker woken
//!   task poll starts ──► Wakeups::running(id): the waker is dropped, so a
//!                        wake-up caused by the task itself is only a flag
//!   task about to wait ──► Wakeups::take(id, cx): flag taken (run again)
//!                          or the waker kept for the next wake-up
//! ```

use roost_core::broker::ConnId;
use std::collections::HashMap;
use std::task::{Context, Waker};

/// One wake-up slot per connection.
#[derive(Default)]
pub struct Wakeups {
    slots: HashMap<ConnId, Slot>,
}

#[derive(Default)]
struct Slot {
    woken: bool,
    waker: Option<Waker>,
}

impl Wakeups {
    /// An empty table.
    pub fn new() -> Wakeups {
        Wakeups::default()
    }

    /// Gives `id` a slot (when its task is spawned).
    pub fn insert(&mut self, id: ConnId) {
        self.slots.insert(id, Slot::default());
    }

    /// Removes `id`'s slot (when its task ends).
    pub fn remove(&mut self, id: ConnId) {
        self.slots.remove(&id);
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// [`crate::driver::Event::Wake`] for `id`: sets its flag and wakes its
    /// task if it is waiting. Nothing if `id` has no slot.
    pub fn wake(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.woken = true;
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Call when `id`'s task starts a poll: until it waits again, a wake-up
    /// only sets the flag (the task looks at it before it waits), instead
    /// of scheduling a second, useless poll of the task that is running.
    pub fn running(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.waker = None;
        }
    }

    /// Whether `id` was woken since the last call; if not, `cx`'s waker is
    /// kept for the next wake-up. `None` if the slot is gone.
    pub fn take(&mut self, id: ConnId, cx: &Context<'_>) -> Option<bool> {
        let slot = self.slots.get_mut(&id)?;
        if std::mem::take(&mut slot.woken) {
            return Some(true);
        }
        match &mut slot.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => slot.waker = Some(cx.waker().clone()),
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn id(n: u64) -> ConnId {
        // ConnIds come from the engine; any two distinct ones will do.
        let mut engine = roost_core::broker::Broker::new(
            roost_core::broker::Config::default(),
            roost_core::broker::Instant::from_millis(0),
        );
        let mut last = None;
        for _ in 0..=n {
            last = Some(engine.handle_open(
                roost_core::broker::Instant::from_millis(0),
                roost_core::broker::ConnInfo::default(),
            ));
        }
        last.expect("opened")
    }

    #[test]
    fn a_wake_before_the_wait_is_remembered_and_taken_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut w = Wakeups::new();
        let a = id(0);
        w.insert(a);
        w.wake(a);
        assert_eq!(w.take(a, &cx), Some(true));
        assert_eq!(w.take(a, &cx), Some(false));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_waiting_task_is_woken_but_not_while_it_runs() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut w = Wakeups::new();
        let a = id(0);
        w.insert(a);
        assert_eq!(w.take(a, &cx), Some(false));
        w.wake(a);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Polled again: a wake-up it causes itself is only the flag.
        w.running(a);
        w.wake(a);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(w.take(a, &cx), Some(true));
    }

    #[test]
    fn a_removed_slot_is_gone_and_unknown_ids_are_ignored() {
        let waker = Waker::noop();
        let cx = Context::from_waker(waker);
        let mut w = Wakeups::new();
        let a = id(0);
        w.insert(a);
        w.remove(a);
        w.wake(a);
        assert_eq!(w.take(a, &cx), None);
        assert!(w.is_empty());
    }
}
