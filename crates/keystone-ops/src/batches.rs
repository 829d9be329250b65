//! Two fixed batches of log bytes and their destination, shared by the
//! access log and the engine's log: lines fill one batch while the owner's
//! io_uring writes the other (the batch moves into the write and comes
//! back), so a log never blocks its thread and its memory never grows.
//! This type submits nothing: its owner takes a batch, writes it through
//! its ring and gives it back.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};

/// A destination and its two batches.
pub struct Batches {
    /// Where batches go; owned here, so the descriptor a batch is written
    /// to stays open as long as the batch can be in flight.
    file: File,
    /// A reopened destination waiting for the batch in flight on `file`.
    reopened: Option<File>,
    filling: Vec<u8>,
    /// The other batch: empty and ready, or `None` while it is written.
    spare: Option<Vec<u8>>,
    capacity: usize,
}

impl Batches {
    /// Two batches of `capacity` bytes (allocated once, here) for `fd`,
    /// which they own from now on.
    pub fn new(fd: OwnedFd, capacity: usize) -> Batches {
        Batches {
            file: File::from(fd),
            reopened: None,
            filling: Vec::with_capacity(capacity),
            spare: Some(Vec::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends `line` whole to the filling batch; false (nothing appended)
    /// when it does not fit.
    pub fn push(&mut self, line: &[u8]) -> bool {
        if self.filling.len() + line.len() > self.capacity {
            return false;
        }
        self.filling.extend_from_slice(line);
        true
    }

    /// Bytes waiting in the filling batch.
    pub fn waiting(&self) -> usize {
        self.filling.len()
    }

    /// The filling batch, to write now, if it holds bytes and no batch is
    /// in flight; lines go into the other one until [`Batches::written`]
    /// gives it back.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.in_flight() || self.filling.is_empty() {
            return None;
        }
        let next = self.spare.take().expect("not in flight");
        Some(std::mem::replace(&mut self.filling, next))
    }

    /// The batch taken came back from its write: it is emptied and is the
    /// spare again, and a reopened destination takes over.
    pub fn written(&mut self, mut batch: Vec<u8>) {
        debug_assert!(self.spare.is_none(), "a batch came back twice");
        batch.clear();
        self.spare = Some(batch);
        if let Some(file) = self.reopened.take() {
            self.file = file;
        }
    }

    /// Whether a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.spare.is_none()
    }

    /// Batches go to `fd` from now on (a log reopened on SIGHUP, as
    /// logrotate expects); with a batch in flight on the old descriptor,
    /// from its completion on.
    pub fn reopen(&mut self, fd: OwnedFd) {
        let file = File::from(fd);
        if self.in_flight() {
            self.reopened = Some(file);
        } else {
            self.file = file;
        }
    }

    /// The descriptor the owner's ring writes the next batch to; valid as
    /// long as these batches live.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Writes the filling batch synchronously (at exit, or before the
    /// thread has a ring). A failure is dropped: the bytes have nowhere
    /// else to go.
    pub fn flush_blocking(&mut self) {
        if !self.filling.is_empty() {
            let _ = self.file.write_all(&self.filling);
        }
        self.filling.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_null() -> OwnedFd {
        File::options()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into()
    }

    #[test]
    fn one_fills_while_the_other_is_written() {
        let mut batches = Batches::new(dev_null(), 8);
        assert!(batches.take().is_none(), "nothing waits");
        assert!(batches.push(b"abcd"));
        assert!(
            !batches.push(b"efghi"),
            "a line that does not fit is refused whole"
        );
        let batch = batches.take().unwrap();
        assert_eq!(batch, b"abcd");
        assert!(batches.in_flight());
        assert!(batches.push(b"efgh"));
        assert!(batches.take().is_none(), "one batch in flight at a time");
        batches.written(batch);
        assert!(!batches.in_flight());
        assert_eq!(batches.take().unwrap(), b"efgh");
    }

    #[test]
    fn a_reopened_destination_waits_for_the_batch_in_flight() {
        let mut batches = Batches::new(dev_null(), 8);
        let old = batches.fd();
        assert!(batches.push(b"x"));
        let batch = batches.take().unwrap();
        batches.reopen(dev_null());
        assert_eq!(
            batches.fd(),
            old,
            "the batch in flight keeps its descriptor"
        );
        batches.written(batch);
        assert_ne!(batches.fd(), old);
    }
}
