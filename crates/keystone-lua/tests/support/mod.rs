//! Shared by the keystone-lua integration tests: load an app with a
//! `LuaConfig`, run one request through it, collect the log.

#![allow(dead_code)] // Each test binary uses a different part.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};

use keystone_lua::{AppSource, LoadedApp, LuaConfig, Outcome};
use keystone_parser::{Head, Limits, ParseStatus, Parser};
use keystone_ringbuf::Span;

// The one implementation of "a missing tool fails unless
// KEYSTONE_SKIP_MISSING_TOOLS=1", shared with keystone-tests as a file: the
// layer DAG lets no layer depend on that crate.
#[path = "../../../../tests/src/tools.rs"]
pub mod tools;

/// Lines the app printed (and the engine logged).
pub type Log = Rc<RefCell<Vec<String>>>;

/// The workspace root (tests read `examples/` and `lua-rocks/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh empty directory under cargo's per-target temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("keystone-lua-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `files` (relative path, contents) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// An app source held in memory, named `test_app.lua`, with no directory.
pub fn source(text: &str) -> AppSource {
    AppSource::bundled("test_app.lua", Box::leak(text.to_string().into_boxed_str()))
}

/// Loads `source` for worker 0; the log goes to the returned vector.
pub fn try_load(source: &AppSource, config: &LuaConfig) -> Result<(LoadedApp, Log), String> {
    let log: Log = Rc::default();
    let sink = log.clone();
    LoadedApp::load_with(source, 0, config, move |line| {
        sink.borrow_mut().push(line.to_string())
    })
    .map(|app| (app, log))
    .map_err(|err| err.to_string())
}

/// Loads or panics with the load error.
pub fn load(source: &AppSource, config: &LuaConfig) -> (LoadedApp, Log) {
    try_load(source, config).unwrap_or_else(|err| panic!("app failed to load: {err}"))
}

/// Runs `GET path` through `app`: Ok(body) or Err(error message).
pub fn get(app: &mut LoadedApp, path: &str) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    run(app, request.as_bytes())
}

/// What policy left in the exchange for one request.
pub struct Response {
    /// `ctx.status`.
    pub status: u32,
    /// Response headers in the order set.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `request` through `app`: Ok(body) or Err(error message).
pub fn run(app: &mut LoadedApp, request: &[u8]) -> Result<String, String> {
    respond(app, request).map(|response| response.body)
}

/// Runs `request` through `app`: Ok(response) or Err(error message).
pub fn respond(app: &mut LoadedApp, request: &[u8]) -> Result<Response, String> {
    respond_on(app, request, &keystone_exchange::TlsFacts::CLEARTEXT)
}

/// Runs `request` through `app` as if it came on a connection with `tls`.
pub fn respond_on(
    app: &mut LoadedApp,
    request: &[u8],
    tls: &keystone_exchange::TlsFacts,
) -> Result<Response, String> {
    let mut head = Head::new();
    let mut parser = Parser::new();
    let status = parser
        .parse(request, 0, &Limits::default(), &mut head)
        .unwrap();
    assert!(matches!(status, ParseStatus::Complete));
    let body = Span::new(head.head_len, request.len() as u32 - head.head_len);
    let method = &request[head.method.offset as usize..head.method.end() as usize];
    let path = &request[head.path.offset as usize..head.path.end() as usize];
    let matched = app
        .router
        .lookup(method, path, head.path.offset)
        .unwrap_or_else(|_| panic!("no route for {}", lossy(path)));
    let handler = matched.handler;
    app.lua.exchange_mut().bind_with_tls(
        request,
        &head,
        matched.params(),
        body,
        keystone_exchange::PeerAddr::NONE,
        tls,
    );
    let result = match app.lua.run(handler) {
        Outcome::Done => {
            let ex = app.lua.exchange();
            Ok(Response {
                status: ex.status,
                headers: ex
                    .response_headers()
                    .map(|(n, v)| (lossy(n), lossy(v)))
                    .collect(),
                body: lossy(ex.response_body().unwrap_or(b"")),
            })
        }
        Outcome::Failed { message } => {
            Err(message.unwrap_or_else(|| "(a repeated failure, counted)".to_owned()))
        }
        Outcome::Stopped { message } => Err(format!("handler stopped: {message}")),
    };
    app.lua.exchange_mut().expire();
    result
}
