//! keystone-files — file serving as pure decisions: which path to open,
//! what a file's headers say, and what a request's conditionals and range
//! ask of it; no syscalls at all.
//!
//! Job: the connection state machine (keystone-conn) asks io_uring to open
//! (`IORING_OP_OPENAT2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`,
//! relative to a root directory descriptor) and stat (`IORING_OP_STATX`)
//! files; this crate decides everything around those two operations and
//! never performs one. Descriptors appear here only as plain `i32`s the
//! caller opened and the caller closes.
//!
//! Owns: [`FileError`] and [`FileError::status`], the one place file errors
//! become statuses, and [`FileError::from_errno`], the one errno mapping;
//! [`RelativePath`] (decoding and confinement of a request path, checked
//! before the kernel confines it again); [`FileMeta`] and
//! [`FileKind::next_step`] (what a statx result means); [`content_type`];
//! [`Validators`] (ETag, Last-Modified); [`not_modified`], [`range`] and
//! [`decide`] (RFC 9110 conditionals and single ranges); [`FileCache`], a
//! per-worker open-file cache in the spirit of nginx's `open_file_cache`.
//!
//! Never depends on: keystone-ringbuf, keystone-router, keystone-exchange,
//! keystone-lua, keystone-reactor, keystone-ebpf, keystone-conn, keystone-app,
//! keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server (direct edges; keystone-response, used for
//! `format_imf` and `content_range`, itself sits above keystone-exchange).
//!
//! # Architecture invariant
//! No syscalls: nothing here opens, stats, reads or closes (time is an
//! argument, `Instant`s are the caller's). No allocation after
//! construction: [`FileCache::new`] allocates everything the cache will
//! ever use; lookups, inserts and releases allocate nothing
//! (`tests/no_alloc.rs` proves it under a counting allocator), and the other
//! decisions work on caller-owned bytes and fixed arrays. No `unsafe`.
//!
//! # Staleness rule
//! See [`FileCache`]: a cached descriptor, its size and validators are
//! served for at most `valid_for` after the open that made them, whatever
//! happens to the file on disk meanwhile.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod conditional;
mod error;
mod meta;
mod path;
mod validators;

pub use cache::{
    CachedFile, FileCache, Handle, Insert, CONTENT_BYTES_MAX, ENTRIES_MAX, KEY_BYTES_MAX,
};
pub use conditional::{
    decide, http_date_secs, not_modified, precondition_holds, range, Conditions, Current, Decision,
    RangeAnswer,
};
pub use error::FileError;
pub use meta::{content_type, FileKind, FileMeta, NextStep, OCTET_STREAM};
pub use path::{RelativePath, INDEX_FILE, PATH_BYTES_MAX};
pub use validators::{Validators, ETAG_BYTES_MAX};
