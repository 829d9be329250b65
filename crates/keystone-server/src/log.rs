//! The engine's log: one line per event on stderr, with a UTC timestamp and
//! the worker it came from. Logging is off the hot path (errors, start-up,
//! shutdown), so the stderr lock it takes is not a lock on request handling.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Severity of a log line.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something the operator should look at; serving continues.
    Warn,
    /// A request or component failed; serving continues.
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one line: `2026-11-24T20:04:30Z info [worker 0] message`.
pub fn line(level: Level, worker: Option<u32>, message: fmt::Arguments<'_>) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = keystone_response::civil_from_days(days as i64);
    let mut out = std::io::stderr().lock();
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z {} ",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        level.name()
    );
    if let Some(worker) = worker {
        let _ = write!(out, "[worker {worker}] ");
    }
    let _ = writeln!(out, "{message}");
}

/// `log!(Level::Info, Some(worker), "...", args)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $worker:expr, $($arg:tt)*) => {
        $crate::log::line($level, $worker, format_args!($($arg)*))
    };
}
