//! Process lifecycle: SIGTERM drains (every request already sent is answered,
//! then exit 0 within `--drain-timeout`), and a port already in use is a clean
//! exit 2 naming the address and the OS error.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::{assert_no_panic, run_keystone, Ending, RawClient, Server, STARTUP_TIMEOUT};

/// `/slow` spins for ~50 ms of CPU so pipelined requests are still queued
/// inside the server when SIGTERM lands.
const APP: &str = r#"return {
  routes = {
    ["GET /n/{n}"] = function(ctx) ctx.body = "n=" .. ctx.params.n end,
    ["GET /spin"] = function(ctx)
      local start = os.clock()
      while os.clock() - start < 6 do end
      ctx.body = "spun"
    end,
    ["GET /slow/{n}"] = function(ctx)
      local start = os.clock()
      while os.clock() - start < 0.05 do end
      ctx.body = "slow=" .. ctx.params.n
    end,
  },
}
"#;

/// Requests in the batch that is in flight when SIGTERM arrives.
const PIPELINED: usize = 10;

/// Reads up to `limit` responses, checking they are PREFIX=0, PREFIX=1, ... in order,
/// until one says `Connection: close` or the server closes between responses.
/// Returns how many came back; a response cut short fails the test.
fn read_in_order(client: &mut RawClient, prefix: &str, limit: usize) -> usize {
    let mut answered = 0;
    while answered < limit {
        let Some(response) = client.read_response_or_close("GET") else {
            break;
        };
        assert_eq!(response.status, 200, "{prefix} response {answered}");
        assert_eq!(
            response.body_str(),
            format!("{prefix}={answered}"),
            "{prefix} response {answered}"
        );
        answered += 1;
        if response.closes() {
            break;
        }
    }
    answered
}

