//! xtask: Keystone's developer tasks (`cargo xtask <task>`, via the alias in
//! `.cargo/config.toml`); if `cargo xtask test` passes locally, CI passes.
//!
//! Owns: the layer DAG and its check (`layers`), the house rules a machine
//! can check (`tidy`), the Debian package lists (`debian`), the
//! deterministic BPF build (`ebpf`), and the kernel TLS check on a real
//! kernel under QEMU (`ktls`).
//!
//! Never depends on: any Keystone crate. It drives the workspace through
//! `cargo` and reads it through `cargo metadata`, so a broken layer crate
//! cannot break the tool that reports it.

mod bench;
mod debian;
mod ebpf;
mod ktls;
mod layers;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context as _, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  run [ARGS...]   build and serve the example app (keystone serve [ARGS...]),
                  127.0.0.1:8080 unless ARGS say otherwise
  test            packages, fmt, clippy, check-layers, tidy, BPF up-to-date,
                  cargo test, the examples' specs (keystone test), ktls
  ktls            kernel TLS on a real kernel: boots Debian's kernel (TLS
                  module) under QEMU and runs xtask/ktls/guest.sh in it
  check-layers    check workspace dependency edges against the layer DAG
  tidy            check the house rules: unsafe allowlist, # Safety docs,
                  `Never depends on:` vs the DAG, //! docs, no skipped tests
  build-ebpf      compile ebpf/*.c into the committed ebpf/<name>.bpf.o
  check-ebpf      check the committed BPF objects match their sources
  bench [--quick] [--rounds N] [--seconds N]
                  keystone vs nginx+lua vs raw io_uring: req/s, CPU/request,
                  latency, static files, syscalls, idle RSS
                  (target/bench/latest.{md,json})
";

/// Exit status for bad usage, as in sysexits' EX_USAGE spirit: distinct from
/// a task that ran and failed (1).
const EXIT_USAGE: u8 = 2;

fn workspace_root() -> PathBuf {
    // xtask/Cargo.toml sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    let root = workspace_root();
    let result = match (task.as_str(), rest) {
        ("run", rest) => run(&root, rest),
        ("test", []) => test(&root),
        ("check-layers", []) => check_layers(&root),
        ("tidy", []) => tidy::run(&root),
        ("build-ebpf", []) => ebpf::build(&root),
        ("check-ebpf", []) => ebpf::check_up_to_date(&root),
        ("bench", rest) => bench::run(&root, rest),
        ("ktls", []) => ktls::run(&root),
        ("help" | "-h" | "--help", []) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ("test" | "check-layers" | "tidy" | "build-ebpf" | "check-ebpf" | "ktls", extra) => {
            eprintln!("cargo xtask {task}: takes no arguments, got {extra:?}\n");
            eprint!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
        (unknown, _) => {
            eprintln!("cargo xtask: unknown task {unknown:?}\n");
            eprint!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cargo xtask {task}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn cargo() -> Command {
    // The cargo that runs us, so a toolchain override applies to the steps.
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else the workspace's `target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Runs `command`, failing with its status when it does not succeed.
pub(crate) fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// `cargo xtask run`: the release server on the bundled example app.
fn run(root: &Path, args: &[String]) -> Result<()> {
    debian::ensure(debian::BUILD_PACKAGES)?;
    run_checked(
        cargo()
            .current_dir(root)
            .args([
                "run",
                "--release",
                "-p",
                "keystone-server",
                "--bin",
                "keystone",
            ])
            .args(["--", "serve"])
            .args(args),
    )
}

fn check_layers(root: &Path) -> Result<()> {
    let output = cargo()
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let graph = layers::graph_from_metadata(&metadata)?;
    let violations = layers::check(&graph);
    if violations.is_empty() {
        println!(
            "check-layers: {} workspace crates, {} edges between them, all allowed by the layer DAG",
            graph.crates.len(),
            graph.edges.len()
        );
        return Ok(());
    }
    for violation in &violations {
        println!("{violation}");
    }
    bail!("{} layer violation(s)", violations.len())
}

/// Totals of the `test result:` lines cargo test prints per test binary.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    binaries: u32,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line;
    /// other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// `cargo test --workspace --no-fail-fast`, streaming its output while
/// counting results: every test binary runs, so the summary covers them all.
fn cargo_test(root: &Path) -> Result<()> {
    use std::io::{BufRead as _, BufReader};

    let mut child = cargo()
        .current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut totals = TestTotals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child.wait()?;
    println!(
        "{} passed, {} failed, {} ignored ({} test binaries and doc-test runs)",
        totals.passed, totals.failed, totals.ignored, totals.binaries
    );
    if !status.success() {
        bail!("cargo test --workspace failed: {status}");
    }
    Ok(())
}

/// The bundled examples whose `spec/` `cargo xtask test` runs.
const EXAMPLES_WITH_SPECS: &[&str] = &["hello", "cjson", "rocks", "gateway"];

/// The bundled examples' spec files through `keystone test`, each run from
/// its example's directory with no PATH (so `spec/` is found as a user's
/// would be). examples/rocks needs its rock in the tree its app names,
/// installed as its header says.
fn example_specs(root: &Path) -> Result<()> {
    run_checked(
        cargo()
            .current_dir(root)
            .args(["build", "-p", "keystone-server"]),
    )?;
    run_checked(
        Command::new("luarocks")
            .args(["--lua-version=5.1", "--tree"])
            .arg(root.join("examples/rocks/lua_modules"))
            .args(["make", "keystone-helpers-0.1-1.rockspec"])
            .current_dir(root.join("lua-rocks")),
    )?;
    let keystone = target_dir(root).join("debug/keystone");
    for example in EXAMPLES_WITH_SPECS {
        println!("keystone test (examples/{example})");
        run_checked(
            Command::new(&keystone)
                .arg("test")
                .current_dir(root.join("examples").join(example)),
        )?;
    }
    Ok(())
}

/// `cargo xtask test`: each step prints a header; the first failure stops
/// the run and names its step.
fn test(root: &Path) -> Result<()> {
    type Step<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>);
    let steps: Vec<Step> = vec![
        (
            "system packages",
            Box::new(|| debian::ensure(&[debian::BUILD_PACKAGES, debian::TEST_PACKAGES].concat())),
        ),
        (
            "fmt",
            Box::new(|| {
                run_checked(
                    cargo()
                        .current_dir(root)
                        .args(["fmt", "--all", "--", "--check"]),
                )
            }),
        ),
        (
            "clippy",
            Box::new(|| {
                run_checked(cargo().current_dir(root).args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ),
        ("check-layers", Box::new(|| check_layers(root))),
        ("tidy", Box::new(|| tidy::run(root))),
        (
            "BPF object up to date",
            Box::new(|| ebpf::check_up_to_date(root)),
        ),
        ("cargo test", Box::new(|| cargo_test(root))),
        (
            "example specs (keystone test)",
            Box::new(|| example_specs(root)),
        ),
        (
            "kernel TLS on a real kernel (QEMU)",
            Box::new(|| ktls::run(root)),
        ),
    ];
    let count = steps.len();
    for (index, (name, step)) in steps.iter().enumerate() {
        println!("\n==> [{}/{count}] {name}", index + 1);
        step().with_context(|| format!("step `{name}` failed"))?;
    }
    println!("\ncargo xtask test: all {count} steps passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_totals_sum_result_lines() {
        let mut totals = TestTotals::default();
        for line in [
            "running 3 tests",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "test foo ... ok",
        ] {
            totals.add_line(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                binaries: 2,
                passed: 8,
                failed: 2,
                ignored: 1
            }
        );
    }
}
