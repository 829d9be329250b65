//! The engine's log as each thread sees it: a worker and the main thread
//! each own an [`EngineLog`] (fixed batches, text or JSON, drops counted)
//! installed in a thread-local, and write its batches through their own
//! io_uring (this module submits nothing: the owner takes a batch, writes
//! it and hands it back) — so a log destination that does not drain never
//! blocks a worker. A thread without one (the admin listener, the moments
//! before `serve` opened `--log`, `keystone check`) writes the line to
//! standard error directly.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error_log::{EngineLog, LogFormat, LogLevel as Level, Record};

/// The process's `--log-format` and `--log-level` (set once by `serve`).
static CONFIG: OnceLock<(LogFormat, Level)> = OnceLock::new();

thread_local! {
    /// This thread's log, once installed.
    static LOG: RefCell<Option<EngineLog>> = const { RefCell::new(None) };
}

/// Sets the process's log format and level (before any log is made).
pub fn configure(format: LogFormat, level: Level) {
    let _ = CONFIG.set((format, level));
}

fn config() -> (LogFormat, Level) {
    CONFIG
        .get()
        .copied()
        .unwrap_or((LogFormat::Text, Level::Info))
}

/// Installs this thread's log, writing to `fd`.
pub fn install(fd: OwnedFd) {
    let (format, level) = config();
    LOG.with(|log| *log.borrow_mut() = Some(EngineLog::new(fd, format, level)));
}

/// Writes one line: `2026-11-24T20:04:30Z info [worker 0] message`.
pub fn line(level: Level, worker: Option<u32>, message: fmt::Arguments<'_>) {
    record(&Record {
        level,
        worker,
        route: None,
        count: 1,
        message,
    });
}

/// Writes one record into this thread's log (or, without one, straight to
/// standard error).
pub fn record(record: &Record<'_>) {
    let written = LOG.with(|log| match log.borrow_mut().as_mut() {
        Some(log) => {
            log.record(record);
            true
        }
        None => false,
    });
    let (format, level) = config();
    if !written && record.level <= level {
        let line = crate::error_log::render(format, record);
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// The next batch of this thread's log to write, and where.
pub fn take_batch() -> Option<(RawFd, Vec<u8>)> {
    LOG.with(|log| {
        let mut log = log.borrow_mut();
        let log = log.as_mut()?;
        let fd = log.fd();
        log.take_batch().map(|batch| (fd, batch))
    })
}

/// The write of `batch` completed with `result`.
pub fn written(batch: Vec<u8>, result: i32) {
    LOG.with(|log| {
        if let Some(log) = log.borrow_mut().as_mut() {
            log.written(batch, result);
        }
    });
}

/// This thread's log writes to `fd` from now on (a reopened `--log`).
pub fn reopen(fd: OwnedFd) {
    LOG.with(|log| {
        if let Some(log) = log.borrow_mut().as_mut() {
            log.reopen(fd);
        }
    });
}

/// Lines this thread's log dropped.
pub fn dropped() -> u64 {
    LOG.with(|log| log.borrow().as_ref().map_or(0, EngineLog::dropped))
}

/// Writes what is left, blocking (at exit, or when the thread's ring is
/// gone or was never made).
pub fn flush_blocking() {
    LOG.with(|log| {
        if let Some(log) = log.borrow_mut().as_mut() {
            if !log.in_flight() {
                log.flush_blocking();
            }
        }
    });
}

// --- log destinations ---------------------------------------------------

/// Opens the access log for appending; `-` is standard output.
pub fn open_access_log(path: &Path) -> std::io::Result<OwnedFd> {
    if path.as_os_str() == "-" {
        return std::io::stdout().as_fd().try_clone_to_owned();
    }
    open_append(path)
}

/// Opens the engine's log for appending; `-` (or none) is standard error.
pub fn open_log(path: Option<&Path>) -> std::io::Result<OwnedFd> {
    match path {
        Some(path) if path.as_os_str() != "-" => open_append(path),
        _ => std::io::stderr().as_fd().try_clone_to_owned(),
    }
}

/// Opens `path` for appending (created if missing).
pub fn open_append(path: &Path) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(file.into())
}

/// A log path that is a file (reopened on SIGHUP); not `-`.
pub fn reopenable(path: Option<&Path>) -> Option<PathBuf> {
    path.filter(|path| path.as_os_str() != "-")
        .map(Path::to_path_buf)
}
