//! keystone-server — the thin wiring: command line, listeners, eBPF
//! steering, one worker thread per core, signals and drain.
//!
//! Owns: process lifecycle only. Every decision about bytes belongs to a
//! layer crate; this crate connects them (`worker.rs` pumps one core's
//! ring into its connections, `serve.rs` starts and supervises workers).
//!
//! Never depended on by any layer crate. Never depends on: keystone-tests,
//! keystone-benches or xtask (the leaves, which may depend on anything).

pub mod cli;
pub mod log;
mod serve;
mod sys;
mod test_cmd;
mod watchdog;
mod worker;

use std::process::ExitCode;

use keystone_lua::AppSource;

/// The bundled example app, served when `keystone serve` gets no APP.
pub const EXAMPLE_APP: &str = include_str!("../../../examples/hello/app.lua");
/// The name the bundled app reports in errors and `file:line`.
pub const EXAMPLE_APP_NAME: &str = "examples/hello/app.lua";

/// Exit status for usage errors and apps that do not load (clap's and
/// nginx -t's convention).
pub const EXIT_USAGE: u8 = 2;

/// Runs a parsed command line.
pub fn run(cli: cli::Cli) -> ExitCode {
    match cli.command {
        cli::Command::Serve(args) => serve::serve(*args),
        cli::Command::Check { app, lua } => check(&app, &lua.config()),
        cli::Command::Reload { pid } => reload(pid),
        cli::Command::Stats(args) => stats(&args),
        cli::Command::Test(args) => test_cmd::test(args),
    }
}

/// `keystone stats`: the client lives in keystone-ops; a failure exits 2.
fn stats(args: &cli::StatsArgs) -> ExitCode {
    let options = keystone_ops::stats_cmd::StatsOptions {
        pid: args.pid,
        admin: args.admin,
        json: args.json,
        count: args.count,
    };
    match keystone_ops::stats_cmd::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keystone stats: {err}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn check(path: &std::path::Path, config: &keystone_lua::LuaConfig) -> ExitCode {
    if let Err(err) = config.check_trees() {
        eprintln!("keystone: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Bounded like `serve`'s own check: an app that never finishes loading
    // is reported, not waited for.
    let budget = std::time::Duration::from_millis(cli::defaults::LUA_BUDGET_MS);
    let loaded = AppSource::read(path).and_then(|source| {
        watchdog::load_checked(&source, config, budget, |line| eprintln!("{line}"))
    });
    match loaded {
        Ok(app) => {
            println!("{}: ok, {} routes", path.display(), app.routes.len());
            for route in &app.routes {
                println!("  {route}");
            }
            for (prefix, dir) in &app.statics {
                println!("  static {prefix}: {}", dir.display());
            }
            for pool in &app.upstreams {
                let peers: Vec<String> = pool
                    .peer_names
                    .iter()
                    .zip(&pool.peers)
                    .map(|(name, addr)| {
                        if *name == addr.to_string() {
                            name.clone()
                        } else {
                            format!("{name} ({addr})")
                        }
                    })
                    .collect();
                let tls = pool
                    .tls
                    .as_ref()
                    .map_or_else(String::new, |tls| format!(", {}", tls.describe()));
                println!(
                    "  upstream {} ({:?}, keepalive {}, retries {}{tls}): {}",
                    pool.name,
                    pool.balance,
                    pool.keepalive,
                    pool.retries,
                    peers.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keystone: {err}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `keystone reload --pid PID`: sends SIGHUP to a running `keystone serve`,
/// which loads the app again beside the running one and swaps it in. Exit
/// 2, with the reason, when PID is not a keystone process we may signal.
fn reload(pid: i32) -> ExitCode {
    match send_reload(pid) {
        Ok(()) => {
            println!("keystone: sent SIGHUP to {pid} (reload)");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("keystone: reload: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn send_reload(pid: i32) -> Result<(), String> {
    keystone_ops::reload_cmd::check_target(pid)?;
    sys::hang_up(pid).map_err(|err| keystone_ops::reload_cmd::kill_failed(pid, &err))
}
