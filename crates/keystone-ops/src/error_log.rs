//! The engine's log (`--log PATH|-`, standard error by default): errors,
//! warnings and information, one line each, as text or JSON
//! (`--log-format`), filtered by `--log-level`. Lines collect in two fixed
//! batches per thread (each worker and the main thread has its own log)
//! and reach the destination through that thread's io_uring, never a
//! blocking `write(2)`: a destination that does not drain — a pipe nobody
//! reads — never stops a worker. While one batch is being written the
//! other fills; when both are full, lines are dropped and counted
//! (`keystone_log_dropped_total`), and once a batch is written again one
//! line says how many were lost. `--log` is reopened on SIGHUP (logrotate's
//! convention): the new descriptor takes over once no batch is in flight
//! on the old one.
//!
//! ```text
//! 2026-12-01T10:00:00Z error [worker 0] GET /boom: handler failed: app.lua:7: boom
//! {"time":"2026-12-01T10:00:00Z","level":"error","worker":0,"route":"GET /boom","message":"handler failed: app.lua:7: boom","count":1}
//! ```

use std::fmt::{self, Write as _};
use std::os::fd::{OwnedFd, RawFd};

use crate::batches::Batches;

/// Bytes of one batch; a log holds two. A flood of distinct errors (each
/// with its traceback, ~1 KiB) fills one in ~64 lines: the other batch
/// keeps filling while it is written.
pub const LOG_BATCH_BYTES: usize = 64 * 1024;
/// Longest line kept (a deep traceback); the rest is cut, marked `…`.
pub const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
const _: () = assert!(LOG_LINE_BYTES_MAX <= LOG_BATCH_BYTES);

/// Severity of a line; a log keeps the lines at or above its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// A request or component failed; serving continues.
    Error,
    /// Something the operator should look at; serving continues.
    Warn,
    /// Normal operation (start-up, reloads, draining, Lua's `print`).
    Info,
}

