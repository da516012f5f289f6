//! ELF (placeholder).
