//! Table-driven parser tests, incremental equivalence, a differential
//! proptest against httparse, and chunked decoder tests.

mod chunked;
mod differential;
mod head;
