//! The `keystone` binary: parse the command line, hand over to the server.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keystone_server::cli::Cli::parse();
    keystone_server::run(cli)
}
