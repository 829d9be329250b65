//! keystone-conn in isolation: the HTTP/1.1 server connection driven by the
//! in-process driver (`sim`) with the plain-Rust policy (`FakePolicy`) —
//! framing, pipelining, keep-alive, partial sends, streams, files and the
//! open-file cache, deadlines, draining and lingering close, each checked
//! on the exact bytes the connection sends and the operations it asks for.

use std::path::Path;
use std::time::Duration;

use keystone_conn::sim::{
    check_responses, normalize, pattern, write_site, FakePolicy, Response, Sim, BIG, POLICY_ETAG,
    POLICY_LAST_MODIFIED, TINY_CHUNKS,
};
use keystone_conn::{Config, Root, Timeouts, FILE_CACHE_VALID, IDLE_RELEASE_AFTER};
use keystone_parser::Limits;

/// Fake descriptors the simulator maps to directories.
const FILES_DIR: i32 = 7_000;
const STATIC_DIR: i32 = 7_001;

/// The fake policy's site (`sim::write_site`), in a fresh directory.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_site(dir.path()).expect("the site is written");
    dir
}

fn sim_with(config: Config, site: &Path) -> Sim<FakePolicy> {
    let policy = FakePolicy::new(
        Root {
            id: 1,
            dir: FILES_DIR,
        },
        Root {
            id: 2,
            dir: STATIC_DIR,
        },
    );
    let mut sim = Sim::new(policy, config);
    sim.root(FILES_DIR, &site.join("files"));
    sim.root(STATIC_DIR, &site.join("public"));
    sim
}

fn sim(site: &Path) -> Sim<FakePolicy> {
    sim_with(Config::default(), site)
}

