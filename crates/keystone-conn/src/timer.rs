//! Which deadline applies in which state. The connection returns its next
//! deadline as data ([`crate::Connection::deadline`]); the driver only
//! tells it when that moment has passed.

/// Which timeout a connection's deadline is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Timer {
    /// None applies: nothing is awaited from the peer (the engine is busy
    /// with the request, or the connection is closing).
    #[default]
    None,
    /// Waiting for a complete request head, counted from its first byte (or
    /// from accept for the first request): slowloris defence → 408.
    Header,
    /// Waiting for more body bytes, restarted by every read → 408.
    Body,
    /// Keep-alive: waiting for the next request → close. After
    /// [`crate::IDLE_RELEASE_AFTER`] the buffers' pages are given back first.
    Idle,
    /// Waiting for the peer to take our bytes, restarted by every write →
    /// close.
    Send,
    /// Discarding reads after our FIN, until the peer closes → close.
    Linger,
}

impl Timer {
    /// Whether any progress restarts it (between-operations timers), rather
    /// than it counting from the moment its state began.
    pub(crate) fn restarts(self) -> bool {
        matches!(self, Timer::Body | Timer::Send | Timer::None)
    }
}
