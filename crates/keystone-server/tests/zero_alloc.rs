//! The proof of the manifesto's "no allocation per request": the real
//! server runs in this process under a counting global allocator; after a
//! warm-up, 10,000 keep-alive requests that exercise route params, query
//! arguments, request headers read from Lua, response headers set from Lua
//! and an inline body must cause zero heap allocations; so must 1,000
//! streamed bodies with a `Content-Length` set from Lua, 1,000 static-file
//! requests (across a revalidation of the open-file cache: its open and
//! stat on the ring allocate nothing either), 1,000 conditional requests
//! answered 304 and 1,000 files chosen by Lua.
//!
//! The count is process-wide, so everything else in the window is careful
//! not to allocate: the client reuses one request and one response buffer,
//! and the main thread only samples pulses and waits for signals. Lua's own
//! objects live in LuaJIT's allocator (the state is made by
//! `luaL_newstate`), which this count does not see; the test reports Lua's
//! memory before and after (`collectgarbage("count")`) and checks it stays
//! flat.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

const APP: &str = r#"
return { static = { ["/assets/"] = "assets" },
upstreams = { backend = { peers = { "127.0.0.1:{backend}" }, keepalive = 4 } },
routes = {
  ["GET /proxied"] = function(ctx)
    ctx.upstream = "backend"
    ctx.upstream_headers["X-Via"] = "zero-alloc"
  end,
  ["POST /upload"] = function(ctx)
    ctx.upstream = "backend"
  end,
  ["GET /page"] = function(ctx)
    ctx.headers["X-Policy"] = "file"
    ctx.body = { file = "assets/page.txt" }
  end,
  ["GET /users/{id}"] = function(ctx)
    local token = ctx.request.headers["x-token"]
    ctx.headers["Content-Type"] = "application/json"
    ctx.headers["X-Token"] = token
    ctx.headers["X-Session"] = ctx.cookies.session
    ctx.body = '{"id":' .. ctx.params.id .. ',"q":"' .. ctx.args.q .. '","m":"' .. ctx.method .. '"}'
  end,
  ["GET /stream"] = function(ctx)
    local n = 0
    ctx.headers["Content-Length"] = 10
    ctx.body = function() n = n + 1; if n <= 2 then return "01234" end end
  end,
  ["GET /boom"] = function(ctx)
    error("zero-alloc: a failing route")
  end,
  ["GET /mem"] = function(ctx)
    ctx.body = string.format("%.0f", collectgarbage("count"))
  end,
} }
"#;

const REQUEST: &[u8] = b"GET /users/42?q=a%20b&x=1 HTTP/1.1\r\nHost: test\r\nX-Token: t0k3n\r\nUser-Agent: zero-alloc\r\nCookie: theme=dark; session=s3ss\r\n\r\n";
const REQUESTS: u64 = 10_000;
/// A generator with a declared length (raw body, keep-alive).
const STREAM_REQUEST: &[u8] = b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n";
const STREAM_REQUESTS: u64 = 1_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A keep-alive upstream that answers every request with `UPSTREAM_REPLY`
/// from fixed buffers (it runs in this process, so it must not allocate
/// either while the window is measured).
fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut held = 0;
                // Body bytes of the request being read, still to skip.
                let mut skip = 0usize;
                loop {
                    let Ok(n) = stream.read(&mut buf[held..]) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    held += n;
                    loop {
                        if skip > 0 {
                            let dropped = skip.min(held);
                            buf.copy_within(dropped..held, 0);
                            held -= dropped;
                            skip -= dropped;
                            if skip > 0 {
                                break;
                            }
                            if stream.write_all(UPSTREAM_REPLY).is_err() {
                                return;
                            }
                            continue;
                        }
                        // Answer each complete head; one with a length
                        // once its body is read too.
                        let Some(end) = buf[..held].windows(4).position(|w| w == b"\r\n\r\n")
                        else {
                            break;
                        };
                        skip = content_length(&buf[..end]);
                        buf.copy_within(end + 4..held, 0);
                        held -= end + 4;
                        if skip == 0 && stream.write_all(UPSTREAM_REPLY).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// The `Content-Length` of a head (0 without one), read without allocating.
fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"Content-Length: "))
        .map_or(0, |digits| {
            digits
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0, |n, &d| n * 10 + usize::from(d - b'0'))
        })
}

const UPSTREAM_REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nupstream";
const PROXIED_REQUEST: &[u8] =
    b"GET /proxied HTTP/1.1\r\nHost: test\r\nUser-Agent: zero-alloc\r\n\r\n";
const PROXIED_REQUESTS: u64 = 2_000;

/// Starts the server in-process; returns its port and its admin port.
fn start_server() -> (u16, u16) {
    let dir = std::env::temp_dir().join(format!("keystone-zero-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.lua");
    std::fs::write(&app, APP.replace("{backend}", &backend().to_string())).unwrap();
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/file.bin"), vec![b'f'; 4096]).unwrap();
    std::fs::write(dir.join("assets/page.txt"), b"a page chosen by Lua\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let args = [
        "keystone",
        "serve",
        app.to_str().unwrap(),
        "--listen",
        &listen,
        "--workers",
        "1",
        "--admin",
        &admin,
        // Small enough that the uploads below stream.
        "--max-body-bytes",
        "4096",
    ];
    let cli = keystone_server::cli::Cli::parse_from(args);
    std::thread::spawn(move || keystone_server::run(cli));
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, admin_port)
}