/// Feeds `input`, returns the responses (checked well formed).
fn exchange(sim: &mut Sim<FakePolicy>, input: &[u8]) -> Vec<Response> {
    sim.feed(input);
    let out = sim.take_output();
    match check_responses(&out) {
        Ok(responses) => responses,
        Err(err) => panic!("{err}\noutput: {:?}", String::from_utf8_lossy(&out)),
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

fn header<'a>(raw: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(raw).ok()?;
    let head = &text[..text.find("\r\n\r\n")?];
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[test]
fn requests_are_answered_in_order_and_the_connection_kept() {
    let site = site();
    let mut sim = sim(site.path());
    let mut input = get("/");
    input.extend(get("/missing"));
    input.extend(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    input.extend(b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n");
    let responses = exchange(&mut sim, &input);
    let got: Vec<(u16, &[u8])> = responses
        .iter()
        .map(|r| (r.status, r.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            (200, &b"hello"[..]),
            (404, b"Not Found\n"),
            (200, b"len=3 hex=616263"),
            (405, b"Method Not Allowed\n"),
        ]
    );
    assert!(!sim.closed() && !sim.write_shut(), "keep-alive");
    assert_eq!(
        sim.policy.answered,
        [(200, 5), (404, 10), (200, 16), (405, 19)],
        "each committed head reports its status and announced length"
    );
    // One receive took the four pipelined requests; their answers left in
    // one send.
    assert_eq!(sim.counts["send"], 1);
}

#[test]
fn any_split_of_the_input_and_any_partial_send_give_the_same_bytes() {
    let site = site();
    let mut input = get("/");
    input.extend(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2;x=1\r\nab\r\n1\r\nc\r\n0\r\nT: v\r\n\r\n");
    input.extend(get("/stream"));
    input.extend(get("/big"));
    input.extend(get("/h"));
    input.extend(get("/file/page.txt"));
    input.extend(get("/static/style.css"));
    input.extend(b"HEAD /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let whole = {
        let mut sim = sim(site.path());
        sim.feed(&input);
        normalize(&sim.take_output())
    };
    check_responses(&whole).expect("well formed");
    let patterns: &[(&[usize], &[usize])] = &[
        (&[1], &[]),
        (&[3, 17], &[1]),
        (&[64], &[7, 1000]),
        (&[1000], &[4096, 3]),
    ];
    for (reads, sends) in patterns {
        let mut sim = sim(site.path());
        sim.recv_sizes(reads.to_vec());
        if !sends.is_empty() {
            sim.send_sizes(sends.to_vec());
        }
        sim.feed(&input);
        let out = normalize(&sim.take_output());
        assert!(
            out == whole,
            "reads {reads:?}, sends {sends:?}: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(400)])
        );
        assert_eq!(sim.policy.pins, 0, "every pin released");
    }
}

#[test]
fn a_head_arriving_in_pieces_is_not_rescanned_and_its_timer_keeps_counting() {
    let site = site();
    let config = Config {
        timeouts: Timeouts {
            header: Duration::from_secs(5),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    let head = get("/");
    for byte in &head[..head.len() - 1] {
        sim.feed(&[*byte]);
        sim.advance(Duration::from_millis(100));
    }
    assert!(sim.take_output().is_empty());
    sim.advance(Duration::from_secs(3)); // 5 s since the first byte
    let out = sim.take_output();
    assert!(
        out.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(header(&out, "connection"), Some("close"));
    assert!(sim.write_shut(), "FIN after the 408");
}

#[test]
fn bodies_arrive_across_reads_and_100_continue_is_sent_once_when_waited_for() {
    let site = site();
    let mut sim = sim(site.path());
    sim.feed(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    assert_eq!(sim.take_output(), b"HTTP/1.1 100 Continue\r\n\r\n");
    sim.feed(b"ab");
    assert!(sim.take_output().is_empty(), "no second 100");
    let responses = exchange(&mut sim, b"cd");
    assert_eq!(responses[0].body, b"len=4 hex=61626364");
    // The body with the head: no interim response at all.
    let responses = exchange(
        &mut sim,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
    );
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 200);
}

#[test]
fn framing_errors_answer_once_then_close_with_a_lingering_fin() {
    let site = site();
    let table: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n", 413),
    ];
    for (request, status) in table {
        let mut sim = sim(site.path());
        let mut input = request.to_vec();
        input.extend(get("/")); // never answered
        let responses = exchange(&mut sim, &input);
        assert_eq!(responses.len(), 1, "{}", String::from_utf8_lossy(request));
        assert_eq!(responses[0].status, *status);
        assert!(responses[0].close);
        assert!(
            sim.write_shut() && !sim.closed(),
            "lingering: FIN, reads drained"
        );
        assert_eq!(
            sim.policy.refused,
            [*status],
            "counted, never seen by policy"
        );
        sim.feed(b"more bytes the client still sends");
        assert!(!sim.closed());
        sim.close_input();
        assert!(sim.closed(), "closed once the peer closes");
    }
}

#[test]
fn a_lingering_connection_closes_at_its_deadline() {
    let site = site();
    let mut sim = sim(site.path());
    exchange(
        &mut sim,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(sim.write_shut() && !sim.closed());
    sim.advance(Duration::from_secs(3));
    assert!(sim.closed());
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked_for() {
    let site = site();
    let mut sim = sim(site.path());
    let responses = exchange(
        &mut sim,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(!responses[0].close);
    assert!(!sim.write_shut());
    let responses = exchange(
        &mut sim,
        b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(responses[0].body, b"chunk1chunk2chunk3", "close-delimited");
    assert!(responses[0].close);
    assert!(sim.write_shut());
}

#[test]
fn pinned_bodies_go_out_whole_through_partial_sends() {
    let site = site();
    let mut sim = sim(site.path());
    sim.send_sizes(vec![1, 4095, 60_001, 13]);
    let responses = exchange(&mut sim, &get("/big"));
    assert_eq!(responses[0].body, BIG);
    assert_eq!(sim.policy.pins, 0);
}

#[test]
fn streams_are_pulled_as_the_socket_drains_and_their_length_is_enforced() {
    let site = site();
    let mut sim = sim(site.path());
    let responses = exchange(&mut sim, &get("/stream"));
    assert_eq!(responses[0].body, b"chunk1chunk2chunk3");
    // Exactly the declared length: keep-alive.
    let responses = exchange(&mut sim, &get("/declared/10"));
    assert_eq!(responses[0].body, b"0123456789");
    assert!(!sim.write_shut());
    // HEAD and a declared 0 never pull.
    let responses = exchange(&mut sim, b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(responses[0].bodyless);
    assert_eq!(sim.policy.pins, 0);
    // More than declared: exactly N sent, logged, closed.
    let out = {
        sim.feed(&get("/declared/4"));
        sim.take_output()
    };
    assert!(
        out.ends_with(b"\r\n\r\n0123"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(sim.write_shut());
    assert!(sim
        .policy
        .logs
        .iter()
        .any(|l| l.contains("more than the 4 bytes")));
    // Fewer than declared: aborted, logged, closed.
    let mut sim2 = sim_with(Config::default(), site.path());
    sim2.feed(&get("/declared/20"));
    let out = sim2.take_output();
    assert!(out.ends_with(b"0123456789"));
    assert!(sim2.write_shut());
    assert!(sim2
        .policy
        .logs
        .iter()
        .any(|l| l.contains("ended after 10 of the 20")));
    assert_eq!(sim2.policy.pins, 0);
}

#[test]
fn a_generator_of_tiny_chunks_is_pulled_a_bounded_number_of_times_per_send() {
    // Each pull is bounded by the handler budget; between two sends a
    // stream gets at most 64 pulls, however small its chunks, so it
    // cannot hold the worker for 32 KiB of one-byte chunks.
    let site = site();
    let mut sim = sim(site.path());
    sim.stall_peer(true);
    sim.feed(&get("/tiny-stream"));
    assert_eq!(sim.policy.pulls, 64, "pulls before the first send");
    sim.stall_peer(false);
    let responses = check_responses(&sim.take_output()).expect("well-formed");
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].body, vec![b'x'; TINY_CHUNKS]);
    assert_eq!(sim.policy.pins, 0);
    assert_eq!(sim.policy.pulls as usize, TINY_CHUNKS + 1, "and the end");
}

#[test]
fn a_failing_or_stuck_generator_aborts_without_a_terminating_chunk() {
    let site = site();
    for path in ["/failing-stream", "/empty-stream"] {
        let mut sim = sim(site.path());
        sim.feed(&get(path));
        let out = sim.take_output();
        assert!(
            !out.ends_with(b"0\r\n\r\n"),
            "{path}: must not look complete"
        );
        assert!(sim.write_shut(), "{path}");
        assert_eq!(sim.policy.pins, 0, "{path}");
        assert_eq!(sim.policy.logs.len(), 1, "{path}: {:?}", sim.policy.logs);
    }
}

#[test]
fn a_stalled_reader_holds_at_most_the_send_buffer_then_times_out() {
    let site = site();
    let config = Config {
        timeouts: Timeouts {
            send: Duration::from_secs(3),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    sim.stall_peer(true);
    sim.feed(&get("/big"));
    assert!(!sim.closed());
    sim.advance(Duration::from_secs(4));
    assert!(sim.closed(), "send timeout closes");
    assert_eq!(sim.policy.pins, 0, "the pinned body is released");
}

#[test]
fn static_files_use_the_open_file_cache_within_its_validity() {
    let site = site();
    let mut sim = sim(site.path());
    let first = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(first[0].body, b"body{color:red}\n");
    assert_eq!((sim.counts["open"], sim.counts["stat"]), (1, 1));
    let again = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(again[0].body, b"body{color:red}\n");
    assert_eq!(
        sim.counts["open"], 1,
        "served from the cache: no open, no stat"
    );
    assert_eq!(sim.open_files(), 1, "the cache keeps the descriptor");
    sim.advance(FILE_CACHE_VALID);
    exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(sim.counts["open"], 2, "stale: opened and stat'ed again");
    assert_eq!(sim.open_files(), 1, "the replaced descriptor was closed");
}

#[test]
fn a_small_cached_file_is_kept_and_served_without_a_read() {
    let site = site();
    let css = site.path().join("public/style.css");
    let mut sim = sim(site.path());
    let first = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(first[0].body, b"body{color:red}\n");
    assert_eq!(sim.counts["read_file"], 1);
    for _ in 0..3 {
        let again = exchange(&mut sim, &get("/static/style.css"));
        assert_eq!(again[0].body, b"body{color:red}\n");
    }
    assert_eq!(
        sim.counts["read_file"], 1,
        "hits answered from the kept bytes"
    );
    assert_eq!(
        sim.counts["send"], 4,
        "head and body still leave in one send"
    );
    // A range of a kept file comes from memory too.
    let range = exchange(
        &mut sim,
        b"GET /static/style.css HTTP/1.1\r\nHost: t\r\nRange: bytes=5-9\r\n\r\n",
    );
    assert_eq!((range[0].status, &range[0].body[..]), (206, &b"color"[..]));
    assert_eq!(sim.counts["read_file"], 1);
    // Changed in place inside the cache's window: served as it was kept,
    // bytes and validators agreeing; past the window, the new bytes.
    std::fs::write(&css, b"BODY{COLOR:RED}\n").unwrap();
    let kept = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(kept[0].body, b"body{color:red}\n");
    sim.advance(FILE_CACHE_VALID);
    let fresh = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(fresh[0].body, b"BODY{COLOR:RED}\n");
    assert_eq!(
        sim.counts["read_file"], 2,
        "a new open reads and keeps again"
    );
    let again = exchange(&mut sim, &get("/static/style.css"));
    assert_eq!(again[0].body, b"BODY{COLOR:RED}\n");
    assert_eq!(sim.counts["read_file"], 2);
    // A file policy chose is kept alike (its headers are policy's).
    for _ in 0..2 {
        let small = exchange(&mut sim, &get("/file/small.bin"));
        assert_eq!(small[0].body, pattern(10 * 1024));
    }
    assert_eq!(sim.counts["read_file"], 3);
}

#[test]
fn static_answers_confinement_index_conditionals_and_ranges() {
    let site = site();
    let mut sim = sim(site.path());
    let first = {
        sim.feed(&get("/static/style.css"));
        sim.take_output()
    };
    let etag = header(&first, "etag").expect("etag").to_owned();
    let modified = header(&first, "last-modified")
        .expect("last-modified")
        .to_owned();
    assert_eq!(header(&first, "content-type"), Some("text/css"));
    assert_eq!(header(&first, "accept-ranges"), Some("bytes"));
    let with =
        |headers: &str| format!("GET /static/style.css HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    let table: Vec<(String, u16, &[u8])> = vec![
        (with(&format!("If-None-Match: {etag}\r\n")), 304, b""),
        (
            with(&format!("If-None-Match: \"x\", W/{etag}\r\n")),
            304,
            b"",
        ),
        (with("If-None-Match: \"x\"\r\n"), 200, b"body{color:red}\n"),
        (
            with(&format!("If-Modified-Since: {modified}\r\n")),
            304,
            b"",
        ),
        (with("Range: bytes=0-3\r\n"), 206, b"body"),
        (with("Range: bytes=-4\r\n"), 206, b"ed}\n"),
        (with("Range: bytes=100-200\r\n"), 416, b""),
        (
            with("If-Range: \"stale\"\r\nRange: bytes=0-3\r\n"),
            200,
            b"body{color:red}\n",
        ),
        (
            String::from_utf8(get("/static/")).unwrap(),
            200,
            b"<h1>index</h1>\n",
        ),
        (
            String::from_utf8(get("/static/docs/")).unwrap(),
            200,
            b"<h1>docs</h1>\n",
        ),
        (
            String::from_utf8(get("/static/escape")).unwrap(),
            403,
            b"Forbidden\n",
        ),
        (
            String::from_utf8(get("/static/nope.css")).unwrap(),
            404,
            b"Not Found\n",
        ),
    ];
    for (request, status, body) in table {
        for round in 0..2 {
            // Twice: a miss (open, stat) and a hit answer alike.
            let responses = exchange(&mut sim, request.as_bytes());
            assert_eq!(responses.len(), 1, "{request:?} round {round}");
            assert_eq!(responses[0].status, status, "{request:?} round {round}");
            assert_eq!(responses[0].body, body, "{request:?} round {round}");
        }
    }
    // A dot-segment, written or encoded, never reaches the directory: the
    // request is refused (400, then close) before any route is chosen.
    for path in ["/static/../outside.txt", "/static/%2e%2e/outside.txt"] {
        let mut refused = sim_with(Config::default(), site.path());
        let responses = exchange(&mut refused, &get(path));
        assert_eq!(responses[0].status, 400, "{path}");
        assert!(
            !refused.counts.contains_key("open"),
            "{path}: opened a file"
        );
    }
    let head = {
        sim.feed(b"HEAD /static/style.css HTTP/1.1\r\nHost: t\r\n\r\n");
        sim.take_output()
    };
    assert_eq!(header(&head, "content-length"), Some("16"));
    assert!(head.ends_with(b"\r\n\r\n"), "no body");
    let post = exchange(
        &mut sim,
        b"POST /static/style.css HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post[0].status, 405);
}

#[test]
fn a_directory_without_its_slash_is_redirected_to_it() {
    let site = site();
    let mut sim = sim(site.path());
    // Twice each: before and after the slash form's index is cached.
    for round in 0..2 {
        let out = {
            sim.feed(&get("/static/docs"));
            sim.take_output()
        };
        let responses = check_responses(&out).expect("well formed");
        assert_eq!(responses[0].status, 301, "round {round}");
        assert_eq!(header(&out, "location"), Some("/static/docs/"));
        assert_eq!(responses[0].body, b"Moved Permanently\n");
        let index = exchange(&mut sim, &get("/static/docs/"));
        assert_eq!(index[0].status, 200, "round {round}");
        assert_eq!(index[0].body, b"<h1>docs</h1>\n");
    }
    // The query goes along; a HEAD gets no body; the connection is kept
    // (the next request, pipelined, is answered).
    let out = {
        sim.feed(b"HEAD /static/docs?a=1&b=%2F HTTP/1.1\r\nHost: t\r\n\r\nGET /static/style.css HTTP/1.1\r\nHost: t\r\n\r\n");
        sim.take_output()
    };
    assert_eq!(header(&out, "location"), Some("/static/docs/?a=1&b=%2F"));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("body{color:red}\n"), "{text}");
    // A file is never redirected, nor a missing path.
    assert_eq!(exchange(&mut sim, &get("/static/style.css"))[0].status, 200);
    assert_eq!(exchange(&mut sim, &get("/static/nope"))[0].status, 404);
}

#[test]
fn small_files_leave_with_their_head_large_ones_are_spliced() {
    let site = site();
    let mut sim = sim(site.path());
    let responses = exchange(&mut sim, &get("/file/small.bin"));
    assert_eq!(responses[0].body, pattern(10 * 1024));
    assert_eq!(sim.counts["read_file"], 1);
    assert_eq!(sim.counts["send"], 1, "head and body in one send");
    assert!(!sim.counts.contains_key("splice"));
    sim.send_sizes(vec![1000, 7]);
    let responses = exchange(&mut sim, &get("/file/big.bin"));
    assert_eq!(responses[0].body, pattern(300_000));
    assert!(sim.counts["splice"] >= 10, "{:?}", sim.counts);
    assert_eq!(sim.shared.pipes.available(), 2, "the pipe came back clean");
}

#[test]
fn policy_files_carry_policy_headers_whether_the_cache_hits_or_not() {
    let site = site();
    let mut sim = sim(site.path());
    let miss = {
        sim.feed(&get("/file/page.txt"));
        sim.take_output()
    };
    let hit = {
        sim.feed(&get("/file/page.txt"));
        sim.take_output()
    };
    assert_eq!(normalize(&miss), normalize(&hit));
    assert_eq!(header(&miss, "x-policy"), Some("file"));
    assert!(miss.ends_with(b"policy page\n"));
    assert_eq!(sim.counts["open"], 1);
    let table: &[(&str, u16)] = &[
        ("/file/sub/inner.txt", 200),
        ("/file/missing.txt", 404),
        ("/file//etc/passwd", 404),
        ("/file/sub", 404), // a directory without index.html
        ("/file-declared/12/page.txt", 200),
        ("/file-declared/11/page.txt", 500),
    ];
    for (path, status) in table {
        let responses = exchange(&mut sim, &get(path));
        assert_eq!(responses[0].status, *status, "{path}");
    }
    assert_eq!(sim.policy.pins, 0, "pinned paths released");
    assert!(sim
        .policy
        .logs
        .iter()
        .any(|l| l.contains("does not match the file's 12 bytes")));
}

#[test]
fn validators_policy_sets_on_a_file_replace_the_files_own() {
    // As `ngx.header.ETag` does: one ETag and one Last-Modified, policy's,
    // and the conditionals are checked against them; policy's
    // `Accept-Ranges: none` turns ranges off. The same whether the file
    // was opened (policy's lines stashed) or came from the cache.
    let site = site();
    let mut sim = sim(site.path());
    let count = |raw: &[u8], name: &str| {
        String::from_utf8_lossy(raw)
            .lines()
            .filter(|line| {
                line.split(':')
                    .next()
                    .is_some_and(|found| found.eq_ignore_ascii_case(name))
            })
            .count()
    };
    for round in ["opened", "cached"] {
        sim.feed(&get("/file-validated/page.txt"));
        let out = sim.take_output();
        assert_eq!(header(&out, "etag"), Some(POLICY_ETAG), "{round}");
        assert_eq!(
            header(&out, "last-modified"),
            Some(POLICY_LAST_MODIFIED),
            "{round}"
        );
        assert_eq!(header(&out, "accept-ranges"), Some("none"), "{round}");
        for name in ["etag", "last-modified", "accept-ranges"] {
            assert_eq!(count(&out, name), 1, "{round}: one {name}");
        }
        assert!(out.ends_with(b"policy page\n"), "{round}");
    }
    let with = |line: &str| -> Vec<u8> {
        format!("GET /file-validated/page.txt HTTP/1.1\r\nHost: t\r\n{line}\r\n\r\n").into_bytes()
    };
    let rows: &[(String, u16)] = &[
        (format!("If-None-Match: {POLICY_ETAG}"), 304),
        (format!("If-None-Match: W/{POLICY_ETAG}"), 304),
        // If-Match compares with policy's ETag, strongly.
        (format!("If-Match: {POLICY_ETAG}"), 200),
        ("If-Match: \"other\"".to_string(), 412),
        (format!("If-Modified-Since: {POLICY_LAST_MODIFIED}"), 304),
        (
            "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:36 GMT".to_string(),
            412,
        ),
        ("Range: bytes=0-3".to_string(), 200),
    ];
    for (line, status) in rows {
        let responses = exchange(&mut sim, &with(line));
        assert_eq!(responses[0].status, *status, "{line}");
        if *status == 304 {
            let out = {
                sim.feed(&with(line));
                sim.take_output()
            };
            assert_eq!(count(&out, "etag"), 1, "{line}: {out:?}");
            assert_eq!(header(&out, "etag"), Some(POLICY_ETAG));
        }
    }
    // The file's own validators, where policy set none.
    let plain = exchange(
        &mut sim,
        b"GET /file/page.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\n\r\n",
    );
    assert_eq!(plain[0].status, 206);
    assert_eq!(sim.policy.pins, 0);
}

#[test]
fn idle_connections_give_their_memory_back_then_time_out() {
    let site = site();
    let config = Config {
        timeouts: Timeouts {
            idle: Duration::from_secs(5),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    exchange(&mut sim, &get("/"));
    assert!(!sim.counts.contains_key("release_idle"));
    sim.advance(IDLE_RELEASE_AFTER);
    assert_eq!(sim.counts["release_idle"], 1, "released after a second");
    assert_eq!(sim.counts["cancel"], 1, "the idle read was cancelled first");
    assert!(!sim.closed());
    // Still serving after the release.
    let responses = exchange(&mut sim, &get("/"));
    assert_eq!(responses[0].body, b"hello");
    sim.advance(Duration::from_secs(6));
    assert!(sim.closed(), "keep-alive timeout");
    assert!(sim.take_output().is_empty(), "closed silently");

    // The release does not restart the keep-alive clock: it counts from
    // the last answer (5 s), not from the release (1 s + 5 s).
    let mut sim = sim_with(config, site.path());
    exchange(&mut sim, &get("/"));
    sim.advance(IDLE_RELEASE_AFTER);
    assert_eq!(sim.counts["release_idle"], 1);
    sim.advance(Duration::from_secs(4) - Duration::from_millis(100));
    assert!(!sim.closed(), "closed before the keep-alive timeout");
    sim.advance(Duration::from_millis(200));
    assert!(
        sim.closed(),
        "the keep-alive timeout counts from the last answer"
    );
}

#[test]
fn a_body_that_stalls_gets_408() {
    let site = site();
    let config = Config {
        timeouts: Timeouts {
            body: Duration::from_secs(2),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    sim.feed(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    sim.advance(Duration::from_secs(1));
    sim.feed(b"de");
    sim.advance(Duration::from_secs(1));
    assert!(
        sim.take_output().is_empty(),
        "each read restarts the body timer"
    );
    sim.advance(Duration::from_secs(2));
    let out = sim.take_output();
    assert!(out.starts_with(b"HTTP/1.1 408 "));
}

#[test]
fn draining_closes_idle_connections_and_finishes_busy_ones() {
    let site = site();
    let mut sim = sim(site.path());
    exchange(&mut sim, &get("/"));
    sim.drain();
    assert!(sim.closed(), "idle: closed at once");

    let mut busy = sim_with(Config::default(), site.path());
    busy.stall_peer(true);
    let mut input = get("/big");
    input.extend(get("/"));
    busy.feed(&input);
    busy.drain();
    assert!(!busy.closed(), "a response in progress finishes");
    busy.stall_peer(false);
    let responses = check_responses(&busy.take_output()).expect("well formed");
    assert_eq!(
        responses.len(),
        2,
        "pipelined requests already buffered are answered"
    );
    assert!(busy.write_shut(), "then it closes");
}

/// Requests answered once the drain has begun: the last one the buffer
/// holds says `Connection: close` (a client must not send into a close it
/// cannot see coming), those pipelined before it stay keep-alive.
#[test]
fn answers_given_while_draining_close_after_the_last_buffered_request() {
    let site = site();
    let config = Config {
        max_pipeline: 1,
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    sim.stall_peer(true);
    let mut input = get("/big");
    input.extend(get("/"));
    input.extend(get("/"));
    sim.feed(&input);
    sim.drain();
    sim.stall_peer(false);
    let responses = check_responses(&sim.take_output()).expect("well formed");
    assert_eq!(responses.len(), 3, "every buffered request is answered");
    assert!(!responses[0].close, "answered before the drain began");
    assert!(!responses[1].close, "a request is pipelined behind it");
    assert!(responses[2].close, "the last answer while draining closes");
    assert!(sim.write_shut(), "then it closes");
}

#[test]
fn the_peer_closing_mid_request_closes_without_an_answer() {
    let site = site();
    let mut sim = sim(site.path());
    sim.feed(b"GET / HTTP/1.1\r\nHo");
    sim.close_input();
    assert!(sim.take_output().is_empty());
    assert!(sim.closed());
}

#[test]
fn the_pipeline_bound_paces_answers_without_losing_any() {
    let site = site();
    let config = Config {
        max_pipeline: 2,
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    let mut input = Vec::new();
    for _ in 0..7 {
        input.extend(get("/"));
    }
    let responses = exchange(&mut sim, &input);
    assert_eq!(responses.len(), 7);
    assert!(sim.counts["send"] >= 4, "at most 2 answers per send");
}

#[test]
fn a_chunked_body_survives_compaction_of_a_small_receive_buffer() {
    let site = site();
    let config = Config {
        limits: Limits {
            max_header_bytes: 512,
            max_headers: 16,
            max_uri_bytes: 128,
            max_body_bytes: 512,
        },
        ..Config::default()
    };
    let mut sim = sim_with(config, site.path());
    sim.recv_sizes(vec![300, 1, 77]);
    let mut input = Vec::new();
    for _ in 0..3 {
        input.extend(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..8 {
            input.extend(b"20\r\n");
            input.extend([b'x'; 32]);
            input.extend(b"\r\n");
        }
        input.extend(b"0\r\n\r\n");
    }
    let responses = exchange(&mut sim, &input);
    assert_eq!(responses.len(), 3);
    for response in responses {
        assert!(response.body.starts_with(b"len=256 "));
    }
}

#[test]
fn handler_statuses_and_policy_headers_reach_the_wire() {
    let site = site();
    let mut sim = sim(site.path());
    let out = {
        sim.feed(&get("/h"));
        sim.take_output()
    };
    assert_eq!(header(&out, "x-policy"), Some("one"));
    assert_eq!(header(&out, "set-cookie"), Some("a=1"));
    let responses = exchange(&mut sim, &get("/status/204"));
    assert_eq!(
        (responses[0].status, responses[0].body.as_slice()),
        (204, &b""[..])
    );
    let responses = exchange(&mut sim, &get("/status/99"));
    assert_eq!(responses[0].status, 500, "1xx is not a final status");
    let responses = exchange(&mut sim, &get("/fail"));
    assert_eq!(responses[0].status, 500);
    assert!(!sim.write_shut(), "a failed handler keeps the connection");
}

/// The access log's line for a response whose body follows its head is
/// written when that body is over, with how much of it went out: a stream's
/// chunks (its head declared no length), a declared length left short, a
/// generator that failed, a file spliced or read, pinned bytes, and a body
/// the client stopped taking. An answer all in the send buffer is logged as
/// it is committed.
#[test]
fn each_line_counts_the_body_that_went_out() {
    let site = site();
    let mut sim = sim(site.path());
    exchange(&mut sim, &get("/"));
    exchange(&mut sim, &get("/stream"));
    exchange(&mut sim, &get("/big"));
    exchange(&mut sim, &get("/file/big.bin"));
    exchange(&mut sim, &get("/static/big.bin"));
    exchange(&mut sim, &get("/file/small.bin"));
    assert_eq!(sim.policy.held, None);
    let logged = sim.policy.logged.clone();
    assert_eq!(logged[1], (200, 18), "chunk1chunk2chunk3: {logged:?}");
    assert_eq!(logged[2], (200, BIG.len() as u64), "{logged:?}");
    assert_eq!(logged[3], (200, 300_000), "{logged:?}");
    assert_eq!(logged[4], (200, 150_000), "{logged:?}");
    assert_eq!(logged[5], (200, 10 * 1024), "{logged:?}");
    assert_eq!(logged.len(), 6, "{logged:?}");
    for (path, sent) in [("/declared/20", 10), ("/failing-stream", 5)] {
        let mut sim = sim_with(Config::default(), site.path());
        sim.feed(&get(path));
        assert!(sim.write_shut(), "{path}");
        assert_eq!(sim.policy.logged, [(200, sent)], "{path}");
    }
    // The client resets the connection 40 KB into a 300-KB file and a
    // 100-KB pinned body: the line says how far each got.
    for (path, length) in [("/file/big.bin", 300_000), ("/big", 100_000)] {
        let mut sim = sim_with(Config::default(), site.path());
        sim.send_sizes(vec![16_384]);
        sim.limit_output(40_000);
        sim.feed(&get(path));
        sim.advance(Duration::from_secs(1));
        assert!(sim.closed(), "{path}: {} sent", sim.output().len());
        assert_eq!(sim.policy.held, None, "{path}");
        let [(200, sent)] = sim.policy.logged[..] else {
            panic!("{path}: {:?}", sim.policy.logged)
        };
        assert!(
            (1..length).contains(&sent),
            "{path}: {sent} of the body went out before the reset"
        );
    }
}
