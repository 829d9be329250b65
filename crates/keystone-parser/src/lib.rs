//! keystone-parser (skeleton).
