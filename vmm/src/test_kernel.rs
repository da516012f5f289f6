//! The embedded test kernel (in progress).
