//! Kernel symbols (placeholder while paging builds).
