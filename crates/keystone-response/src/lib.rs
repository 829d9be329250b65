//! keystone-response (skeleton).
