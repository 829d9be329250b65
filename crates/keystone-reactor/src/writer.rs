//! A writer of byte batches on a small ring of its own that never waits:
//! for a thread whose loop waits elsewhere (the main thread's signal wait)
//! and whose only I/O is writing batches (its log). One batch is in flight
//! at a time; the batch moves into the write and comes back with its
//! result, as every operation of the reactor does.

use std::io;
use std::os::fd::RawFd;

use crate::{Done, Op, Reactor, COMPLETIONS_PER_PUMP, WORKER};

/// Ring entries: one write in flight needs one.
const WRITER_ENTRIES: u32 = 8;

/// One batch in flight at a time, on its own ring.
pub struct BatchWriter {
    reactor: Reactor,
    writing: bool,
    completions: Vec<Done>,
}

impl BatchWriter {
    /// A writer with its own ring.
    pub fn new() -> io::Result<BatchWriter> {
        Ok(BatchWriter {
            reactor: Reactor::new(WRITER_ENTRIES, 0)?,
            writing: false,
            completions: Vec::with_capacity(COMPLETIONS_PER_PUMP),
        })
    }

    /// Whether a batch is being written.
    pub fn writing(&self) -> bool {
        self.writing
    }

    /// Without waiting: submits the batch `next` gives (asked only when none
    /// is in flight), and hands each batch whose write completed, with its
    /// result (bytes or `-errno`), to `written`.
    pub fn pump(
        &mut self,
        next: impl FnOnce() -> Option<(RawFd, Vec<u8>)>,
        mut written: impl FnMut(Vec<u8>, i32),
    ) -> io::Result<()> {
        if !self.writing {
            if let Some((fd, batch)) = next() {
                self.reactor.write(WORKER, fd, batch);
                self.writing = true;
            }
        }
        self.reactor.poll(&mut self.completions)?;
        for done in self.completions.drain(..) {
            if let Op::Write { batch } = done.op {
                self.writing = false;
                written(batch, done.result);
            }
        }
        Ok(())
    }
}
