//! keystone-ebpf (skeleton).
