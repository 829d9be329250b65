//! External tools the tests drive (wrk, luarocks, lua-cjson, curl): a test
//! that needs one fails when it is missing, naming it and how to get it, so
//! a test never passes because it did not run. Only an explicit
//! `KEYSTONE_SKIP_MISSING_TOOLS=1` turns that into a skip, printed as such.
//!
//! keystone-lua's integration tests compile this same file (a `#[path]`
//! module in `crates/keystone-lua/tests/support/mod.rs`): the layer DAG lets
//! no layer depend on this crate, so the file uses `std` only.

use std::path::Path;

/// Set to `1` to skip, saying so, the tests whose tool is missing.
pub const SKIP_MISSING_TOOLS: &str = "KEYSTONE_SKIP_MISSING_TOOLS";

/// True when `program` is an executable on `PATH`. Otherwise panics naming
/// it and `how` to get it (e.g. "Debian package wrk"), or, under
/// `KEYSTONE_SKIP_MISSING_TOOLS=1`, prints that the test is skipped and
/// returns false: the caller returns.
pub fn require_tool(program: &str, how: &str) -> bool {
    if on_path(program) {
        return true;
    }
    missing(&format!("`{program}` is not on PATH"), how)
}

/// As [`require_tool`], for a tool that is a file (a Lua C module such as
/// lua-cjson's `cjson.so`).
pub fn require_file(path: &Path, how: &str) -> bool {
    if path.exists() {
        return true;
    }
    missing(&format!("{} does not exist", path.display()), how)
}

fn missing(what: &str, how: &str) -> bool {
    if std::env::var(SKIP_MISSING_TOOLS).as_deref() == Ok("1") {
        eprintln!("skipped: {what} ({how}), and {SKIP_MISSING_TOOLS}=1 says to skip");
        return false;
    }
    panic!(
        "{what}: this test needs it. Install it ({how}; `cargo xtask test` installs it \
         when run as root on Debian), or set {SKIP_MISSING_TOOLS}=1 to skip the tests \
         that need it"
    );
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;

    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}
