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

/// CPU time the calling thread has used (user and system), from
/// `/proc/thread-self/stat`; `None` where that file is missing (not Linux).
///
/// The engine runs on one thread in every runtime, so this read on that
/// thread is the engine loop's busy time: the time it was not waiting for
/// sockets or timers. The kernel counts it in clock ticks (10 ms on most
/// Linux builds).
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after its last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture roost builds for.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::thread_cpu_time;

    /// Spinning on this thread moves its CPU time; a thread that only
    /// sleeps does not move it by as much.
    #[test]
    fn thread_cpu_time_counts_this_threads_work() {
        #[cfg(not(target_os = "linux"))]
        if thread_cpu_time().is_none() {
            return;
        }
        let before = thread_cpu_time().expect("/proc/thread-self/stat on Linux");
        // Spin until the kernel has counted 100 ms of this thread's work
        // (wall time is no measure on a loaded machine), for at most 20 s.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut spun = std::time::Duration::ZERO;
        while spun < std::time::Duration::from_millis(100)
            && start.elapsed() < std::time::Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            spun = thread_cpu_time().expect("readable") - before;
        }
        assert!(spun >= std::time::Duration::from_millis(100), "{spun:?}");
        let sleeper = std::thread::spawn(|| {
            let before = thread_cpu_time().expect("readable");
            std::thread::sleep(std::time::Duration::from_millis(300));
            thread_cpu_time().expect("readable") - before
        });
        let slept = sleeper.join().expect("no panic");
        assert!(slept < std::time::Duration::from_millis(50), "{slept:?}");
    }
}
