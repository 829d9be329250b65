//! A worker's heartbeat for the handler budget: a sequence number the
//! worker bumps on entering and on leaving Lua (odd = inside), and the
//! worker thread to signal when a handler stays inside past its budget.
//! The main thread's watchdog samples it; the hot path pays two relaxed
//! stores per call into Lua: no lock, no syscall, no clock read.

use std::sync::atomic::{AtomicU64, Ordering};

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
