//! Issue 5 end to end: static directories and Lua-chosen files (sent by
//! splice, confined to their root, with validators and ranges), and
//! streams pulled by the reactor only as the socket drains.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use keystone_tests::{curl, Server};

fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let public = dir.path().join("public");
    std::fs::create_dir_all(public.join("sub")).unwrap();
    std::fs::write(public.join("style.css"), "body{color:red}\n").unwrap();
    std::fs::write(public.join("index.html"), "<h1>index</h1>\n").unwrap();
    std::fs::write(public.join("sub/a.txt"), "inner\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(public.join("big.bin"), big).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), public.join("escape")).unwrap();
    dir
}

fn app(public: &Path) -> String {
    format!(
        r#"return {{
  static = {{ ["/assets/"] = "{}" }},
  routes = {{
    ["GET /file"] = function(ctx) ctx.headers["X-Policy"] = "yes"; ctx.body = {{ file = "page.txt" }} end,
    ["PUT /file"] = function(ctx) ctx.body = {{ file = "page.txt" }} end,
    ["GET /missing-file"] = function(ctx) ctx.body = {{ file = "nope.txt" }} end,
    ["GET /escape-file"] = function(ctx) ctx.body = {{ file = "../../etc/passwd" }} end,
    ["GET /abs-link-file"] = function(ctx) ctx.body = {{ file = "abs-page.txt" }} end,
    ["GET /out-link-file"] = function(ctx) ctx.body = {{ file = "out-page.txt" }} end,
    ["GET /stream"] = function(ctx)
      local n = 0
      ctx.body = function() n = n + 1; if n > 3 then return nil end; return "chunk" .. n .. "\n" end
    end,
    ["GET /broken-stream"] = function(ctx)
      local n = 0
      ctx.body = function() n = n + 1; if n > 2 then error("generator broke") end; return "x" end
    end,
    ["GET /endless"] = function(ctx)
      local piece = string.rep("e", 4096)
      ctx.body = function() return piece end
    end,
    ["GET /"] = function(ctx) ctx.body = "alive" end,
  }},
}}"#,
        public.display()
    )
}

fn start(site: &tempfile::TempDir) -> Server {
    let server = Server::start(Some(&app(&site.path().join("public"))), &[]);
    let dir = server.app_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("page.txt"), "policy page\n").unwrap();
    server
}

