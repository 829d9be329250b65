//! keystone-spec — `keystone test`: spec files (busted's `describe`/`it`
//! and `assert`) drive a Lua app through the real engine in memory, no
//! sockets. A request is fed to keystone-conn's connection machine (its
//! in-process `sim` driver) in front of the app's own policy
//! (keystone-app: the router, the Lua state and sandbox `serve` builds,
//! the static directories, the upstream pools); what the connection sends
//! back is the response, byte for byte what a client of `serve` would get.
//! A pool can be pointed at a fake (`app:upstream(name, fn)`): the
//! forwarded request the engine writes is parsed back for the fake, and
//! the fake's answer is parsed by the engine as a backend's would be.
//!
//! Owns: the runner (files, filter, report, JUnit XML), the spec files'
//! own Lua state (plain LuaJIT, outside any sandbox: it is the test, not
//! the app) with the busted-like runtime (`runtime.lua`), the apps under
//! test and their fake upstreams. Test support: it allocates freely.
//!
//! Never depends on: keystone-router, keystone-exchange, keystone-files,
//! keystone-tls, keystone-reactor, keystone-ebpf, keystone-server (it
//! executes intents itself; nothing here touches a ring or a socket).

mod bindings;
mod engine;
mod http;
mod log;
mod report;
mod state;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use bindings::Settings;
pub use engine::RESPONSE_BYTES_MAX;
pub use report::{Status, TestResult};

use mlua::{Function, Table};

/// The busted-like runtime: `describe`, `it`, hooks, `assert`, and the
/// module the runner drives (`load`, `run`).
const RUNTIME: &str = include_str!("runtime.lua");

/// What spec files call: `keystone.app` and its handle's methods, which
/// raise the errors the Rust side returns from the spec's own frame (so a
/// report names the spec's line, not the engine's), and the protected call
/// a fake runs in (its error, an assertion's failure object included,
/// travels back unchanged).
const GLUE: &str = r#"
local raw_app, error, setmetatable, type, pcall = keystone._app, error, setmetatable, type, pcall
local App = {}
App.__index = App
function App:request(t)
  if type(t) ~= "table" then error("app:request takes a table { method, path, ... } or { raw = ... }", 2) end
  local res, err, from_fake = self._handle:request(t)
  if res == nil then error(err, from_fake and 0 or 2) end
  return res
end
function App:upstream(name, fake)
  local ok, err = self._handle:upstream(name, fake)
  if not ok then error(err, 2) end
end
function App:reset() self._handle:reset() end
local getinfo, match, sub = debug.getinfo, string.match, string.sub
function keystone.app(path, opts)
  if type(path) ~= "string" then error("keystone.app takes the app's path", 2) end
  -- Relative to the file that calls it (a spec, or a helper it requires).
  local caller = getinfo(2, "S")
  local source = caller and caller.what ~= "tail" and caller.source or ""
  local dir = sub(source, 1, 1) == "@" and (match(sub(source, 2), "^(.*)[/\\]") or ".") or nil
  local handle, err = raw_app(path, opts, dir)
  if not handle then error(err, 2) end
  return setmetatable({ _handle = handle }, App)
end
function keystone._call_fake(fake, req) return pcall(fake, req) end
-- Ending the process from a spec would end the run without its report.
os.exit = function()
  error("os.exit() would end the run without its report: fail the test instead", 2)
end
"#;

/// Where spec files are looked for when no path is given.
pub const DEFAULT_SPEC_DIR: &str = "spec";
/// What names a spec file inside a searched directory.
pub const SPEC_SUFFIX: &str = "_spec.lua";

/// What `keystone test` was asked for.
pub struct Options {
    /// Spec files or directories searched for `*_spec.lua`; empty: `spec/`.
    pub paths: Vec<PathBuf>,
    /// A Lua pattern the full test names must match.
    pub filter: Option<String>,
    /// Write JUnit XML here.
    pub junit: Option<PathBuf>,
    /// Show every test's log, not only failing ones'.
    pub verbose: bool,
    /// What the apps are loaded with.
    pub settings: Settings,
}

/// How the run ended: the exit status is 0, 1 and 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every test passed (or was pending).
    Passed,
    /// A test failed.
    Failed,
    /// A spec did not load, or the run could not start.
    NotLoaded,
}

impl Verdict {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::NotLoaded => 2,
        }
    }
}

