//! keystone-server — the thin wiring: command line, listeners, eBPF
//! steering, one worker thread per core, signals and drain.
//!
//! Owns: process lifecycle only. Every decision about bytes belongs to a
//! layer crate; this crate connects them (`http.rs` is the per-request
//! wiring, `worker.rs` the per-core event loop).
//!
//! Never depended on by any layer crate.

pub mod cli;
mod http;
pub mod log;
mod serve;
mod worker;

use std::process::ExitCode;

use keystone_lua::{AppSource, LoadedApp};

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
        cli::Command::Serve(args) => serve::serve(args),
        cli::Command::Check { app } => check(&app),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let loaded = AppSource::read(path).and_then(|source| LoadedApp::load(&source, 0, |_| {}));
    match loaded {
        Ok(app) => {
            println!("{}: ok, {} routes", path.display(), app.routes.len());
            for route in &app.routes {
                println!("  {route}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keystone: {err}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
