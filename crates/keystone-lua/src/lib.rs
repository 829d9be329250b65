//! keystone-lua (skeleton).