/// One counter from the admin listener (after the measured window: it
/// allocates).
fn metric(admin_port: u16, name: &str) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Heap allocations made while `count` exchanges of `request` run.
fn allocations_in(count: u64, stream: &mut TcpStream, request: &[u8], response: &mut [u8]) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..count {
        exchange(stream, request, response);
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// Sends `request` and reads one response whose total length is `len`.
fn exchange(stream: &mut TcpStream, request: &[u8], response: &mut [u8]) {
    stream.write_all(request).unwrap();
    stream.read_exact(response).unwrap();
}

/// Reads one response of unknown length (warm-up only; allocates); a
/// response without Content-Length (304) has no body.
fn response_len(stream: &mut TcpStream, request: &[u8]) -> (usize, String) {
    stream.write_all(request).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "the server closed the connection");
        got += n;
        let text = String::from_utf8_lossy(&buf[..got]).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if got >= end + 4 + length {
                return (end + 4 + length, text[end + 4..end + 4 + length].to_owned());
            }
        }
    }
}

#[test]
fn keep_alive_requests_allocate_nothing() {
    let (port, admin_port) = start_server();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (len, body) = response_len(&mut stream, REQUEST);
    assert_eq!(body, r#"{"id":42,"q":"a b","m":"GET"}"#);
    assert!(
        String::from_utf8_lossy(&{
            let mut probe = vec![0u8; len];
            exchange(&mut stream, REQUEST, &mut probe);
            probe
        })
        .contains("X-Session: s3ss\r\n"),
        "the cookie reached the response"
    );
    let mem_request = b"GET /mem HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut response = vec![0u8; len];
    for _ in 0..1000 {
        exchange(&mut stream, REQUEST, &mut response);
    }
    let (_, lua_kib_before) = response_len(&mut stream, mem_request);

    // The counter works: start-up and the warm-up client allocated.
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > 0);
    let allocations = allocations_in(REQUESTS, &mut stream, REQUEST, &mut response);
    // The window ran on the default receive path: plain recv into the
    // connection's buffer (`--recv-registered` is off).
    let plain = metric(admin_port, "keystone_receives_plain_total");
    assert!(
        plain >= REQUESTS,
        "{plain} plain receives for {REQUESTS} requests"
    );

    let (stream_len, body) = response_len(&mut stream, STREAM_REQUEST);
    assert_eq!(body, "0123401234");
    let mut stream_response = vec![0u8; stream_len];
    for _ in 0..100 {
        exchange(&mut stream, STREAM_REQUEST, &mut stream_response);
    }
    let stream_allocations = allocations_in(
        STREAM_REQUESTS,
        &mut stream,
        STREAM_REQUEST,
        &mut stream_response,
    );
    println!(
        "{STREAM_REQUESTS} streams with a declared length: {stream_allocations} heap allocations"
    );
    assert!(stream_response.ends_with(b"Content-Length: 10\r\n\r\n0123401234"));
    assert_eq!(
        stream_allocations, 0,
        "heap allocations in {STREAM_REQUESTS} streams with a declared length"
    );

    files_allocate_nothing(&mut stream);
    failing_routes_allocate_nothing(&mut stream);
    proxied_requests_allocate_nothing(&mut stream);
    streamed_uploads_allocate_nothing(&mut stream);

    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(response.ends_with(br#"{"id":42,"q":"a b","m":"GET"}"#));
    let (_, lua_kib_after) = response_len(&mut stream, mem_request);
    let before_kib: f64 = lua_kib_before.parse().unwrap();
    let after_kib: f64 = lua_kib_after.parse().unwrap();
    println!(
        "{REQUESTS} requests: {allocations} heap allocations ({} per request); \
         Lua heap {before_kib} KiB before, {after_kib} KiB after",
        allocations as f64 / REQUESTS as f64
    );
    assert_eq!(
        allocations, 0,
        "heap allocations in {REQUESTS} keep-alive requests"
    );
    // LuaJIT's incremental GC keeps per-request garbage (ctx tables and
    // strings) collected: the heap must not grow with the request count.
    assert!(
        after_kib < before_kib + 1024.0,
        "Lua heap grew from {before_kib} to {after_kib} KiB"
    );
}

/// Static files (one 4 KiB file, through the open-file cache, read into the
/// send buffer behind its head), conditional requests answered 304 and a
/// file chosen by Lua: zero allocations each, warm.
fn files_allocate_nothing(stream: &mut TcpStream) {
    const FILE_REQUEST: &[u8] = b"GET /assets/file.bin HTTP/1.1\r\nHost: test\r\n\r\n";
    const PAGE_REQUEST: &[u8] = b"GET /page HTTP/1.1\r\nHost: test\r\n\r\n";
    let (file_len, body) = response_len(stream, FILE_REQUEST);
    assert_eq!(body.len(), 4096);
    let mut file_response = vec![0u8; file_len];
    exchange(stream, FILE_REQUEST, &mut file_response);
    let head = String::from_utf8_lossy(&file_response).into_owned();
    let etag = head
        .lines()
        .find_map(|line| line.strip_prefix("ETag: "))
        .expect("an ETag")
        .to_owned();
    let conditional =
        format!("GET /assets/file.bin HTTP/1.1\r\nHost: test\r\nIf-None-Match: {etag}\r\n\r\n");
    let (not_modified_len, _) = response_len(stream, conditional.as_bytes());
    let mut not_modified = vec![0u8; not_modified_len];
    let (page_len, page) = response_len(stream, PAGE_REQUEST);
    assert_eq!(page, "a page chosen by Lua\n");
    let mut page_response = vec![0u8; page_len];
    for _ in 0..100 {
        exchange(stream, FILE_REQUEST, &mut file_response);
        exchange(stream, conditional.as_bytes(), &mut not_modified);
        exchange(stream, PAGE_REQUEST, &mut page_response);
    }
    let windows: [(&str, &[u8], &mut [u8]); 3] = [
        ("static-file", FILE_REQUEST, &mut file_response),
        ("304", conditional.as_bytes(), &mut not_modified),
        ("Lua-chosen file", PAGE_REQUEST, &mut page_response),
    ];
    for (what, request, response) in windows {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for round in 0..1000 {
            if round == 500 {
                // Past the cache's validity: the file is opened and stat'ed
                // again (on the ring) in the middle of the window.
                std::thread::sleep(keystone_conn::FILE_CACHE_VALID + Duration::from_millis(100));
            }
            exchange(stream, request, response);
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("1000 {what} requests: {allocations} heap allocations");
        assert_eq!(allocations, 0, "heap allocations in 1000 {what} requests");
    }
    assert!(file_response.ends_with(&[b'f'; 4096]));
    assert!(not_modified.starts_with(b"HTTP/1.1 304 Not Modified\r\n"));
    assert!(page_response.ends_with(b"a page chosen by Lua\n"));
}

/// A route that raises: its first failure in an error window is reported
/// (a traceback and a log line, which allocate), the repeats are only
/// counted and must cost nothing, the error's message included.
fn failing_routes_allocate_nothing(stream: &mut TcpStream) {
    const FAILING: &[u8] = b"GET /boom HTTP/1.1\r\nHost: test\r\n\r\n";
    const FAILURES: u64 = 500;
    let (len, _) = response_len(stream, FAILING);
    let mut response = vec![0u8; len];
    for _ in 0..50 {
        exchange(stream, FAILING, &mut response);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 500 "),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let allocations = allocations_in(FAILURES, stream, FAILING, &mut response);
    println!("{FAILURES} failing requests: {allocations} heap allocations");
    // A window that ends during the run reports the site once more (and
    // the tick logs the repeats' summary): a few allocations, never one
    // per failure.
    assert!(
        allocations < FAILURES / 50,
        "{allocations} heap allocations in {FAILURES} failing requests"
    );
}

/// A proxied request on a kept-alive upstream connection: forwarded head
/// written in place, the response parsed in place and relayed.
fn proxied_requests_allocate_nothing(stream: &mut TcpStream) {
    let (len, body) = response_len(stream, PROXIED_REQUEST);
    assert_eq!(body, "upstream");
    let mut response = vec![0u8; len];
    for _ in 0..200 {
        exchange(stream, PROXIED_REQUEST, &mut response);
    }
    let allocations = allocations_in(PROXIED_REQUESTS, stream, PROXIED_REQUEST, &mut response);
    println!("{PROXIED_REQUESTS} proxied requests: {allocations} heap allocations");
    assert!(
        response.ends_with(b"\r\n\r\nupstream"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(
        allocations, 0,
        "heap allocations in {PROXIED_REQUESTS} proxied requests"
    );
}

/// Proxied uploads past `--max-body-bytes`: the body streams through the
/// client's receive buffer into the upstream connection's send buffer as
/// the upstream takes it.
fn streamed_uploads_allocate_nothing(stream: &mut TcpStream) {
    const UPLOADS: u64 = 200;
    const BODY_BYTES: usize = 64 * 1024;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY_BYTES}\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend(std::iter::repeat_n(b'u', BODY_BYTES));
    let (len, body) = response_len(stream, &request);
    assert_eq!(body, "upstream");
    let mut response = vec![0u8; len];
    for _ in 0..20 {
        exchange(stream, &request, &mut response);
    }
    let allocations = allocations_in(UPLOADS, stream, &request, &mut response);
    println!("{UPLOADS} streamed 64 KiB uploads: {allocations} heap allocations");
    assert!(response.ends_with(b"\r\n\r\nupstream"));
    assert_eq!(
        allocations, 0,
        "heap allocations in {UPLOADS} streamed uploads"
    );
}
