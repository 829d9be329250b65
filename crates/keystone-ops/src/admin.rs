//! The admin listener (`--admin ADDR`, off by default): `GET /metrics`
//! (Prometheus text exposition, counters summed over workers at scrape
//! time), `GET /health` (200, or 503 once draining so a load balancer stops
//! sending new connections before the process exits) and `GET /stats.json`
//! (per-worker figures for `keystone stats`). It runs on its own thread with
//! blocking std sockets: operator traffic, never on a worker's path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::Observed;
use crate::stats::{self, Shared};

/// Largest admin request head read; anything longer is answered 400.
const ADMIN_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// A scraper that stalls this long is dropped.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` (bound early by `serve`) on a new thread; returns its
/// address. `warn` receives each failed accept or answer (a warning for
/// the server's log); the thread goes on.
pub fn start(
    listener: TcpListener,
    shared: Arc<Shared>,
    observed: Observed,
    warn: impl Fn(std::fmt::Arguments<'_>) + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("keystone-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(err) = answer(stream, &shared, &observed) {
                            warn(format_args!("admin: {err}"));
                        }
                    }
                    Err(err) => warn(format_args!("admin accept: {err}")),
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, shared: &Shared, observed: &Observed) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > ADMIN_REQUEST_BYTES_MAX {
            return respond(&mut stream, 400, "text/plain", "bad request\n");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return respond(&mut stream, 405, "text/plain", "method not allowed\n");
    }
    match path {
        b"/metrics" => {
            let body = stats::prometheus(shared, &observed.prometheus());
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        b"/health" if shared.draining.load(Ordering::Relaxed) => {
            respond(&mut stream, 503, "text/plain", "draining\n")
        }
        b"/health" => respond(&mut stream, 200, "text/plain", "ok\n"),
        b"/stats.json" => respond(
            &mut stream,
            200,
            "application/json",
            &stats::worker_json(shared, &observed.json()),
        ),
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = keystone_response::reason(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: keystone\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WorkerStats;
    use std::sync::atomic::AtomicBool;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn answers_health_metrics_and_refusals() {
        let worker = Arc::new(WorkerStats::default());
        worker.response(200);
        let shared = Arc::new(Shared {
            workers: vec![Arc::clone(&worker)],
            draining: AtomicBool::new(false),
            main_log_dropped: Default::default(),
        });
        let observed = Observed {
            observer: None,
            steering: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = start(listener, Arc::clone(&shared), observed, |_| {}).unwrap();
        let health = get(addr, "GET /health HTTP/1.1\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let metrics = get(addr, "GET /metrics?x HTTP/1.1\r\n\r\n");
        assert!(metrics.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(metrics.contains("\nkeystone_responses_total{class=\"2xx\"} 1\n"));
        let json = get(addr, "GET /stats.json HTTP/1.1\r\n\r\n");
        assert!(json.ends_with(",\"draining\":false}"), "{json}");
        let post = get(addr, "POST /health HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        shared.draining.store(true, Ordering::Relaxed);
        let draining = get(addr, "HEAD /health HTTP/1.1\r\n\r\n");
        assert!(draining.starts_with("HTTP/1.1 503 "), "{draining}");
    }

    #[test]
    fn a_head_past_the_limit_is_answered_400_and_not_logged() {
        let shared = Arc::new(Shared {
            workers: Vec::new(),
            draining: AtomicBool::new(false),
            main_log_dropped: Default::default(),
        });
        let observed = Observed {
            observer: None,
            steering: None,
        };
        let (warned_tx, warned_rx) = std::sync::mpsc::channel();
        let warn = move |message: std::fmt::Arguments<'_>| {
            let _ = warned_tx.send(message.to_string());
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = start(listener, shared, observed, warn).unwrap();
        // One byte past the limit and no end of head: the read that
        // crosses the limit takes the last byte, so nothing is left unread
        // to reset the connection before the answer is read.
        let long = format!("GET /{}", "a".repeat(ADMIN_REQUEST_BYTES_MAX - 4));
        assert_eq!(long.len(), ADMIN_REQUEST_BYTES_MAX + 1);
        let response = get(addr, &long);
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        let health = get(addr, "GET /health HTTP/1.1\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 200 "));
        assert!(
            warned_rx.try_recv().is_err(),
            "a 400 is an answer, not a failure"
        );
    }
}
