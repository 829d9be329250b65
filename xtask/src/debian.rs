//! Installing the Debian packages the build and the tests need, so that
//! `cargo xtask run` and `cargo xtask test` work on a fresh Debian machine.
//! Only as root on Debian; elsewhere we print what is missing and go on.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

/// Needed to build the server at all (`cargo xtask run` and `test`).
pub const BUILD_PACKAGES: &[(&str, &str)] = &[
    // cc and make: mlua builds its vendored LuaJIT, picohttpparser-sys its C.
    (
        "build-essential",
        "C toolchain for vendored LuaJIT and picohttpparser",
    ),
];

/// Needed by `cargo xtask test` on top of [`BUILD_PACKAGES`].
///
/// Never add `luajit`: it conflicts with libnginx-mod-http-lua, which the
/// comparison benchmarks install (Keystone's own LuaJIT is vendored by mlua).
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    (
        "curl",
        "e2e tests and smoke checks talk HTTP to the real binary",
    ),
    ("wrk", "HTTP load generator for the load tests and benches"),
    (
        "openssl",
        "TLS tests: test certificates (openssl req/x509) and s_client",
    ),
    (
        "python3",
        "TLS tests' ssl-module client; a proxy test's http.server backend",
    ),
    ("clang", "compiles ebpf/*.c to BPF for the up-to-date check"),
    ("llvm", "llvm-strip makes the BPF object deterministic"),
    (
        "bpftool",
        "inspects loaded BPF programs and maps when a test fails",
    ),
    ("libbpf-dev", "bpf/bpf_helpers.h included by ebpf/*.c"),
    ("linux-libc-dev", "linux/bpf.h included by ebpf/*.c"),
    (
        "lua-cjson",
        "JSON module the example app loads via LuaRocks paths",
    ),
    (
        "luarocks",
        "LuaRocks module resolution that the Lua bridge relies on",
    ),
];

/// Packages that must never be installed by us, whatever a list says.
const NEVER_INSTALL: &[&str] = &["luajit"];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

/// `dpkg -s` exits 0 for packages that are only half-removed, so we also
/// require the "install ok installed" status line.
fn is_installed(package: &str) -> bool {
    let Ok(output) = Command::new("dpkg").args(["-s", package]).output() else {
        return false;
    };
    output.status.success()
        && String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.trim() == "Status: install ok installed")
}

/// Installs whatever of `packages` is missing (root on Debian), one
/// `apt-get install` per package so one conflict does not sink the rest.
/// A failed install is reported, not fatal: the step that needs the package
/// fails later with a more precise message.
pub fn ensure(packages: &[(&str, &str)]) -> Result<()> {
    if !is_debian() {
        println!("not Debian: not checking system packages");
        return Ok(());
    }
    let missing: Vec<(&str, &str)> = packages
        .iter()
        .copied()
        .filter(|(name, _)| !is_installed(name))
        .collect();
    if missing.is_empty() {
        println!("all {} system packages present", packages.len());
        return Ok(());
    }
    if !is_root() {
        for (name, why) in &missing {
            println!("missing Debian package {name} ({why}); not root, not installing");
        }
        return Ok(());
    }
    let update = Command::new("apt-get").arg("update").status()?;
    if !update.success() {
        println!("warning: apt-get update failed ({update}); trying the installs anyway");
    }
    for (name, why) in &missing {
        assert!(
            !NEVER_INSTALL.contains(name),
            "{name} must never be installed"
        );
        println!("installing {name} ({why})");
        let status = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", name])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            println!("warning: apt-get install {name} failed ({status}); continuing");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_installs_luajit() {
        for (name, _) in BUILD_PACKAGES.iter().chain(TEST_PACKAGES) {
            assert!(!NEVER_INSTALL.contains(name), "{name} is on the never list");
        }
    }

    #[test]
    fn package_names_are_unique() {
        let mut names: Vec<&str> = BUILD_PACKAGES
            .iter()
            .chain(TEST_PACKAGES)
            .map(|(name, _)| *name)
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
