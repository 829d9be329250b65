//! keystone-exchange (skeleton).