/// A client sending one request at a time until the server stops it (or 8 s pass).
/// Returns how many requests were answered.
/// `progress` counts answered requests as they come, so the test can wait for steady state.
fn stream_requests(addr: std::net::SocketAddr, progress: Arc<AtomicUsize>) -> usize {
    let mut client = RawClient::connect(addr);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut answered = 0;
    while Instant::now() < deadline {
        // A write or an empty read can race the server closing an idle keep-alive
        // connection at shutdown (the request never reached it, so it was not
        // "already sent"); a response cut short is still a failure.
        if !client.try_send(format!("GET /n/{answered} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()) {
            break;
        }
        let Some(response) = client.read_response_or_close("GET") else {
            break;
        };
        assert_eq!(response.status, 200, "streamed request {answered}");
        assert_eq!(
            response.body_str(),
            format!("n={answered}"),
            "streamed request {answered}"
        );
        answered += 1;
        progress.store(answered, Ordering::SeqCst);
        if response.closes() {
            break;
        }
    }
    answered
}

#[test]
fn sigterm_answers_every_sent_request_then_exits_0() {
    let mut server = Server::start(Some(APP), &["--drain-timeout", "10"]);

    // A client streaming sequential requests the whole time.
    let addr = server.addr();
    let progress = Arc::new(AtomicUsize::new(0));
    let streamer = {
        let progress = Arc::clone(&progress);
        thread::spawn(move || stream_requests(addr, progress))
    };
    // Steady state first: the listener accepts before the server has finished
    // starting, and SIGTERM during start-up is a separate test below.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while progress.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "streaming client never got going; log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(10));
    }

    // A batch of slow pipelined requests: all sent (one write) before SIGTERM.
    let mut batch_client = server.raw();
    let batch: String = (0..PIPELINED)
        .map(|i| format!("GET /slow/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    batch_client.send(batch.as_bytes());
    thread::sleep(Duration::from_millis(120));
    server.terminate();

    let answered = read_in_order(&mut batch_client, "slow", PIPELINED);
    assert_eq!(
        answered, PIPELINED,
        "pipelined requests sent before SIGTERM went unanswered"
    );
    assert!(
        matches!(batch_client.read_to_end(), Ending::Closed(_)),
        "batch connection not closed after drain"
    );

    let streamed = streamer.join().expect("streaming client");
    assert!(streamed > 0, "the streaming client got no responses at all");

    let status = server
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("still running 12 s after SIGTERM; log:\n{}", server.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{}",
        server.log()
    );
    assert_no_panic(&server.log(), "drain");
}

#[test]
fn sigterm_right_after_start_still_drains_and_exits_0() {
    // An orchestrator may stop a server the moment it is up. Once the port
    // accepts connections, SIGTERM must mean "drain", not the default
    // kill-on-signal: exit 0, and no response cut short.
    let mut server = Server::start(Some(APP), &["--drain-timeout", "5"]);
    let mut client = server.raw();
    client.send(b"GET /n/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM; log:\n{}", server.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status ({status}) for SIGTERM just after start; log:\n{}",
        server.log()
    );
    // The request may still sit in the listen backlog, never accepted, when the
    // signal lands; closing the listener then resets it, which a client can retry.
    // What must not happen is half a response.
    if let Some(response) = client.read_response_or_close("GET") {
        assert_eq!(response.body_str(), "n=0", "request queued before SIGTERM");
    }
}

#[test]
fn sigterm_with_idle_connections_exits_within_the_drain_deadline() {
    let mut server = Server::start(Some(APP), &["--drain-timeout", "1"]);
    let mut idle = server.raw();
    idle.send(b"GET /n/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response().body_str(), "n=0");
    let _never_sent_anything = server.raw();
    let start = Instant::now();
    server.terminate();
    // An idle keep-alive connection has nothing in flight: it must not hold the
    // process past the 1 s deadline (2 s of slack for a loaded machine).
    let status = server.wait_exit(Duration::from_secs(3)).unwrap_or_else(|| {
        panic!(
            "still running 3 s after SIGTERM with --drain-timeout 1; log:\n{}",
            server.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        server.log()
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(idle.read_to_end(), Ending::Closed(_)),
        "idle connection left open after exit"
    );
}

#[test]
fn drain_deadline_bounds_shutdown_with_a_stuck_handler() {
    // A handler that outlives --drain-timeout must not hold the process: the
    // deadline is the bound on shutdown. (The exit code of a drain cut short is
    // not in the contract, so only the time is checked.)
    let mut server = Server::start(Some(APP), &["--drain-timeout", "1"]);
    let mut client = server.raw();
    client.send(b"GET /spin HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    server.terminate();
    let exited = server.wait_exit(Duration::from_secs(4));
    assert!(
        exited.is_some(),
        "still running 4 s after SIGTERM with --drain-timeout 1 and a 6 s handler; log:\n{}",
        server.log()
    );
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_no_panic(&server.log(), "drain deadline");
}

#[test]
fn port_already_in_use_exits_2_naming_address_and_error() {
    // Two ways a port is taken: by a plain socket, and by another keystone
    // (whose reuseport sockets a second keystone could otherwise silently join).
    let plain = TcpListener::bind("127.0.0.1:0").expect("bind");
    let plain_addr = plain.local_addr().expect("addr").to_string();
    let first = Server::start(None, &[]);
    let keystone_addr = first.addr().to_string();
    for (holder, addr) in [
        ("a plain listener", plain_addr),
        ("another keystone", keystone_addr),
    ] {
        let start = Instant::now();
        let output = run_keystone(&["serve", "--listen", &addr, "--workers", "1"]);
        let all = output.all();
        assert!(
            !output.timed_out,
            "port held by {holder}: keystone did not exit; output:\n{all}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "port held by {holder}: took {:?}",
            start.elapsed()
        );
        assert_no_panic(&all, holder);
        assert_eq!(
            output.code,
            Some(2),
            "port held by {holder}; output:\n{all}"
        );
        assert!(
            all.contains(&addr),
            "port held by {holder}: message does not name {addr}:\n{all}"
        );
        assert!(
            all.contains("Address already in use"),
            "port held by {holder}: message lacks the OS error:\n{all}"
        );
    }
    // The first server is untouched by the failed second start.
    let response = keystone_tests::request(first.addr(), &keystone_tests::get_request("/"));
    assert_eq!(response.body_str(), "Hello, World!");
    drop(plain);
}
