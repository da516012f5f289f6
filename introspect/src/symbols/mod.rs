//! Kernel symbols: a [`SymbolTable`] sorted by address, with name lookup, address to
//! `symbol+offset` lookup and parsing of `name`, `name+0x10`, `name+16` and `0xffff...`.
//!
//! Loaded from:
//! - an ELF `.symtab` ([`SymbolTable::from_elf`]): the test kernel, a vmlinux with symbols;
//! - System.map or `/proc/kallsyms` text ([`SymbolTable::from_system_map`]);
//! - the kernel's own embedded kallsyms tables ([`kallsyms`]), found by content in a kernel
//!   image or in a buffer read from guest memory: this is how Debian's stripped kernel, whose
//!   System.map is a stub, resolves `start_kernel`.

pub mod elf_symtab;
pub mod kallsyms;
mod resolve;
pub mod system_map;
mod table;

pub use elf_symtab::SymtabError;
pub use kallsyms::{Kallsyms, KallsymsError, KallsymsLayout};
pub use resolve::ResolveError;
pub use system_map::SystemMapError;
pub use table::{KaslrError, Symbol, SymbolOffset, SymbolTable, X86_64_LINK_TEXT};
