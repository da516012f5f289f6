//! Guest-virtual memory as the emulated instruction sees it: every address goes through the
//! guest's page tables with the access's permissions (write, user/supervisor, SMAP/SMEP,
//! execute), page by page, and must land in guest RAM.
//!
//! A failed check is the architectural fault the CPU would raise (#PF with CR2 and error
//! code, #GP(0) for a non-canonical address); a page that is not RAM (MMIO) or a walk the
//! walker cannot do is not something hvprobe emulates.

use introspect::paging::{PageWalker, PagingContext, Translation, WalkError};
use introspect::{Gpa, Gva, PhysMem, PhysMemMut};

use crate::memory::GuestMem;

/// #PF error code: the fault was a protection violation (else: not present).
pub const PF_PRESENT: u32 = 1;
/// #PF error code: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code: the access was made at CPL 3.
pub const PF_USER: u32 = 1 << 2;
/// #PF error code: a paging entry had reserved bits set.
pub const PF_RSVD: u32 = 1 << 3;
/// #PF error code: the access was an instruction fetch (reported when NX or SMEP is on).
pub const PF_FETCH: u32 = 1 << 4;

/// CR4.SMEP: supervisor fetches from user pages fault.
const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC is set.
const CR4_SMAP: u64 = 1 << 21;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;
/// Paging-entry accessed bit.
const PTE_A: u64 = 1 << 5;
/// Paging-entry dirty bit (leaf entries).
const PTE_D: u64 = 1 << 6;
/// Paging-entry page-size bit.
const PTE_PS: u64 = 1 << 7;
/// Bits 51:12 of a paging entry.
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// How memory is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A data read.
    Read,
    /// A data write (or a read-modify-write).
    Write,
    /// An instruction fetch.
    Fetch,
}

/// Why an access cannot be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemFault {
    /// The CPU would raise #PF with this CR2 and error code.
    Page {
        /// The faulting linear address.
        cr2: u64,
        /// The #PF error code.
        error_code: u32,
    },
    /// The address is not canonical: #GP(0).
    NonCanonical(u64),
    /// The address maps to guest-physical memory that is not RAM.
    Mmio {
        /// The virtual address.
        gva: u64,
        /// Where it maps to.
        gpa: u64,
    },
    /// Something the emulator does not handle (paging mode, page tables outside RAM).
    Unsupported(String),
}

/// One translated piece of an access: `len` bytes at `gpa`, from `offset` into the access.
#[derive(Clone, Copy, Debug)]
struct Piece {
    gva: u64,
    gpa: Gpa,
    offset: usize,
    len: usize,
}

/// Guest memory through one vCPU's eyes (paging registers, CPL, SMAP/SMEP state).
pub struct Guest<'m> {
    mem: &'m GuestMem,
    paging: PagingContext,
    walker: PageWalker,
    user: bool,
    smap: bool,
    smep: bool,
}

impl<'m> Guest<'m> {
    /// The view of a vCPU with these control registers, CPL and RFLAGS.
    pub fn new(
        mem: &'m GuestMem,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
        cpl: u8,
        rflags: u64,
    ) -> Self {
        Guest {
            mem,
            paging: PagingContext {
                cr0,
                cr3,
                cr4,
                efer,
                max_phys_bits: 52,
            },
            walker: PageWalker::new(),
            user: cpl == 3,
            smap: cr4 & CR4_SMAP != 0 && rflags & RFLAGS_AC == 0,
            smep: cr4 & CR4_SMEP != 0,
        }
    }

    /// Fetches up to `max` instruction bytes at `rip`, crossing into the next page when the
    /// first one ends sooner. Returns the bytes and, if the second page could not be fetched,
    /// why (it matters only if the instruction turns out to need those bytes).
    pub fn fetch(&mut self, rip: u64, max: usize) -> Result<(Vec<u8>, Option<MemFault>), MemFault> {
        let first = usize::try_from(Gva(rip).bytes_to_page_end()).map_or(max, |n| n.min(max));
        let mut bytes = vec![0u8; first];
        self.read(rip, &mut bytes, Kind::Fetch)?;
        if first == max {
            return Ok((bytes, None));
        }
        let next = rip.wrapping_add(first as u64);
        let mut rest = vec![0u8; max - first];
        match self.read(next, &mut rest, Kind::Fetch) {
            Ok(()) => {
                bytes.extend_from_slice(&rest);
                Ok((bytes, None))
            }
            Err(f) => Ok((bytes, Some(f))),
        }
    }

    /// Reads `buf.len()` bytes at `gva` with the checks of an access of `kind`.
    pub fn read(&mut self, gva: u64, buf: &mut [u8], kind: Kind) -> Result<(), MemFault> {
        let pieces = self.pieces(gva, buf.len(), kind)?;
        for p in &pieces {
            self.mem
                .read_phys(p.gpa, &mut buf[p.offset..p.offset + p.len])
                .map_err(|_| MemFault::Mmio {
                    gva: p.gva,
                    gpa: p.gpa.raw(),
                })?;
        }
        self.mark(&pieces, false);
        Ok(())
    }

    /// Checks that `len` bytes at `gva` may be written, then writes `data` (at most `len`
    /// bytes) from `gva`. Nothing is written unless every page of the `len` bytes passes.
    pub fn write(&mut self, gva: u64, len: usize, data: &[u8]) -> Result<(), MemFault> {
        let pieces = self.pieces(gva, len.max(data.len()), Kind::Write)?;
        for p in &pieces {
            let end = (p.offset + p.len).min(data.len());
            if p.offset >= end {
                continue;
            }
            self.mem
                .write_phys(p.gpa, &data[p.offset..end])
                .map_err(|_| MemFault::Mmio {
                    gva: p.gva,
                    gpa: p.gpa.raw(),
                })?;
        }
        self.mark(&pieces, true);
        Ok(())
    }