#[test]
fn static_files_with_validators_ranges_and_confinement() {
    let site = site();
    let server = start(&site);
    let url = |p: &str| server.url(p);

    let css = curl(&[&url("/assets/style.css")]);
    assert_eq!(css.status, 200);
    assert_eq!(css.body_str(), "body{color:red}\n");
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(css.header("content-length"), Some("16"));
    assert_eq!(css.header("accept-ranges"), Some("bytes"));
    let etag = css.header("etag").expect("etag").to_owned();
    let last_modified = css
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let cases: &[(&[&str], u16, Option<&str>)] = &[
        (&["-H", &format!("If-None-Match: {etag}")], 304, None),
        (
            &["-H", &format!("If-None-Match: \"other\", W/{etag}")],
            304,
            None,
        ),
        (
            &["-H", "If-None-Match: \"other\""],
            200,
            Some("body{color:red}\n"),
        ),
        (
            &["-H", &format!("If-Modified-Since: {last_modified}")],
            304,
            None,
        ),
        (
            &["-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
            200,
            Some("body{color:red}\n"),
        ),
        (&["-r", "0-3"], 206, Some("body")),
        (&["-r", "-4"], 206, Some("ed}\n")),
        (&["-r", "100-200"], 416, Some("")),
        (
            &["-H", "If-Range: \"stale\"", "-r", "0-3"],
            200,
            Some("body{color:red}\n"),
        ),
        // If-Range's date form: exactly the Last-Modified date (RFC 9110
        // §13.1.5), or an older one.
        (
            &["-H", &format!("If-Range: {last_modified}"), "-r", "0-3"],
            206,
            Some("body"),
        ),
        (
            &["-H", "If-Range: Thu, 01 Jan 1970 00:00:00 GMT", "-r", "0-3"],
            200,
            Some("body{color:red}\n"),
        ),
        // If-Match and If-Unmodified-Since (RFC 9110 §13.1.1, §13.1.4).
        (
            &["-H", &format!("If-Match: {etag}"), "-r", "0-3"],
            206,
            Some("body"),
        ),
        (&["-H", "If-Match: \"stale\""], 412, Some("")),
        (&["-H", "If-Match: *"], 200, Some("body{color:red}\n")),
        (
            &["-H", &format!("If-Unmodified-Since: {last_modified}")],
            200,
            Some("body{color:red}\n"),
        ),
        (
            &["-H", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
            412,
            Some(""),
        ),
    ];
    for (args, status, body) in cases {
        let mut all: Vec<&str> = args.to_vec();
        let target = url("/assets/style.css");
        all.push(&target);
        let response = curl(&all);
        assert_eq!(response.status, *status, "{args:?}");
        if let Some(body) = body {
            assert_eq!(response.body_str(), *body, "{args:?}");
        }
    }
    let partial = curl(&["-r", "0-3", &url("/assets/style.css")]);
    assert_eq!(partial.header("content-range"), Some("bytes 0-3/16"));
    let unsatisfiable = curl(&["-r", "100-200", &url("/assets/style.css")]);
    assert_eq!(unsatisfiable.header("content-range"), Some("bytes */16"));

    let head = curl(&["-I", &url("/assets/style.css")]);
    assert_eq!(head.header("content-length"), Some("16"));
    assert!(head.body.is_empty());

    let index = curl(&[&url("/assets/")]);
    assert_eq!(index.body_str(), "<h1>index</h1>\n");
    assert_eq!(index.header("content-type"), Some("text/html"));
    assert_eq!(curl(&[&url("/assets/sub/a.txt")]).body_str(), "inner\n");

    // A symlink out of the root is the files layer's 403; a dot-segment,
    // written or encoded, is refused (400) before any route is chosen.
    let confinement: &[(&str, u16)] = &[
        ("/assets/escape", 403),
        ("/assets/../secret.txt", 400),
        ("/assets/%2e%2e/secret.txt", 400),
        ("/assets/sub/%2E%2E/%2e%2e/secret.txt", 400),
        ("/assets/a%00b", 400),
        ("/assets/nope.css", 404),
    ];
    for (path, status) in confinement {
        let response = curl(&["--path-as-is", &url(path)]);
        assert_eq!(response.status, *status, "{path}");
        assert!(!response.body_str().contains("secret"), "{path}");
    }
    assert_eq!(curl(&["-X", "POST", &url("/assets/style.css")]).status, 405);

    // A policy's file on another method than GET: a matching
    // If-None-Match is a 412, never a 304, and a range does not apply.
    let page = curl(&[&url("/file")]);
    let page_etag = page.header("etag").expect("etag").to_owned();
    let put = |extra: &[&str]| {
        let target = url("/file");
        let mut args = vec!["-X", "PUT"];
        args.extend_from_slice(extra);
        args.push(&target);
        curl(&args)
    };
    let matched = format!("If-None-Match: {page_etag}");
    assert_eq!(put(&["-H", &matched]).status, 412);
    let ranged = put(&["-r", "0-3"]);
    assert_eq!(ranged.status, 200);
    assert_eq!(ranged.body_str(), "policy page\n");
}

#[test]
fn big_file_arrives_byte_for_byte() {
    let site = site();
    let server = start(&site);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let body = read_one(&mut stream);
        let expected = std::fs::read(site.path().join("public/big.bin")).unwrap();
        assert_eq!(body.len(), expected.len());
        assert!(body == expected, "file bytes differ");
    }
    // The connection is still usable after two spliced files.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut stream), b"alive");
}

/// Reads one Content-Length response and returns its body.
fn read_one(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    body
}

#[test]
fn file_that_shrinks_mid_send_never_corrupts_framing() {
    let site = site();
    let path = site.path().join("public/huge.bin");
    std::fs::write(&path, vec![b'h'; 32 * 1024 * 1024]).unwrap();
    let server = start(&site);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /assets/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    stream.read_exact(&mut first).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let total = first.len() + rest.len();
    assert!(
        total < 32 * 1024 * 1024,
        "the whole announced length cannot arrive after truncation"
    );
    // Nothing after the body: the connection closed instead of sending a
    // next response into a body the client still expects.
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "framing corrupted"
    );
}

