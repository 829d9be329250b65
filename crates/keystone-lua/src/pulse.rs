//! A worker's heartbeat for the handler budget: a sequence number the
//! worker bumps on entering and on leaving Lua (odd = inside), and the
//! worker thread to signal when a handler stays inside past its budget.
//! The main thread's watchdog samples it; the hot path pays two relaxed
//! stores per call into Lua: no lock, no syscall, no clock read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One worker's heartbeat.
#[derive(Debug, Default)]
pub struct Pulse {
    handler_seq: AtomicU64,
    thread: AtomicU64,
}

impl Pulse {
    /// Records the worker's thread (an opaque id the watchdog signals).
    pub fn set_thread(&self, thread: u64) {
        self.thread.store(thread, Ordering::Release);
    }

    /// The worker's thread, 0 before it registered.
    pub fn thread(&self) -> u64 {
        self.thread.load(Ordering::Acquire)
    }

    /// The worker enters Lua. Single writer: load + store, no RMW.
    pub fn enter_handler(&self) {
        let seq = self.handler_seq.load(Ordering::Relaxed);
        debug_assert!(seq.is_multiple_of(2), "entered Lua twice");
        self.handler_seq.store(seq + 1, Ordering::Relaxed);
    }

    /// The worker left Lua.
    pub fn leave_handler(&self) {
        let seq = self.handler_seq.load(Ordering::Relaxed);
        debug_assert!(!seq.is_multiple_of(2), "left Lua it never entered");
        self.handler_seq.store(seq + 1, Ordering::Relaxed);
    }

    /// The sequence number: odd while the worker runs Lua.
    pub fn sequence(&self) -> u64 {
        self.handler_seq.load(Ordering::Relaxed)
    }
}

/// The main thread's view of every worker's pulse: which worker has been
/// inside one handler for longer than the budget. It decides; the caller
/// interrupts (the server signals the worker's thread, whose handler calls
/// [`crate::interrupt_running_handler`]).
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

    /// Samples each pulse at `now`; hands `interrupt` the thread of each
    /// worker stuck in one handler past the budget (again every budget
    /// interval while it stays stuck).
    pub fn check(&mut self, pulses: &[Arc<Pulse>], now: Instant, mut interrupt: impl FnMut(u64)) {
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
                    interrupt(thread);
                }
                *since = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_handler_running_past_the_budget_is_interrupted() {
        let budget = Duration::from_millis(100);
        let pulses = [Arc::new(Pulse::default()), Arc::new(Pulse::default())];
        pulses[0].set_thread(7);
        pulses[1].set_thread(8);
        let start = Instant::now();
        let mut watchdog = Watchdog::new(budget, 2);
        let mut hit = Vec::new();
        pulses[0].enter_handler();
        pulses[1].enter_handler();
        watchdog.check(&pulses, start, |t| hit.push(t));
        // Worker 1 finishes one handler and starts the next: progress.
        pulses[1].leave_handler();
        pulses[1].enter_handler();
        watchdog.check(&pulses, start + budget, |t| hit.push(t));
        assert_eq!(hit, [7], "only the worker stuck in one handler");
        watchdog.check(&pulses, start + budget + budget / 2, |t| hit.push(t));
        assert_eq!(hit, [7], "not again before another budget interval");
        watchdog.check(&pulses, start + budget * 2, |t| hit.push(t));
        assert_eq!(hit, [7, 7, 8], "still stuck: again, and worker 1 now too");
        pulses[0].leave_handler();
        watchdog.check(&pulses, start + budget * 4, |t| hit.push(t));
        assert_eq!(hit, [7, 7, 8, 8], "a worker out of Lua (even) never");
    }
}