    /// Checks that `len` bytes at `gva` may be accessed as `kind` (translation, permission,
    /// RAM), without touching them.
    pub fn check(&mut self, gva: u64, len: usize, kind: Kind) -> Result<(), MemFault> {
        self.pieces(gva, len, kind).map(|_| ())
    }

    /// Translates and checks every page of `gva..gva+len`, in address order (the first page
    /// that fails is the one the CPU reports).
    fn pieces(&mut self, gva: u64, len: usize, kind: Kind) -> Result<Vec<Piece>, MemFault> {
        let mut pieces = Vec::new();
        let mut offset = 0;
        while offset < len {
            let at = gva.wrapping_add(offset as u64);
            if offset > 0 && at < gva {
                // Wrapped past the top of the address space: the next byte is not canonical
                // in 64-bit mode anyway, so report the address that wrapped.
                return Err(MemFault::NonCanonical(at));
            }
            let to_end = usize::try_from(Gva(at).bytes_to_page_end()).unwrap_or(usize::MAX);
            let n = to_end.min(len - offset);
            let t = self.translate(at, kind)?;
            if !self.mem.contains(t.gpa, n as u64) {
                return Err(MemFault::Mmio {
                    gva: at,
                    gpa: t.gpa.raw(),
                });
            }
            pieces.push(Piece {
                gva: at,
                gpa: t.gpa,
                offset,
                len: n,
            });
            offset += n;
        }
        Ok(pieces)
    }

    /// Translates one address and applies the access's permission checks.
    fn translate(&mut self, gva: u64, kind: Kind) -> Result<Translation, MemFault> {
        let mut code = match kind {
            Kind::Write => PF_WRITE,
            Kind::Fetch if self.paging.nxe() || self.smep => PF_FETCH,
            _ => 0,
        };
        if self.user {
            code |= PF_USER;
        }
        let page = |error_code| MemFault::Page {
            cr2: gva,
            error_code,
        };
        let t = match self.walker.translate(self.mem, &self.paging, Gva(gva)) {
            Ok(t) => t,
            Err(WalkError::NotPresent { .. }) => return Err(page(code)),
            Err(WalkError::ReservedBits { .. }) => {
                return Err(page(code | PF_PRESENT | PF_RSVD));
            }
            Err(WalkError::NonCanonical(_)) => return Err(MemFault::NonCanonical(gva)),
            Err(e) => return Err(MemFault::Unsupported(e.to_string())),
        };
        let allowed = match kind {
            _ if self.user && !t.user => false,
            Kind::Fetch => t.executable && !(!self.user && t.user && self.smep),
            Kind::Read => !(!self.user && t.user && self.smap),
            Kind::Write => {
                let writable = if self.user {
                    t.writable
                } else {
                    t.kernel_writable
                };
                writable && !(!self.user && t.user && self.smap)
            }
        };
        if allowed {
            Ok(t)
        } else {
            Err(page(code | PF_PRESENT))
        }
    }

    /// Sets the accessed bits of the paging entries the pieces went through, and the dirty
    /// bit of their leaf entries for a write, as the CPU does (Linux reads them for reclaim
    /// and writeback).
    fn mark(&mut self, pieces: &[Piece], write: bool) {
        for p in pieces {
            self.set_accessed_dirty(p.gva, write);
        }
    }

    /// Walks `gva`'s entries again and sets A (every level) and D (the leaf, for a write)
    /// with atomic ORs on guest RAM, so concurrent guest updates of other bits are kept.
    fn set_accessed_dirty(&mut self, gva: u64, write: bool) {
        let levels = u32::from(self.paging.levels());
        let mut table = self.paging.cr3 & PTE_ADDR;
        for level in (1..=levels).rev() {
            let index = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
            let entry_gpa = Gpa(table + index * 8);
            let mut raw = [0u8; 8];
            if self.mem.read_phys(entry_gpa, &mut raw).is_err() {
                return;
            }
            let entry = u64::from_le_bytes(raw);
            let leaf = level == 1 || (level <= 3 && entry & PTE_PS != 0);
            let want = PTE_A | if leaf && write { PTE_D } else { 0 };
            if entry & want != want {
                atomic_or(self.mem, entry_gpa, want);
            }
            if leaf {
                break;
            }
            table = entry & PTE_ADDR;
        }
        if write {
            // The walker caches translations; the guest's tables changed under it.
            self.walker.invalidate_all();
        }
    }
}

/// ORs `bits` into the aligned u64 at `gpa` in guest RAM atomically (a no-op outside RAM).
fn atomic_or(mem: &GuestMem, gpa: Gpa, bits: u64) {
    if gpa.raw() % 8 != 0 {
        return;
    }
    for (start, len, host) in mem.regions() {
        let Some(off) = gpa.raw().checked_sub(start.raw()) else {
            continue;
        };
        if off.checked_add(8).is_none_or(|end| end > len) {
            continue;
        }
        let Ok(off) = usize::try_from(off) else {
            return;
        };
        // SAFETY: `host` is the start of a live mapping of `len` bytes owned by `mem` (which
        // outlives this call), `off + 8 <= len`, and `host + off` is 8-byte aligned because
        // regions start page-aligned and `gpa` is 8-byte aligned. Guest RAM is shared with
        // running vCPUs, which is why the update is an atomic read-modify-write.
        let word = unsafe { std::sync::atomic::AtomicU64::from_ptr(host.add(off).cast::<u64>()) };
        word.fetch_or(bits, std::sync::atomic::Ordering::SeqCst);
        return;
    }
}
