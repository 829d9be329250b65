//! `keystone stats`: a live per-worker table (or JSON lines) read once a
//! second from a running server's admin listener (`/stats.json`).

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

const REFRESH: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What `keystone stats` was asked (the server's CLI parses the flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsOptions {
    /// The server's process id; its `--admin` address is read from its
    /// command line. `admin` wins when both are given.
    pub pid: Option<i32>,
    /// The server's admin listener address.
    pub admin: Option<SocketAddr>,
    /// One JSON object per refresh instead of a table.
    pub json: bool,
    /// Stop after this many refreshes (`None`: until interrupted).
    pub count: Option<u64>,
}

/// Why `keystone stats` stopped early; the caller prints it after
/// `keystone stats: ` and exits with its usage status.
#[derive(Debug, PartialEq, Eq)]
pub enum StatsError {
    /// Neither a pid nor an admin address was given.
    NoTarget,
    /// The admin address could not be read from process `pid`'s command
    /// line.
    AdminOf {
        /// The process asked about.
        pid: i32,
        /// What was wrong.
        message: String,
    },
    /// Reading `/stats.json` from `admin` failed.
    Fetch {
        /// The admin listener asked.
        admin: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::NoTarget => f.write_str("give --pid PID or --admin ADDR"),
            StatsError::AdminOf { message, .. } => f.write_str(message),
            StatsError::Fetch { admin, message } => write!(f, "{admin}: {message}"),
        }
    }
}

impl std::error::Error for StatsError {}

/// Runs `keystone stats`: prints a refresh a second until `count` refreshes
/// were shown (or forever).
pub fn run(options: &StatsOptions) -> Result<(), StatsError> {
    let admin = match (options.admin, options.pid) {
        (Some(admin), _) => admin,
        (None, Some(pid)) => {
            admin_of(pid).map_err(|message| StatsError::AdminOf { pid, message })?
        }
        (None, None) => return Err(StatsError::NoTarget),
    };
    let mut previous: Option<(Instant, Value)> = None;
    let mut shown = 0u64;
    loop {
        let now = Instant::now();
        let current = fetch(admin).map_err(|message| StatsError::Fetch { admin, message })?;
        if options.json {
            println!("{current}");
        } else {
            print_table(
                &current,
                previous.as_ref().map(|(t, v)| (now.duration_since(*t), v)),
            );
        }
        let _ = std::io::stdout().flush();
        shown += 1;
        if options.count.is_some_and(|count| shown >= count) {
            return Ok(());
        }
        previous = Some((now, current));
        std::thread::sleep(REFRESH);
    }
}

/// Finds `--admin ADDR` in the server's command line.
fn admin_of(pid: i32) -> Result<SocketAddr, String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|err| format!("no process {pid}: {err}"))?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let value = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--admin=")
            .map(str::to_owned)
            .or_else(|| (a == "--admin").then(|| args.get(i + 1).cloned()).flatten())
    });
    let value = value.ok_or_else(|| format!("process {pid} was not started with --admin ADDR; `keystone stats` reads the admin listener"))?;
    value
        .parse()
        .map_err(|_| format!("process {pid} has --admin {value:?}, which is not IP:PORT"))
}

fn fetch(admin: SocketAddr) -> Result<Value, String> {
    let mut stream =
        TcpStream::connect_timeout(&admin, FETCH_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(FETCH_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /stats.json HTTP/1.1\r\nHost: keystone\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("bad JSON: {e}"))
}

fn print_table(current: &Value, previous: Option<(Duration, &Value)>) {
    let workers = current["workers"].as_array().cloned().unwrap_or_default();
    let before = |index: usize, field: &str| {
        previous
            .and_then(|(_, v)| v["workers"][index][field].as_u64())
            .unwrap_or(0)
    };
    let seconds = previous.map_or(0.0, |(elapsed, _)| elapsed.as_secs_f64());
    let observe = &current["observe"];
    let threads = observe["threads"].as_array().cloned().unwrap_or_default();
    println!(
        "{:>6} {:>8} {:>10} {:>12} {:>8} {:>12} {:>10} {:>10}",
        "worker", "conns", "req/s", "requests", "5xx", "syscalls/req", "p50 µs", "p99 µs"
    );
    for (index, worker) in workers.iter().enumerate() {
        let requests = worker["requests"].as_u64().unwrap_or(0);
        let delta = requests.saturating_sub(before(index, "requests"));
        let rate = if seconds > 0.0 {
            delta as f64 / seconds
        } else {
            0.0
        };
        let name = format!("keystone-w{index}");
        let thread = threads.iter().find(|t| t["name"] == name.as_str());
        let syscalls = thread.and_then(|t| t["syscalls"].as_u64());
        // Kernel-seen latency of the turns this worker answered; "-" when
        // it answered none (or the server does not observe).
        let latency = |field: &str| {
            thread
                .and_then(|t| t[field].as_f64())
                .filter(|v| *v >= 0.0)
                .map_or("-".to_owned(), |v| format!("≤{v:.0}"))
        };
        let per_request = match syscalls {
            Some(calls) if requests > 0 => format!("{:.3}", calls as f64 / requests as f64),
            _ => "-".to_owned(),
        };
        println!(
            "{index:>6} {:>8} {rate:>10.0} {requests:>12} {:>8} {per_request:>12} {:>10} {:>10}",
            worker["open"].as_u64().unwrap_or(0),
            worker["errors_5xx"].as_u64().unwrap_or(0),
            latency("p50_us"),
            latency("p99_us"),
        );
    }
    if observe.is_object() {
        let us = |field: &str| observe[field].as_f64().filter(|v| *v >= 0.0);
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} µs"));
        println!(
            "kernel-seen latency, all workers: p50 ≤ {}, p99 ≤ {} ({} samples); io_uring_enter: {}",
            show(us("p50_us")),
            show(us("p99_us")),
            observe["latency_samples"].as_u64().unwrap_or(0),
            observe["io_uring_enter"].as_u64().unwrap_or(0)
        );
    } else {
        println!(
            "(start the server with --observe for syscalls per request and latency percentiles)"
        );
    }
    if current["draining"].as_bool() == Some(true) {
        println!("draining");
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_cli_prints_them() {
        let admin: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cases = [
            (StatsError::NoTarget, "give --pid PID or --admin ADDR"),
            (
                StatsError::AdminOf {
                    pid: 7,
                    message: "no process 7: gone".into(),
                },
                "no process 7: gone",
            ),
            (
                StatsError::Fetch {
                    admin,
                    message: "refused".into(),
                },
                "127.0.0.1:9: refused",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn no_target_and_a_closed_admin_port_fail_before_printing() {
        assert_eq!(run(&StatsOptions::default()), Err(StatsError::NoTarget));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let options = StatsOptions {
            admin: Some(closed),
            count: Some(1),
            ..StatsOptions::default()
        };
        assert!(matches!(
            run(&options),
            Err(StatsError::Fetch { admin, .. }) if admin == closed
        ));
    }

    #[test]
    fn the_admin_address_comes_from_the_command_line_of_pid() {
        let missing = admin_of(i32::MAX).unwrap_err();
        assert!(missing.starts_with("no process"), "{missing}");
        let own = admin_of(std::process::id() as i32).unwrap_err();
        assert!(own.contains("was not started with --admin ADDR"), "{own}");
    }
}
