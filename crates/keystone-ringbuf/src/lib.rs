//! keystone-ringbuf (skeleton).
