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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use keystone_lua::{Pulse, Watchdog};

use keystone_lua::{AppSource, LoadError, LoadedApp, LuaConfig};

/// How often a [`Sampler`] looks: half the smallest budget allowed (10 ms),
/// so runaway Lua is stopped within 5 ms past its budget.
const SAMPLER_PERIOD: Duration = Duration::from_millis(5);

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

/// A thread sampling one pulse — this thread's — against `budget` until
/// dropped: for Lua that runs outside a worker (`keystone test`, the main
/// thread's check of an app before it is served).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `pulse`, registered to the calling thread.
    pub fn start(pulse: &Arc<Pulse>, budget: Duration) -> Sampler {
        install_signal_handler();
        pulse.set_thread(crate::sys::current_thread());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pulses, stop) = ([Arc::clone(pulse)], Arc::clone(&stop));
            std::thread::Builder::new()
                .name("keystone-watchdog".into())
                .spawn(move || {
                    let mut dog = Watchdog::new(budget, 1);
                    while !stop.load(Ordering::Relaxed) {
                        check(&mut dog, &pulses);
                        std::thread::sleep(SAMPLER_PERIOD);
                    }
                })
                .expect("spawn the watchdog thread")
        };
        Sampler {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Loads `source` on this thread to check it, its chunk and `init_worker`
/// under `budget`: an app that never finishes loading is an error, not a
/// main thread that stops answering signals.
pub fn load_checked(
    source: &AppSource,
    lua: &LuaConfig,
    budget: Duration,
    print: impl Fn(&str) + 'static,
) -> Result<LoadedApp, LoadError> {
    let pulse = Arc::new(Pulse::default());
    let _sampler = Sampler::start(&pulse, budget);
    LoadedApp::load_budgeted(source, 0, lua, print, Some(&pulse))
}
