//! `keystone test`: keystone-spec runs the specs on this thread; this
//! wires in what `serve` has and a layer crate cannot: the handler budget
//! (a watchdog thread samples the runner's pulse and signals this thread,
//! as it signals a worker) and the exit status.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keystone_spec::{Options, Settings};

use crate::cli::TestArgs;
use crate::watchdog::{self, Pulse, Watchdog};

/// How often the watchdog looks: half the smallest budget allowed (10 ms),
/// so a runaway handler is stopped within 5 ms past its budget.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(5);

/// Runs `keystone test`; exits 0 (all passed), 1 (a test failed) or 2
/// (a spec did not load, a bad path or flag).
pub fn test(args: TestArgs) -> ExitCode {
    let lua = args.lua.config();
    if let Err(err) = lua.check_trees() {
        eprintln!("keystone test: {err}");
        return ExitCode::from(crate::EXIT_USAGE);
    }
    watchdog::install_signal_handler();
    let pulse = Arc::new(Pulse::default());
    pulse.set_thread(crate::sys::current_thread());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pulse, stop) = (Arc::clone(&pulse), Arc::clone(&stop));
        let budget = Duration::from_millis(args.lua_budget_ms);
        std::thread::Builder::new()
            .name("keystone-watchdog".into())
            .spawn(move || {
                let mut dog = Watchdog::new(budget, 1);
                let pulses = [pulse];
                while !stop.load(Ordering::Relaxed) {
                    watchdog::check(&mut dog, &pulses);
                    std::thread::sleep(WATCHDOG_PERIOD);
                }
            })
            .expect("spawn the watchdog thread")
    };
    let options = Options {
        paths: args.paths,
        filter: args.filter,
        junit: args.junit,
        verbose: args.verbose,
        settings: Settings {
            lua,
            config: keystone_conn::Config::default(),
            pulse,
        },
    };
    let verdict = keystone_spec::run(options, &mut std::io::stdout(), &mut std::io::stderr());
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    ExitCode::from(verdict.exit_code())
}
