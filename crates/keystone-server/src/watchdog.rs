//! The handler budget watchdog. Each worker publishes a [`Pulse`]: a
//! sequence number it bumps on entering and on leaving a Lua handler (odd =
//! inside). The main thread samples every pulse while it waits for signals
//! (keystone-lua's [`Watchdog`] decides); a handler seen inside for longer
//! than the budget gets its worker thread signalled (`SIGUSR1`), and the
//! signal handler stops it through `keystone_lua::interrupt_running_handler`
//! (→ 503).
//!
//! The hot path pays two relaxed stores per request: no lock, no syscall,
//! no clock read.

pub use keystone_lua::{Pulse, Watchdog};

/// The signal that interrupts a runaway handler.
pub const BUDGET_SIGNAL: i32 = libc::SIGUSR1;

/// Samples the pulses now; signals each worker stuck past the budget.
pub fn check(watchdog: &mut Watchdog, pulses: &[std::sync::Arc<Pulse>]) {
    watchdog.check(pulses, std::time::Instant::now(), |thread| {
        crate::sys::signal_thread(thread, BUDGET_SIGNAL);
    });
}

extern "C" fn on_budget_signal(_signal: libc::c_int) {
    keystone_lua::interrupt_running_handler();
}

/// Installs the budget signal's handler (process-wide, before workers).
pub fn install_signal_handler() {
    crate::sys::install_handler(BUDGET_SIGNAL, on_budget_signal);
}