#[test]
fn lua_chosen_files() {
    let site = site();
    let server = start(&site);
    let page = curl(&[&server.url("/file")]);
    assert_eq!(page.status, 200);
    assert_eq!(page.body_str(), "policy page\n");
    assert_eq!(page.header("x-policy"), Some("yes"));
    assert_eq!(page.header("content-type"), Some("text/plain"));
    assert_eq!(curl(&[&server.url("/missing-file")]).status, 404);
    assert_eq!(curl(&[&server.url("/escape-file")]).status, 403);
}

#[test]
fn streams_are_chunked_and_aborted_on_error() {
    let site = site();
    let server = start(&site);
    let stream = curl(&[&server.url("/stream")]);
    assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
    assert!(stream.header("content-length").is_none());
    assert_eq!(stream.body_str(), "chunk1\nchunk2\nchunk3\n");

    let mut raw = server.raw();
    raw.send(b"GET /stream HTTP/1.0\r\n\r\n");
    let bytes = raw.expect_closed("HTTP/1.0 stream ends by closing");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.ends_with("\r\n\r\nchunk1\nchunk2\nchunk3\n"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );

    let mut raw = server.raw();
    raw.send(b"GET /broken-stream HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let bytes = raw.expect_closed("an aborted stream closes the connection");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("1\r\nx\r\n1\r\nx\r\n"), "{text}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "no terminating chunk after an error: {text}"
    );
    assert!(
        !text.contains("alive"),
        "nothing answered after an aborted stream: {text}"
    );
    let log = server.wait_for_log("generator broke", Duration::from_secs(5));
    assert!(log.contains("app.lua:"), "{log}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A slow reader of an endless stream: the generator is pulled only as the
/// socket drains, so server memory stays bounded (the send buffer plus the
/// kernel's socket buffers), and other clients are served normally.
#[test]
fn endless_stream_to_a_slow_reader_keeps_memory_bounded() {
    const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;
    let site = site();
    let server = start(&site);
    let before = rss_kib(server.pid());
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let mut worst = Duration::ZERO;
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(20) {
        slow.read_exact(&mut byte).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let mut other = TcpStream::connect(server.addr()).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        other
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_one(&mut other), b"alive");
        worst = worst.max(t.elapsed());
        peak = peak.max(rss_kib(server.pid()));
    }
    println!("RSS before {before} KiB, peak {peak} KiB during a 20 s slow read; worst other-client latency {worst:?}");
    assert!(
        peak < before + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {before} to {peak} KiB"
    );
    assert!(
        worst < Duration::from_millis(500),
        "another client waited {worst:?}"
    );
}

/// Static prefixes are router entries: GET and HEAD serve the directory
/// (the bare prefix too when it has no trailing slash), other methods get
/// 405 with `Allow: GET, HEAD`, and a Lua route below a prefix wins over
/// the directory, as the longest location wins in nginx.
#[test]
fn static_prefixes_are_routes() {
    let site = site();
    let public = site.path().join("public");
    let app = format!(
        r#"return {{
  static = {{ ["/assets/"] = "{0}", ["/bare"] = "{0}" }},
  routes = {{
    ["GET /assets/special"] = function(ctx) ctx.body = "from lua" end,
    ["GET /"] = function(ctx) ctx.body = "root" end,
  }},
}}"#,
        public.display()
    );
    let server = Server::start(Some(&app), &[]);
    let url = |p: &str| server.url(p);
    let table: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/assets/style.css", 200, Some("body{color:red}\n")),
        ("GET", "/assets/", 200, Some("<h1>index</h1>\n")),
        ("GET", "/assets/special", 200, Some("from lua")),
        ("GET", "/assets", 404, None),
        // A directory without its slash is sent to it (nginx's 301), the
        // slash-less prefix's own directory too.
        ("GET", "/bare", 301, Some("Moved Permanently\n")),
        ("GET", "/bare/", 200, Some("<h1>index</h1>\n")),
        ("GET", "/assets/sub", 301, None),
        ("GET", "/bare/sub/a.txt", 200, Some("inner\n")),
        ("GET", "/bareX", 404, None),
        ("GET", "/", 200, Some("root")),
    ];
    for (method, path, status, body) in table {
        let response = curl(&["-X", method, &url(path)]);
        assert_eq!(response.status, *status, "{method} {path}");
        if let Some(body) = body {
            assert_eq!(response.body_str(), *body, "{method} {path}");
        }
    }
    for (path, location) in [
        ("/bare", "/bare/"),
        ("/assets/sub?page=2", "/assets/sub/?page=2"),
    ] {
        let moved = curl(&[&url(path)]);
        assert_eq!(moved.status, 301, "{path}");
        assert_eq!(moved.header("location"), Some(location), "{path}");
    }
    // Followed, the redirect lands on the index (curl -L resolves the
    // relative Location against the request's URL).
    let followed = keystone_tests::curl_body(&["-L", &url("/bare")]);
    assert_eq!(followed, "<h1>index</h1>\n");
    let post = curl(&["-X", "POST", &url("/bare/style.css")]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = curl(&["-I", &url("/bare/style.css")]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("16"));
}