impl LogLevel {
    /// The level's name, as `--log-level` takes it and lines show it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
        }
    }

    /// The level named `name` (`error`, `warn`, `info`).
    pub fn parse(name: &str) -> Option<LogLevel> {
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info]
            .into_iter()
            .find(|level| level.name() == name)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    /// `--log-level`'s value; the error names the valid ones.
    fn from_str(text: &str) -> Result<LogLevel, String> {
        LogLevel::parse(text)
            .ok_or_else(|| format!("'{text}' is not a log level (error, warn or info)"))
    }
}

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIME LEVEL [worker N] message`.
    Text,
    /// One JSON object per line: time, level, worker, route, message, count.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// `--log-format`'s value; the error names the valid ones.
    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("'{text}' is not a log format (text or json)")),
        }
    }
}

/// One line's fields.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Severity.
    pub level: LogLevel,
    /// The worker that logged it (`None`: the main thread).
    pub worker: Option<u32>,
    /// The request it is about (`METHOD /path`), when there is one.
    pub route: Option<&'a str>,
    /// How many occurrences the line stands for (a coalesced error's
    /// summary counts its repeats; 1 otherwise).
    pub count: u64,
    /// The message.
    pub message: fmt::Arguments<'a>,
}

/// A thread's log: its destination, two batches and the drop count.
pub struct EngineLog {
    /// Where lines go, and the two batches.
    batches: Batches,
    line: Vec<u8>,
    format: LogFormat,
    level: LogLevel,
    /// Lines dropped since start.
    dropped: u64,
    /// Lines dropped since the last line said so.
    unreported: u64,
}

impl EngineLog {
    /// A log writing to `fd`, keeping lines at or above `level`; its
    /// batches are allocated here, once.
    pub fn new(fd: OwnedFd, format: LogFormat, level: LogLevel) -> EngineLog {
        EngineLog {
            batches: Batches::new(fd, LOG_BATCH_BYTES),
            line: Vec::with_capacity(LOG_LINE_BYTES_MAX),
            format,
            level,
            dropped: 0,
            unreported: 0,
        }
    }

    /// Whether lines of `level` are kept (check before building a costly
    /// message).
    pub fn enabled(&self, level: LogLevel) -> bool {
        level <= self.level
    }

    /// Appends one line, or drops and counts it when both batches are full.
    /// Never blocks, never allocates after construction.
    pub fn record(&mut self, record: &Record<'_>) {
        if !self.enabled(record.level) {
            return;
        }
        self.format_line(record);
        if !self.batches.push(&self.line) {
            self.dropped += 1;
            self.unreported += 1;
        }
    }

    fn format_line(&mut self, record: &Record<'_>) {
        format_into(&mut self.line, self.format, record);
    }

    /// A batch to write now, if any line waits and none is in flight. The
    /// batch moves into the write and comes back through
    /// [`EngineLog::written`]; lines go into the other one meanwhile.
    pub fn take_batch(&mut self) -> Option<Vec<u8>> {
        self.batches.take()
    }

    /// The write of `batch` completed with `result` (bytes or `-errno`).
    /// Lines of a batch that could not be written count as dropped; after
    /// drops, a written batch is followed by one line saying how many.
    pub fn written(&mut self, batch: Vec<u8>, result: i32) {
        let written = usize::try_from(result).unwrap_or(0).min(batch.len());
        if written < batch.len() {
            let lost = batch[written..].iter().filter(|&&b| b == b'\n').count() as u64;
            self.dropped += lost;
            self.unreported += lost;
        }
        self.batches.written(batch);
        if written > 0 && self.unreported > 0 {
            self.report_drops();
        }
    }

    /// The line saying how many lines were lost, once there is room for it
    /// (else it waits for the next written batch; it is never dropped).
    fn report_drops(&mut self) {
        let lost = self.unreported;
        self.format_line(&Record {
            level: LogLevel::Warn,
            worker: None,
            route: None,
            count: lost,
            message: format_args!(
                "{lost} log lines were dropped: the log's destination did not take them fast enough"
            ),
        });
        if self.batches.push(&self.line) {
            self.unreported = 0;
        }
    }

    /// Whether a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.batches.in_flight()
    }

    /// The descriptor the thread's ring writes the next batch to.
    pub fn fd(&self) -> RawFd {
        self.batches.fd()
    }

    /// Writes go to `fd` from now on (a reopened `--log`); with a batch in
    /// flight on the old one, from its completion on.
    pub fn reopen(&mut self, fd: OwnedFd) {
        self.batches.reopen(fd);
    }

    /// Lines dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes what is left, blocking (at exit, or before the thread has a
    /// ring). A failure is dropped: the lines have nowhere else to go.
    pub fn flush_blocking(&mut self) {
        self.batches.flush_blocking();
    }
}

/// Formats `record` as one line (newline included) into `line`, cut at
/// [`LOG_LINE_BYTES_MAX`].
fn format_into(line: &mut Vec<u8>, format: LogFormat, record: &Record<'_>) {
    line.clear();
    let time = utc_now();
    let mut out = Capped(line);
    match format {
        LogFormat::Text => {
            let _ = write!(out, "{time} {} ", record.level.name());
            if let Some(worker) = record.worker {
                let _ = write!(out, "[worker {worker}] ");
            }
            if let Some(route) = record.route {
                let _ = write!(out, "{route}: ");
            }
            let _ = write!(out, "{}", record.message);
        }
        LogFormat::Json => {
            let _ = write!(
                out,
                "{{\"time\":\"{time}\",\"level\":\"{}\",\"worker\":",
                record.level.name()
            );
            let _ = match record.worker {
                Some(worker) => write!(out, "{worker}"),
                None => write!(out, "null"),
            };
            let _ = write!(out, ",\"route\":");
            let _ = match record.route {
                Some(route) => write!(out, "\"{}\"", JsonEscaped(format_args!("{route}"))),
                None => write!(out, "null"),
            };
            let _ = write!(
                out,
                ",\"message\":\"{}\",\"count\":{}}}",
                JsonEscaped(record.message),
                record.count
            );
        }
    }
    if line.len() >= LOG_LINE_BYTES_MAX - 1 {
        // Cut long lines on a character boundary, marked.
        let mut cut = LOG_LINE_BYTES_MAX - 4;
        while cut > 0 && (line[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        line.truncate(cut);
        line.extend_from_slice("…".as_bytes());
        if format == LogFormat::Json {
            // Keep the line one object: close what the cut left open.
            line.extend_from_slice(b"\"}");
        }
    }
    line.push(b'\n');
}

/// One record formatted as a line on its own (for a thread with no log of
/// its own, which writes it directly).
pub fn render(format: LogFormat, record: &Record<'_>) -> Vec<u8> {
    let mut line = Vec::new();
    format_into(&mut line, format, record);
    line
}

/// `YYYY-MM-DDTHH:MM:SSZ` of now.
fn utc_now() -> impl fmt::Display {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = keystone_response::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    UtcTime {
        date: (y, m, d),
        time: (rem / 3600, rem / 60 % 60, rem % 60),
    }
}

struct UtcTime {
    date: (i64, u32, u32),
    time: (u64, u64, u64),
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.date;
        let (h, min, s) = self.time;
        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
    }
}

/// A writer into a line that stops at [`LOG_LINE_BYTES_MAX`].
struct Capped<'a>(&'a mut Vec<u8>);

impl fmt::Write for Capped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOG_LINE_BYTES_MAX.saturating_sub(self.0.len());
        self.0.extend_from_slice(&s.as_bytes()[..s.len().min(room)]);
        Ok(())
    }
}

/// Formats its arguments as the inside of a JSON string.
struct JsonEscaped<'a>(fmt::Arguments<'a>);

impl fmt::Display for JsonEscaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaper<'f, 'g>(&'f mut fmt::Formatter<'g>);
        impl fmt::Write for Escaper<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    match c {
                        '"' => self.0.write_str("\\\"")?,
                        '\\' => self.0.write_str("\\\\")?,
                        '\n' => self.0.write_str("\\n")?,
                        '\r' => self.0.write_str("\\r")?,
                        '\t' => self.0.write_str("\\t")?,
                        c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                        c => self.0.write_char(c)?,
                    }
                }
                Ok(())
            }
        }
        fmt::write(&mut Escaper(f), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd as _;

    fn log(format: LogFormat, level: LogLevel) -> (EngineLog, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let fd: OwnedFd = file.reopen().unwrap().into();
        (EngineLog::new(fd, format, level), file)
    }

    fn line(level: LogLevel, message: fmt::Arguments<'_>) -> Record<'_> {
        Record {
            level,
            worker: Some(3),
            route: None,
            count: 1,
            message,
        }
    }

    #[test]
    fn text_and_json_lines() {
        let (mut text, _) = log(LogFormat::Text, LogLevel::Info);
        text.record(&Record {
            route: Some("GET /boom"),
            ..line(
                LogLevel::Error,
                format_args!("handler failed: app.lua:7: boom"),
            )
        });
        let batch = text.take_batch().unwrap();
        let out = String::from_utf8(batch).unwrap();
        assert!(out.ends_with(" error [worker 3] GET /boom: handler failed: app.lua:7: boom\n"));
        assert_eq!(out.as_bytes()[4], b'-');

        let (mut json, _) = log(LogFormat::Json, LogLevel::Info);
        json.record(&Record {
            route: Some("GET /b\"q"),
            count: 42,
            ..line(
                LogLevel::Warn,
                format_args!("two\nlines \\ and \"quotes\" \u{1}"),
            )
        });
        let out = String::from_utf8(json.take_batch().unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["worker"], 3);
        assert_eq!(value["route"], "GET /b\"q");
        assert_eq!(value["message"], "two\nlines \\ and \"quotes\" \u{1}");
        assert_eq!(value["count"], 42);
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_level_filters_lines() {
        let (mut errors_only, _) = log(LogFormat::Text, LogLevel::Error);
        assert!(!errors_only.enabled(LogLevel::Warn));
        errors_only.record(&line(LogLevel::Info, format_args!("hello")));
        errors_only.record(&line(LogLevel::Warn, format_args!("careful")));
        assert!(errors_only.take_batch().is_none());
        errors_only.record(&line(LogLevel::Error, format_args!("broken")));
        assert!(errors_only.take_batch().is_some());
        assert_eq!(LogLevel::parse("warn"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("debug"), None);
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
        assert!("debug"
            .parse::<LogLevel>()
            .unwrap_err()
            .contains("error, warn or info"));
    }

    #[test]
    fn full_batches_drop_and_count_then_one_line_says_so() {
        let (mut log, _) = log(LogFormat::Text, LogLevel::Info);
        let long = "x".repeat(1000);
        for _ in 0..70 {
            log.record(&line(LogLevel::Error, format_args!("{long}")));
        }
        let first = log.take_batch().expect("a batch");
        assert!(log.take_batch().is_none(), "one batch in flight at a time");
        for _ in 0..200 {
            log.record(&line(LogLevel::Error, format_args!("{long}")));
        }
        let dropped = log.dropped();
        assert!(dropped > 0);
        log.written(first.clone(), first.len() as i32);
        // The full batch goes first; the report follows once there is room.
        let full = log.take_batch().unwrap();
        log.written(full.clone(), full.len() as i32);
        let next = String::from_utf8(log.take_batch().unwrap()).unwrap();
        assert!(
            next.ends_with(&format!("{dropped} log lines were dropped: the log's destination did not take them fast enough\n")),
            "{}",
            &next[next.len() - 200..]
        );
    }

    #[test]
    fn a_failed_write_counts_its_lines_as_dropped() {
        let (mut log, _) = log(LogFormat::Text, LogLevel::Info);
        for n in 0..3 {
            log.record(&line(LogLevel::Error, format_args!("line {n}")));
        }
        let batch = log.take_batch().unwrap();
        log.written(batch, -32); // EPIPE
        assert_eq!(log.dropped(), 3);
    }

    #[test]
    fn long_lines_are_cut_whole_and_json_stays_an_object() {
        let (mut log, _) = log(LogFormat::Json, LogLevel::Info);
        let long = "é".repeat(LOG_LINE_BYTES_MAX);
        log.record(&line(LogLevel::Error, format_args!("{long}")));
        let out = String::from_utf8(log.take_batch().unwrap()).expect("cut on a char boundary");
        assert!(out.len() <= LOG_LINE_BYTES_MAX + 8);
        assert!(out.trim_end().ends_with("…\"}"));
    }

    #[test]
    fn a_reopened_destination_takes_over_after_the_batch_in_flight() {
        let (mut log, first) = log(LogFormat::Text, LogLevel::Info);
        log.record(&line(LogLevel::Info, format_args!("one")));
        let batch = log.take_batch().unwrap();
        let second = tempfile::NamedTempFile::new().unwrap();
        log.reopen(second.reopen().unwrap().into());
        assert_ne!(log.fd(), second.as_file().as_raw_fd());
        let old_fd = log.fd();
        log.written(batch, 0);
        assert_ne!(log.fd(), old_fd, "the new file after the batch came back");
        log.record(&line(LogLevel::Info, format_args!("two")));
        log.flush_blocking();
        assert!(std::fs::read_to_string(second.path())
            .unwrap()
            .contains("two"));
        assert!(!std::fs::read_to_string(first.path())
            .unwrap()
            .contains("two"));
    }
}
