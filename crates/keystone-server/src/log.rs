//! The engine's log: keystone-ops' per-thread log
//! ([`keystone_ops::thread_log`]: each worker and the main thread write it
//! through their own ring) and the `log!` macro the server writes it with.

pub use keystone_ops::error_log::LogLevel as Level;
pub use keystone_ops::thread_log::*;

/// `log!(Level::Info, Some(worker), "...", args)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $worker:expr, $($arg:tt)*) => {
        $crate::log::line($level, $worker, format_args!($($arg)*))
    };
}
