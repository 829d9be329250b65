//! Issue 5 end to end: the receive path. With `--recv-registered`,
//! keep-alive connections read into buffers registered with the ring
//! (`READ_FIXED`), counted by the admin listener (by default every read is
//! a plain `recv`, measured faster on kernel 6.18); idle connections hand the registration back with their pages;
//! bytes past the registered window (pipelined bursts, large bodies) still
//! arrive intact; and a server that may not pin memory keeps serving.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keystone_tests::{free_port, keystone_bin, metric, read_log, RawClient, Server};

const APP: &str = r#"return { routes = {
  ["GET /echo/{n}"] = function(ctx) ctx.body = "n=" .. ctx.params.n end,
  ["POST /sum"] = function(ctx)
    local body, sum = ctx.request.body, 0
    for i = 1, #body do sum = (sum * 31 + body:byte(i)) % 1000000007 end
    ctx.body = #body .. ":" .. sum
  end,
} }"#;

fn get(client: &mut RawClient, n: usize) {
    client.send(format!("GET /echo/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), format!("n={n}"));
}

/// The default: every read is a plain `recv`; no window is registered.
#[test]
fn by_default_reads_are_plain_and_nothing_is_registered() {
    let (server, admin) = Server::start_with_admin(Some(APP), &[]);
    let mut client = server.raw();
    for n in 0..20 {
        get(&mut client, n);
    }
    assert_eq!(metric(admin, "keystone_receives_registered_total"), 0);
    assert!(metric(admin, "keystone_receives_plain_total") >= 20);
    assert_eq!(metric(admin, "keystone_registered_buffers"), 0);
    assert!(!server.log().contains("registered buffers unavailable"));
}

#[test]
fn keep_alive_reads_land_in_registered_buffers() {
    let (_server, admin) = Server::start_with_admin(Some(APP), &["--recv-registered"]);
    const CONNECTIONS: usize = 4;
    const REQUESTS: usize = 100;
    let mut clients: Vec<RawClient> = (0..CONNECTIONS).map(|_| _server.raw()).collect();
    for round in 0..REQUESTS {
        for client in &mut clients {
            get(client, round);
        }
    }
    let registered = metric(admin, "keystone_receives_registered_total");
    let plain = metric(admin, "keystone_receives_plain_total");
    // Each connection's first read is plain (it has not shown it will stay);
    // every later one reads into its registered window.
    assert!(
        registered >= (CONNECTIONS * (REQUESTS - 1)) as u64,
        "registered {registered}, plain {plain}"
    );
    assert!(
        plain <= (CONNECTIONS + 1) as u64,
        "registered {registered}, plain {plain}"
    );
    assert_eq!(
        metric(admin, "keystone_registered_buffers"),
        CONNECTIONS as u64
    );
}

#[test]
fn idle_connections_give_the_registration_back_and_take_it_again() {
    let (server, admin) = Server::start_with_admin(
        Some(APP),
        &["--recv-registered", "--keepalive-timeout", "30"],
    );
    let mut idle = server.raw();
    let mut busy = server.raw();
    for n in 0..3 {
        get(&mut idle, n);
        get(&mut busy, n);
    }
    assert_eq!(metric(admin, "keystone_registered_buffers"), 2);
    assert_eq!(
        metric(admin, "keystone_receives_plain_total"),
        2,
        "first reads"
    );
    // A connection idle across a whole tick has its read cancelled, its
    // window unregistered and its pages given back; one that keeps asking
    // (every 100 ms: idle between requests, never for a second) keeps its
    // registration and never falls back to a plain read.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 3;
    while metric(admin, "keystone_registered_buffers") != 1 {
        assert!(
            Instant::now() < deadline,
            "idle connection still registered"
        );
        get(&mut busy, n);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..15 {
        get(&mut busy, n);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(admin, "keystone_registered_buffers"), 1);
    assert_eq!(
        metric(admin, "keystone_receives_plain_total"),
        2,
        "the busy connection kept its registered window"
    );
    let before = metric(admin, "keystone_receives_registered_total");
    // Woken up: the first read is plain, then it is registered again.
    for n in 3..6 {
        get(&mut idle, n);
    }
    assert_eq!(metric(admin, "keystone_registered_buffers"), 2);
    assert_eq!(metric(admin, "keystone_receives_plain_total"), 3);
    assert!(metric(admin, "keystone_receives_registered_total") >= before + 2);
}

/// A burst bigger than the registered window (4 KiB): the fixed read takes
/// the window, plain reads take the rest of the same buffer, and every
/// request is answered in order. Then a 300 KiB body, checksummed in Lua.
#[test]
fn bytes_past_the_registered_window_arrive_intact() {
    let (server, admin) = Server::start_with_admin(Some(APP), &["--recv-registered"]);
    let mut client = server.raw();
    get(&mut client, 0);
    get(&mut client, 1); // registered from here on
    for burst in 0..3 {
        let mut bytes = Vec::new();
        for n in 0..400 {
            write!(bytes, "GET /echo/{burst}-{n} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        }
        assert!(bytes.len() > 3 * 4096);
        client.send(&bytes);
        for n in 0..400 {
            let response = client.read_response();
            assert_eq!(response.body_str(), format!("n={burst}-{n}"));
        }
    }
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut sum: u64 = 0;
    for &b in &body {
        sum = (sum * 31 + u64::from(b)) % 1_000_000_007;
    }
    for _ in 0..2 {
        let mut request = format!(
            "POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        client.send(&request);
        let response = client.read_response();
        assert_eq!(response.body_str(), format!("{}:{sum}", body.len()));
        get(&mut client, 2);
    }
    assert!(metric(admin, "keystone_receives_registered_total") > 0);
    assert!(metric(admin, "keystone_receives_plain_total") > 2);
}

/// 128 KiB: the ring (about 100 KiB) and a few 4 KiB windows.
const MEMLOCK_FOR_A_FEW_WINDOWS: u64 = 128 * 1024;

/// `keystone` run as `nobody`, without capabilities, with RLIMIT_MEMLOCK at
/// `memlock` bytes (prlimit and setpriv from util-linux); caller adds args.
fn unprivileged(memlock: u64) -> Command {
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--memlock={memlock}:{memlock}"))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(keystone_bin());
    command
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An unprivileged user may pin only RLIMIT_MEMLOCK bytes. With 128 KiB —
/// the ring itself takes about 100 KiB — a few windows fit and the rest are
/// refused: logged once, and those connections read unregistered while
/// every request is answered. Needs root to drop to `nobody` (CAP_IPC_LOCK
/// exempts root from the limit).
#[test]
fn refused_registration_falls_back_to_plain_receives() {
    if !is_root() {
        eprintln!("skipped: needs root to start the server as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.path().join("app.lua");
    std::fs::write(&app, APP).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The ring's own share varies a little between kernels: start at 128 KiB
    // and double until the ring fits; 64 connections × 4 KiB outgrow any of these.
    let mut memlock = MEMLOCK_FOR_A_FEW_WINDOWS;
    let (mut child, addr, admin) = loop {
        let port = free_port();
        let admin_port = free_port();
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = unprivileged(memlock)
            .args(["serve", &app.display().to_string(), "--workers", "1"])
            .args(["--ebpf", "off", "--recv-registered"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("prlimit and setpriv (util-linux)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut exited = None;
        while TcpStream::connect(admin).is_err() || TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not listening:\n{}",
                read_log(dir.path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        match exited {
            None => break (child, addr, admin),
            Some(_) if read_log(dir.path()).contains("RLIMIT_MEMLOCK") && memlock < 1024 * 1024 => {
                memlock *= 2;
            }
            Some(status) => panic!("keystone exited with {status}:\n{}", read_log(dir.path())),
        }
    };
    const CONNECTIONS: usize = 64;
    let mut clients: Vec<RawClient> = (0..CONNECTIONS).map(|_| RawClient::connect(addr)).collect();
    for n in 0..3 {
        for client in &mut clients {
            get(client, n);
        }
    }
    let registered = metric(admin, "keystone_receives_registered_total");
    let plain = metric(admin, "keystone_receives_plain_total");
    let buffers = metric(admin, "keystone_registered_buffers");
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let log = read_log(dir.path());
    assert!(buffers < CONNECTIONS as u64, "{buffers} registered\n{log}");
    // Refused connections read plain after their first read too.
    assert!(
        plain >= CONNECTIONS as u64 + 2,
        "plain {plain}, registered {registered}\n{log}"
    );
    assert_eq!(
        log.matches("registering a receive buffer with io_uring failed")
            .count(),
        1,
        "one warning:\n{log}"
    );
}

/// Below what one ring needs, start-up fails with exit 2 and says which
/// limit to raise, instead of a bare "Cannot allocate memory".
#[test]
fn too_little_memlock_for_the_ring_is_a_precise_start_up_error() {
    if !is_root() {
        eprintln!("skipped: needs root to start the server as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = unprivileged(64 * 1024)
        .args(["serve", "--workers", "1", "--ebpf", "off"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("prlimit and setpriv (util-linux)");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("io_uring setup failed")
            && text.contains("RLIMIT_MEMLOCK")
            && text.contains("ulimit -l")
            && text.contains("64 KiB here"),
        "{text}"
    );
}

/// Slots whose connections closed keep their warm window for the next
/// connection, but only for a tick: after a burst, registrations (and the
/// pages behind them) go back, and a new connection registers again.
#[test]
fn closed_connections_give_their_slots_back_after_a_tick() {
    let (server, admin) = Server::start_with_admin(Some(APP), &["--recv-registered"]);
    const CONNECTIONS: usize = 20;
    let mut clients: Vec<RawClient> = (0..CONNECTIONS).map(|_| server.raw()).collect();
    for n in 0..3 {
        for client in &mut clients {
            get(client, n);
        }
    }
    assert_eq!(
        metric(admin, "keystone_registered_buffers"),
        CONNECTIONS as u64
    );
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(6);
    while metric(admin, "keystone_registered_buffers") != 0 {
        assert!(
            Instant::now() < deadline,
            "closed connections' slots still registered: {}",
            metric(admin, "keystone_registered_buffers")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = server.raw();
    for n in 0..3 {
        get(&mut client, n);
    }
    assert_eq!(metric(admin, "keystone_registered_buffers"), 1);
}
