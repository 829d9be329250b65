//! keystone-benches: Keystone's benchmarks. Owns the criterion
//! micro-benchmarks (`benches/micro.rs`) and the raw io_uring responder
//! (`src/bin/raw_uring.rs`, the physical-limit reference that
//! `cargo xtask bench` compares Keystone with); the library itself is empty.
//!
//! Never depends on: keystone-server (benchmarks drive the built binary
//! from `cargo xtask bench`, never its internals).
