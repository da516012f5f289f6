//! x86_64 guest page-table walking: guest-virtual to guest-physical translation.
//!
//! The walker reads the guest's page tables through the tiny [`PhysMem`] trait, so the VM's
//! guest memory and test mocks drive the same code. It handles 4-level and 5-level paging
//! (CR4.LA57: Debian's kernel enables it when the CPU has it), 4 KiB, 2 MiB and 1 GiB pages,
//! and reports the permissions combined across every level. [`PageWalker`] adds a small
//! translation cache and page-crossing virtual reads and writes.
//!
//! Only IA-32e (long mode) paging is supported: the guests hvprobe instruments are 64-bit
//! kernels; legacy 32-bit and PAE paging give [`WalkError::NotLongMode`].

mod cache;
mod virt;
mod walk;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use crate::addr::{Gpa, Gva};

pub use cache::CacheStats;
pub use virt::PageWalker;
pub use walk::translate;

/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR4.PSE: 4 MiB pages in 32-bit paging (ignored in long mode, where large pages always work).
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical address extension, required for long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging, 57-bit virtual addresses.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the XD bit (63) of page-table entries is honoured instead of reserved.
pub const EFER_NXE: u64 = 1 << 11;

/// The guest's physical memory as the walker sees it.
pub trait PhysMem {
    /// Fills `buf` from guest-physical `gpa` onwards; fails if any byte is not guest RAM.
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError>;
}

/// Guest physical memory that can also be written.
///
/// Writes take `&self`, as guest memory is shared with running vCPUs (vm-memory does the same).
pub trait PhysMemMut: PhysMem {
    /// Writes `buf` to guest-physical `gpa` onwards; fails if any byte is not guest RAM.
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError>;
}

/// A guest-physical access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhysMemError {
    /// Some byte of the range has no guest RAM behind it.
    #[error("Guest-physical range {gpa}+{len:#x} is not backed by guest RAM")]
    OutOfRange {
        /// First byte of the access.
        gpa: Gpa,
        /// Length of the access.
        len: usize,
    },
}

/// The vCPU state that decides how virtual addresses translate: the raw control registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PagingContext {
    /// CR0 (PG and WP matter).
    pub cr0: u64,
    /// CR3: the root table's physical address in bits 51:12 (PCID and flags are ignored).
    pub cr3: u64,
    /// CR4 (PAE and LA57 matter; PSE is ignored in long mode).
    pub cr4: u64,
    /// IA32_EFER (LMA and NXE matter).
    pub efer: u64,
    /// The guest's physical address width (CPUID 0x80000008 EAX bits 7:0); entry bits from here
    /// up to 51 are reserved. 52 (the default) checks only what is reserved on every CPU.
    pub max_phys_bits: u8,
}

impl PagingContext {
    /// A running 64-bit kernel's state: paging, write protection, PAE, long mode and NX on,
    /// with 5-level paging when `la57`.
    pub const fn long_mode(cr3: u64, la57: bool) -> Self {
        PagingContext {
            cr0: CR0_PE | CR0_PG | CR0_WP,
            cr3,
            cr4: CR4_PAE | if la57 { CR4_LA57 } else { 0 },
            efer: EFER_LME | EFER_LMA | EFER_NXE,
            max_phys_bits: 52,
        }
    }

    /// Whether 5-level paging (LA57) is on.
    pub const fn la57(&self) -> bool {
        self.cr4 & CR4_LA57 != 0
    }

    /// Whether the XD bit of entries is honoured (EFER.NXE).
    pub const fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0
    }

    /// Whether supervisor writes honour read-only pages (CR0.WP).
    pub const fn wp(&self) -> bool {
        self.cr0 & CR0_WP != 0
    }

    /// The number of paging levels: 5 with LA57, else 4.
    pub const fn levels(&self) -> u8 {
        if self.la57() { 5 } else { 4 }
    }
}

/// The size of the page a translation landed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PDE with PS set.
    Size2M,
    /// 1 GiB, mapped by a PDPTE with PS set.
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// A successful translation of one guest-virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The guest-physical address the virtual address maps to.
    pub gpa: Gpa,
    /// The size of the page it lies in.
    pub page_size: PageSize,
    /// R/W set at every level: user-mode code may write (and the kernel too when CR0.WP=1).
    pub writable: bool,
    /// U/S set at every level: user-mode code may access the page.
    pub user: bool,
    /// No level sets XD (or EFER.NXE is off): code may execute from the page.
    pub executable: bool,
    /// Kernel-mode code may write: `writable`, or CR0.WP is clear.
    pub kernel_writable: bool,
}

/// Why a guest-virtual address did not translate. Levels are numbered as in the Intel SDM:
/// 5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// CR0.PG is clear: there are no page tables to walk.
    #[error("Paging is disabled (CR0.PG=0): guest-virtual addresses are physical")]
    PagingDisabled,
    /// Paging is on but not IA-32e (64-bit) paging.
    #[error(
        "The vCPU is not in long mode (EFER.LMA=0 or CR4.PAE=0): only 64-bit paging is supported"
    )]
    NotLongMode,
    /// The address is not canonical for the current paging depth.
    #[error("Guest-virtual address {0} is not canonical")]
    NonCanonical(Gva),
    /// The entry at `level` has P=0.
    #[error("Not present: {} at {entry_gpa} is {entry:#x}", level_name(*level))]
    NotPresent {
        /// The level whose entry is not present.
        level: u8,
        /// Where the entry is.
        entry_gpa: Gpa,
        /// The entry's value.
        entry: u64,
    },
    /// The entry at `level` sets bits the CPU requires to be zero (a real walk would fault).
    #[error("Reserved bits set: {} at {entry_gpa} is {entry:#x}", level_name(*level))]
    ReservedBits {
        /// The level whose entry is malformed.
        level: u8,
        /// Where the entry is.
        entry_gpa: Gpa,
        /// The entry's value.
        entry: u64,
    },
    /// The page-table entry itself could not be read.
    #[error("Cannot read the {} at {entry_gpa}", level_name(*level))]
    Memory {
        /// The level whose entry could not be read.
        level: u8,
        /// Where the entry should be.
        entry_gpa: Gpa,
        /// Why the read failed.
        #[source]
        source: PhysMemError,
    },
}

/// The SDM name of a paging level's entry (5 = PML5E ... 1 = PTE).
pub const fn level_name(level: u8) -> &'static str {
    match level {
        5 => "PML5E",
        4 => "PML4E",
        3 => "PDPTE",
        2 => "PDE",
        1 => "PTE",
        _ => "page-table entry",
    }
}

/// Why a guest-virtual read or write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtError {
    /// A page of the range does not translate.
    #[error("Cannot translate guest-virtual address {gva}")]
    Translate {
        /// The first address of the range that did not translate.
        gva: Gva,
        /// Why.
        #[source]
        source: WalkError,
    },
    /// A page translated to guest-physical memory that cannot be accessed.
    #[error("Guest-virtual address {gva} maps to {gpa}, which cannot be accessed")]
    Phys {
        /// The virtual address of the failed chunk.
        gva: Gva,
        /// Where it maps to.
        gpa: Gpa,
        /// Why the access failed.
        #[source]
        source: PhysMemError,
    },
    /// The range runs past the top of the 64-bit address space.
    #[error("Guest-virtual range {gva}+{len:#x} wraps around the address space")]
    Wraps {
        /// Start of the range.
        gva: Gva,
        /// Its length.
        len: usize,
    },
}
