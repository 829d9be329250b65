//! Issue 14, WebSocket through the proxy, end to end: a real WebSocket
//! client and echo backend (tungstenite) with Keystone in between. The
//! handshake is forwarded with its upgrade headers, a `101` makes both
//! connections one relay, messages go both ways (large ones included),
//! either side's close ends it cleanly, and an idle tunnel is closed after
//! the pool's `read_timeout`.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::{assert_no_panic, Server};
use tungstenite::{Message, WebSocket};

/// The handshake heads the backend saw.
type Heads = Arc<Mutex<Vec<String>>>;

/// An echo backend: echoes every message; `"bye"` makes it close (with a
/// close frame); a plain HTTP request to `/plain` is answered 200 with
/// the `Upgrade` header it saw (to show a non-WebSocket upgrade is
/// dropped).
fn backend() -> (SocketAddr, Heads) {
    let heads: Heads = Arc::default();
    let seen = Arc::clone(&heads);
    let addr = keystone_tests::spawn_backend(move |stream| echo(stream, &seen));
    (addr, heads)
}

fn echo(stream: TcpStream, seen: &Heads) {
    // The raw head as it arrived (peeked: tungstenite reads it again).
    let mut peeked = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = stream.peek(&mut peeked).unwrap_or(0);
        if peeked[..n].windows(4).any(|w| w == b"\r\n\r\n") || Instant::now() > deadline {
            let text = String::from_utf8_lossy(&peeked[..n]).replace("\r\n", "\n");
            let head = text.split("\n\n").next().unwrap_or("").to_string() + "\n";
            seen.lock().unwrap().push(head);
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let Ok(mut socket) = tungstenite::accept(stream) else {
        return;
    };
    loop {
        match socket.read() {
            Ok(Message::Text(text)) if text.as_str() == "bye" => {
                let _ = socket.close(None);
                let _ = socket.flush();
                // Drain until the client answers the close.
                while socket.read().is_ok() {}
                return;
            }
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if socket.send(message).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn app(backend: SocketAddr) -> String {
    format!(
        r#"return {{
  upstreams = {{
    ws = {{ peers = {{ "{backend}" }}, read_timeout = 2 }},
    long = {{ peers = {{ "{backend}" }}, read_timeout = 60 }},
  }},
  routes = {{
    ["GET /ws"] = function(ctx) ctx.upstream = "ws" end,
    ["GET /long"] = function(ctx) ctx.upstream = "long" end,
    ["GET /guarded"] = function(ctx)
      if ctx.args.token ~= "ok" then
        ctx.status = 403
        ctx.body = "no"
        return
      end
      ctx.upstream = "ws"
      ctx.upstream_path = "/ws"
    end,
  }},
}}"#
    )
}

fn connect(server: &Server, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://{}{path}", server.addr());
    let (socket, response) = tungstenite::client(url, stream).expect("the handshake");
    assert_eq!(response.status(), 101);
    socket
}

#[test]
fn websocket_echo_through_the_proxy() {
    let (addr, heads) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    let mut socket = connect(&server, "/long");
    // The backend saw a real handshake, rebuilt: upgrade headers kept,
    // X-Forwarded-For added.
    let head = heads.lock().unwrap().last().cloned().unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket\n"), "{head}");
    assert!(lower.contains("connection: upgrade\n"), "{head}");
    assert!(lower.contains("sec-websocket-key: "), "{head}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1\n"), "{head}");
    for i in 0..50 {
        let text = format!("message {i}");
        socket.send(Message::text(text.clone())).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text(text));
    }
    // Larger than every buffer on the way, both ways.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    socket.send(Message::binary(big.clone())).unwrap();
    match socket.read().unwrap() {
        Message::Binary(bytes) => assert!(bytes.as_ref() == big.as_slice(), "the echo differs"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    // The client closes: a clean close handshake through the relay, as
    // soon as the backend closes (not when the 60 s idle bound passes).
    let closing = Instant::now();
    socket.close(None).unwrap();
    loop {
        match socket.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(other) => panic!("unclean close: {other}"),
        }
    }
    assert!(
        closing.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        closing.elapsed()
    );
    assert_no_panic(&server.log(), "websocket echo");
}

#[test]
fn the_backend_closing_ends_the_relay_cleanly() {
    let (addr, _) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    let mut socket = connect(&server, "/long");
    let closing = Instant::now();
    socket.send(Message::text("bye")).unwrap();
    let mut saw_close = false;
    loop {
        match socket.read() {
            Ok(Message::Close(_)) => saw_close = true,
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(other) => panic!("unclean close: {other}"),
        }
    }
    assert!(saw_close, "the backend's close frame reached the client");
    assert!(
        closing.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        closing.elapsed()
    );
    // The worker goes on serving.
    let mut again = connect(&server, "/ws");
    again.send(Message::text("still here")).unwrap();
    assert_eq!(again.read().unwrap(), Message::text("still here"));
}

#[test]
fn a_refused_handshake_and_an_idle_tunnel() {
    let (addr, heads) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    // Lua refuses before any upstream is involved: a plain 403.
    let stream = TcpStream::connect(server.addr()).unwrap();
    let url = format!("ws://{}/guarded?token=bad", server.addr());
    match tungstenite::client(url, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected a 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    let before = heads.lock().unwrap().len();
    let mut socket = connect(&server, "/guarded?token=ok");
    assert_eq!(heads.lock().unwrap().len(), before + 1);
    socket.send(Message::text("hi")).unwrap();
    assert_eq!(socket.read().unwrap(), Message::text("hi"));
    // Silent both ways past the pool's read_timeout (2 s, checked once a
    // second): the relay is closed.
    let started = Instant::now();
    match socket.read() {
        Ok(message) => panic!("unexpected {message:?}"),
        Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("not closed within the read timeout")
        }
        Err(_) => {}
    }
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(6),
        "closed after {idle:?}"
    );
}

#[test]
fn other_upgrades_are_not_forwarded() {
    let (addr, heads) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    // An h2c upgrade is hop-by-hop: the backend sees a plain GET (and,
    // being a WebSocket server, refuses it with 400, which is relayed).
    let mut client = server.raw();
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    let response = client.read_response();
    assert_ne!(response.status, 101);
    let head = heads.lock().unwrap().last().cloned().unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("get /ws http/1.1\n"), "{head}");
    assert!(!lower.contains("upgrade"), "{head}");
    assert!(!lower.contains("http2-settings"), "{head}");
}

#[test]
fn bytes_sent_right_behind_the_handshake_go_up_the_tunnel() {
    let (addr, _) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    // The handshake and a first (masked) text frame in one write, before
    // the 101: the frame is relayed as soon as the tunnel opens.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = format!(
        "GET /long HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    )
    .into_bytes();
    let mask = [1u8, 2, 3, 4];
    let payload = b"early";
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let head = keystone_tests::read_head(&mut reader).expect("the 101");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The echo of the early frame: unmasked, from the backend.
    let mut frame = [0u8; 7];
    std::io::Read::read_exact(&mut reader, &mut frame).unwrap();
    assert_eq!(&frame, b"\x81\x05early");
}
