//! Table-driven parser tests, incremental equivalence, a differential
//! proptest against httparse, and chunked decoder tests (rows and a
//! differential proptest against a reference decoder).

mod chunk_differential;
mod chunked;
mod differential;
mod head;
mod response;
