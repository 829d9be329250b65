//! keystone-server (skeleton).
