//! The handler budget watchdog. Each worker publishes a [`Pulse`]: a
//! sequence number it bumps on entering and on leaving a Lua handler (odd =
//! inside). The main thread samples every pulse while it waits for signals;
//! a handler seen inside for longer than the budget gets its worker thread
//! signalled (`SIGUSR1`), and the signal handler stops it through
//! `keystone_lua::interrupt_running_handler` (→ 503).
//!
//! The hot path pays two relaxed stores per request: no lock, no syscall,
//! no clock read.

pub use keystone_lua::Pulse;
use std::time::{Duration, Instant};

/// The signal that interrupts a runaway handler.
pub const BUDGET_SIGNAL: i32 = libc::SIGUSR1;

/// The main thread's view of every pulse.
pub struct Watchdog {
    budget: Duration,
    seen: Vec<(u64, Instant)>,
}

impl Watchdog {
    /// A watchdog for `workers` pulses.
    pub fn new(budget: Duration, workers: usize) -> Watchdog {
        Watchdog {
            budget,
            seen: vec![(0, Instant::now()); workers],
        }
    }

    /// Samples each pulse; signals workers stuck in one handler past the
    /// budget (again every budget interval while they stay stuck).
    pub fn check(&mut self, pulses: &[std::sync::Arc<Pulse>]) {
        let now = Instant::now();
        for (pulse, (last_seq, since)) in pulses.iter().zip(&mut self.seen) {
            let seq = pulse.sequence();
            if seq != *last_seq {
                *last_seq = seq;
                *since = now;
                continue;
            }
            if !seq.is_multiple_of(2) && now.duration_since(*since) >= self.budget {
                let thread = pulse.thread();
                if thread != 0 {
                    crate::sys::signal_thread(thread, BUDGET_SIGNAL);
                }
                *since = now;
            }
        }
    }
}

extern "C" fn on_budget_signal(_signal: libc::c_int) {
    keystone_lua::interrupt_running_handler();
}

/// Installs the budget signal's handler (process-wide, before workers).
pub fn install_signal_handler() {
    crate::sys::install_handler(BUDGET_SIGNAL, on_budget_signal);
}
