//! `keystone test`: keystone-spec runs the specs on this thread; this
//! wires in what `serve` has and a layer crate cannot: the handler budget
//! (a watchdog thread samples the runner's pulse and signals this thread,
//! as it signals a worker) and the exit status.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keystone_spec::{Options, Settings};

use crate::cli::TestArgs;
use crate::watchdog::{Pulse, Sampler};

/// Runs `keystone test`; exits 0 (all passed), 1 (a test failed) or 2
/// (a spec did not load, a bad path or flag).
pub fn test(args: TestArgs) -> ExitCode {
    // Pools are pointed at fakes: a spec loads where the production peer
    // names do not resolve.
    let lua = keystone_lua::LuaConfig {
        unresolved_peers: true,
        ..args.lua.config()
    };
    if let Err(err) = lua.check_trees() {
        eprintln!("keystone test: {err}");
        return ExitCode::from(crate::EXIT_USAGE);
    }
    let pulse = Arc::new(Pulse::default());
    let sampler = Sampler::start(&pulse, Duration::from_millis(args.lua_budget_ms));
    let options = Options {
        paths: args.paths,
        filter: args.filter,
        junit: args.junit,
        verbose: args.verbose,
        settings: Settings {
            lua,
            config: keystone_conn::Config {
                limits: args.limits.limits(),
                ..keystone_conn::Config::default()
            },
            pulse,
        },
    };
    let verdict = keystone_spec::run(options, &mut std::io::stdout(), &mut std::io::stderr());
    drop(sampler);
    ExitCode::from(verdict.exit_code())
}
