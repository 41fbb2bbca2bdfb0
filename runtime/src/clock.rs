//! The one place a runtime turns the machine's clock into the engine's
//! time: the driver and the engine take `now` as a parameter and never read
//! a clock themselves.

use roost_core::broker::Instant;
use std::time::Duration;

/// Milliseconds since the runtime started, as the engine counts them.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Clock {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// The engine's time now.
    pub fn now(&self) -> Instant {
        let ms = self.epoch.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The machine's instant for an engine deadline (to arm a timer).
    pub fn deadline(&self, at: Instant) -> std::time::Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }
}
