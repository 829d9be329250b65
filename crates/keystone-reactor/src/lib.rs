//! keystone-reactor (skeleton).