/// Issue 13: a symlink under a root, relative or absolute, whose target is
/// inside the root is served (as nginx does); only a target outside is 403.
/// The same holds for `ctx.body = { file = ... }` beneath the app's directory.
#[test]
fn symlinks_inside_the_root_are_served_and_outside_refused() {
    use std::os::unix::fs::symlink;
    let site = site();
    let public = site.path().join("public");
    // Absolute and relative links to a file inside, a linked directory,
    // a chain of links, and links out (absolute, relative, via a directory).
    symlink(public.join("style.css"), public.join("abs-inside.css")).unwrap();
    symlink("sub/a.txt", public.join("rel-inside.txt")).unwrap();
    symlink(public.join("sub"), public.join("abs-dir")).unwrap();
    symlink(public.join("abs-inside.css"), public.join("chain.css")).unwrap();
    symlink("../secret.txt", public.join("rel-escape")).unwrap();
    symlink(site.path(), public.join("abs-dir-out")).unwrap();
    symlink("/etc/passwd", public.join("passwd")).unwrap();
    let server = start(&site);
    let app_dir = server.app_path().parent().unwrap().to_path_buf();
    symlink(app_dir.join("page.txt"), app_dir.join("abs-page.txt")).unwrap();
    symlink("/etc/hostname", app_dir.join("out-page.txt")).unwrap();
    let url = |p: &str| server.url(p);
    let cases: &[(&str, u16, &str)] = &[
        ("/assets/abs-inside.css", 200, "body{color:red}\n"),
        ("/assets/rel-inside.txt", 200, "inner\n"),
        ("/assets/abs-dir/a.txt", 200, "inner\n"),
        ("/assets/chain.css", 200, "body{color:red}\n"),
        ("/assets/escape", 403, ""),
        ("/assets/rel-escape", 403, ""),
        ("/assets/abs-dir-out/secret.txt", 403, ""),
        ("/assets/passwd", 403, ""),
    ];
    for round in 0..2 {
        // The second round is answered from the open-file cache.
        for (path, status, body) in cases {
            let response = curl(&[&url(path)]);
            assert_eq!(response.status, *status, "round {round}: {path}");
            if *status == 200 {
                assert_eq!(response.body_str(), *body, "round {round}: {path}");
            } else {
                assert!(!response.body_str().contains("secret"), "{path}");
                assert!(!response.body_str().contains("root:"), "{path}");
            }
        }
    }
    assert_eq!(curl(&[&url("/abs-link-file")]).body_str(), "policy page\n");
    assert_eq!(curl(&[&url("/out-link-file")]).status, 403);
}
