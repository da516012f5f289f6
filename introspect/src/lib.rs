//! Guest introspection for hvprobe: the pure logic that needs no VM.
//!
//! - [`addr`]: distinct guest-physical ([`Gpa`]) and guest-virtual ([`Gva`]) addresses.
//! - [`paging`]: an x86_64 page-table walker (4- and 5-level, 4K / 2M / 1G pages) over the
//!   small [`PhysMem`] trait, with a translation cache and page-crossing virtual reads and
//!   writes.
//! - [`symbols`]: a [`SymbolTable`] loaded from an ELF `.symtab`, System.map or
//!   `/proc/kallsyms` text, or the kernel's own embedded kallsyms tables found in a kernel
//!   image or in guest memory.
//! - [`target`]: the narrow seam to a VM ([`target::Target`], [`target::VcpuAccess`]).
//! - [`events`]: the event pipeline: a registry of probe / breakpoint / watchpoint sources
//!   with hit, nmissed and lost counters, a never-blocking bounded sink for vCPU threads, a
//!   writer thread (text or JSON lines), and the per-source summary table.
//! - [`hwbp`]: hardware breakpoints and watchpoints: a pinned / flexible slot manager over
//!   DR0-DR3, DR7 encoding, DR6 decoding, and stepping past execute breakpoints.
//! - [`probes`]: int3 probes in the kprobes model: a registry with aggregation, arming
//!   through guest-physical memory, recovery of the original bytes, refusals, and hit handling
//!   with in-place single-stepping under a step lock.
//! - [`btf`]: the kernel's BTF type information (`.BTF`): structs with member offsets,
//!   typedefs, function prototypes, C-like type names.
//! - [`elf`]: the few ELF64 structures the above need (program headers, symbol table).
//!
//! This crate does not depend on the VMM: the VMM implements [`PhysMem`] for guest memory.

pub mod addr;
pub mod btf;
pub mod elf;
pub mod events;
pub mod hwbp;
pub mod paging;
pub mod probe_lang;
pub mod probes;
pub mod session;
pub mod symbols;
pub mod target;

pub use addr::{Gpa, Gva, PAGE_SIZE};
pub use paging::{
    PageWalker, PagingContext, PhysMem, PhysMemError, PhysMemMut, Translation, VirtError, WalkError,
};

pub use symbols::{ResolveError, Symbol, SymbolOffset, SymbolTable};
