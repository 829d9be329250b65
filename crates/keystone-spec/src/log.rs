//! The engine's log while specs run: the app's errors (with their
//! tracebacks), its `print`s and the engine's warnings are kept per test,
//! not written, and shown under a test that fails (or all of them with
//! `--verbose`). One buffer per thread: the runner and the app it drives
//! share the thread, as a worker and its Lua state do.

use std::cell::RefCell;

use keystone_app::LogLine;

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The app's log function ([`keystone_app::Log`]): keeps the line.
pub fn capture(line: &LogLine<'_>) {
    let text = match line.route {
        Some(route) => format!("{} {route}: {}", line.level.name(), line.message),
        None => format!("{} {}", line.level.name(), line.message),
    };
    LINES.with(|lines| lines.borrow_mut().push(text));
}

/// A line of the runner's own.
pub fn note(message: std::fmt::Arguments<'_>) {
    LINES.with(|lines| lines.borrow_mut().push(format!("info {message}")));
}

/// A line of the app's, kept again (a load's lines shown with the test
/// that uses that load).
pub fn push(line: String) {
    LINES.with(|lines| lines.borrow_mut().push(line));
}

/// Where the log is now, for [`since`].
pub fn mark() -> usize {
    LINES.with(|lines| lines.borrow().len())
}

/// Copies of the lines kept after `mark` (they stay kept).
pub fn since(mark: usize) -> Vec<String> {
    LINES.with(|lines| {
        lines
            .borrow()
            .get(mark..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    })
}

/// The lines kept since the last take.
pub fn take() -> Vec<String> {
    LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()))
}
