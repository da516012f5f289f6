//! Kernel loaders (in progress).
