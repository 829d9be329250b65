//! keystone-router (skeleton).