/// Runs the specs `options` names, printing the report on `out` and
/// problems that stop the run on `err`.
pub fn run(options: Options, out: &mut dyn Write, err: &mut dyn Write) -> Verdict {
    let files = match spec_files(&options.paths) {
        Ok(files) => files,
        Err(message) => {
            let _ = writeln!(err, "keystone test: {message}");
            return Verdict::NotLoaded;
        }
    };
    // A report that cannot be written is known before anything runs.
    if let Some(path) = &options.junit {
        if let Err(e) = report::prepare_junit(path) {
            let _ = writeln!(
                err,
                "keystone test: cannot write --junit {}: {e}",
                path.display()
            );
            return Verdict::NotLoaded;
        }
    }
    let lua = state::spec_state();
    let module = match prepare(&lua, options.settings) {
        Ok(module) => module,
        Err(e) => {
            let _ = writeln!(err, "keystone test: the runtime failed: {e}");
            return Verdict::NotLoaded;
        }
    };
    let started = std::time::Instant::now();
    let mut load_errors = Vec::new();
    let load: Function = module.get("load").expect("runtime exports load");
    for file in &files {
        let name = file.display().to_string();
        match load.call::<(bool, Option<mlua::String>)>(name.as_str()) {
            Ok((true, _)) => {}
            Ok((false, message)) => load_errors.push((
                name,
                message.map_or_else(String::new, |m| m.to_string_lossy()),
            )),
            Err(e) => load_errors.push((name, bindings::message(&e))),
        }
    }
    let results = match run_tests(&lua, &module, options.filter.as_deref(), out) {
        Ok(results) => results,
        Err(message) => {
            let _ = writeln!(err, "keystone test: {message}");
            return Verdict::NotLoaded;
        }
    };
    let requests = lua
        .globals()
        .get::<Table>("keystone")
        .and_then(|k| k.get::<Function>("_requests"))
        .and_then(|f| f.call::<u64>(()))
        .unwrap_or(0);
    let elapsed = started.elapsed();
    report::print(
        out,
        &results,
        &load_errors,
        options.verbose,
        requests,
        elapsed,
    );
    if let (Some(filter), true) = (&options.filter, results.is_empty()) {
        let _ = writeln!(
            out,
            "keystone test: no test's name matches --filter {filter:?}"
        );
    }
    if let Some(path) = &options.junit {
        if let Err(e) = report::write_junit(path, &results, &load_errors, elapsed) {
            let _ = writeln!(
                err,
                "keystone test: cannot write --junit {}: {e}",
                path.display()
            );
            return Verdict::NotLoaded;
        }
    }
    if !load_errors.is_empty() {
        Verdict::NotLoaded
    } else if results.iter().any(|r| r.status.failed()) {
        Verdict::Failed
    } else {
        Verdict::Passed
    }
}

/// The spec state with `keystone` installed and the runtime loaded.
fn prepare(lua: &mlua::Lua, settings: Settings) -> mlua::Result<Table> {
    // Spec files `require` what the apps would (the same trees, the same
    // LUA_PATH/LUA_CPATH, Debian's C directory), lua-cjson among them.
    let (path, cpath) = settings
        .lua
        .package_paths(None)
        .map_err(mlua::Error::runtime)?;
    let package: Table = lua.globals().get("package")?;
    package.set("path", path)?;
    package.set("cpath", cpath)?;
    // The spec's `print` and `io.write` and the report share one stream
    // in order: Lua's C stdio unbuffered, `print` through Rust's stdout.
    lua.load("io.stdout:setvbuf('no')").exec()?;
    lua.globals().set(
        "print",
        lua.create_function(|lua, args: mlua::MultiValue| {
            let tostring: Function = lua.globals().get("tostring")?;
            let mut line = Vec::new();
            for (i, value) in args.into_iter().enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                let text: mlua::String = tostring.call(value)?;
                line.extend_from_slice(&text.as_bytes());
            }
            line.push(b'\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
            Ok(())
        })?,
    )?;
    let keystone = lua.create_table()?;
    lua.globals().set("keystone", &keystone)?;
    bindings::install(lua, &keystone, settings)?;
    lua.load(GLUE).set_name("=[keystone-spec glue]").exec()?;
    lua.load(RUNTIME)
        .set_name("=[keystone-spec runtime]")
        .call::<Table>(())
}

fn run_tests(
    lua: &mlua::Lua,
    module: &Table,
    filter: Option<&str>,
    out: &mut dyn Write,
) -> Result<Vec<TestResult>, String> {
    let options = lua.create_table().map_err(|e| e.to_string())?;
    if let Some(filter) = filter {
        options.set("filter", filter).map_err(|e| e.to_string())?;
    }
    let progress = lua
        .create_function(|_, result: Table| {
            let status: mlua::String = result.get("status")?;
            let status = status.to_string_lossy();
            let mark = match status.as_str() {
                "passed" => '.',
                "pending" => '*',
                "error" => 'E',
                _ => 'F',
            };
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "{mark}");
            let _ = stdout.flush();
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    options
        .set("on_result", progress)
        .map_err(|e| e.to_string())?;
    let run: Function = module.get("run").map_err(|e| e.to_string())?;
    let results: Table = run.call(options).map_err(|e| bindings::message(&e))?;
    let _ = writeln!(out);
    let mut list = Vec::new();
    for result in results.sequence_values::<Table>() {
        let result = result.map_err(|e| e.to_string())?;
        list.push(TestResult::from_lua(&result).map_err(|e| e.to_string())?);
    }
    Ok(list)
}

/// The spec files `paths` name (directories searched for `*_spec.lua`,
/// in name order); none given: `spec/`.
pub fn spec_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let defaulted = paths.is_empty();
    let paths = if defaulted {
        vec![PathBuf::from(DEFAULT_SPEC_DIR)]
    } else {
        paths.to_vec()
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for path in &paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let before = files.len();
                find_specs(path, &mut files)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if files.len() == before {
                    return Err(format!("no *{SPEC_SUFFIX} files under {}", path.display()));
                }
            }
            Ok(_) => files.push(path.clone()),
            Err(_) if defaulted => {
                return Err(format!(
                    "no {DEFAULT_SPEC_DIR}/ directory here; name spec files or directories \
                     (keystone test spec/app_spec.lua)"
                ))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    // A file named twice (or inside a directory also named) runs once.
    let mut seen = std::collections::HashSet::new();
    files.retain(|file| seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone())));
    Ok(files)
}

fn find_specs(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            find_specs(&path, files)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SPEC_SUFFIX))
        {
            files.push(path);
        }
    }
    Ok(())
}
