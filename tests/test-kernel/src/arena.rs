//! The trampoline arena: 20 MiB of guest memory this kernel reserves (`.hvprobe_arena` in
//! linker.ld) for hvprobe's jump-optimized probes, and the little the guest knows of its
//! layout. See README.md ("The trampoline arena") for the whole contract.
//!
//! The kernel never writes the arena: it reports it at boot ([`report`]) and, between
//! benchmark rounds, waits until hvprobe has consumed every record the trampolines wrote
//! ([`wait_drained`]). Everything in it is written by hvprobe or by trampolines running on
//! another vCPU or behind the compiler's back, so every read here is volatile.

use crate::testdev;

unsafe extern "C" {
    /// First byte of the arena (linker.ld).
    static __hvprobe_arena_start: u8;
    /// One past the arena's last byte (linker.ld).
    static __hvprobe_arena_end: u8;
}

/// The header's magic, "HVPA" in little-endian bytes.
pub const MAGIC: u32 = 0x4150_5648;

/// Offsets of the header fields this kernel reads (page 0 of the arena, written by hvprobe;
/// README.md has the whole header).
pub mod header {
    /// u32 [`super::MAGIC`].
    pub const MAGIC: usize = 0x00;
    /// u32 number of rings.
    pub const RING_COUNT: usize = 0x08;
    /// u64 offset of ring 0 from the arena base.
    pub const RINGS_OFFSET: usize = 0x18;
    /// u64 bytes from one ring to the next.
    pub const RING_STRIDE: usize = 0x20;
}

/// Offset of a ring's head (u64, records reserved; written by trampolines).
pub const RING_HEAD: usize = 0;
/// Offset of a ring's tail (u64, records consumed; written by hvprobe).
pub const RING_TAIL: usize = 64;

/// How many times [`wait_drained`] polls before giving up (2^28).
pub const MAX_SPINS: u64 = 1 << 28;

/// The arena's first byte (guest-virtual; identity-mapped, so also guest-physical).
pub fn base() -> usize {
    // Only the symbol's address is taken; the byte itself is never read here.
    core::ptr::addr_of!(__hvprobe_arena_start) as usize
}

/// The arena's length in bytes.
pub fn len() -> usize {
    let end = core::ptr::addr_of!(__hvprobe_arena_end) as usize;
    end - base()
}

/// Reports the arena to hvprobe (test device ARENA registers).
pub fn report() {
    testdev::report_arena(base() as u64, u32::try_from(len()).unwrap_or(u32::MAX));
}

/// Reads the u32 at `offset` in the arena.
fn read_u32(offset: usize) -> u32 {
    assert!(offset + 4 <= len());
    // SAFETY: inside the arena (checked), which is mapped RAM reserved for this purpose; the
    // arena is page-aligned and the callers' offsets are 4-byte aligned.
    unsafe { ((base() + offset) as *const u32).read_volatile() }
}

/// Reads the u64 at `offset` in the arena.
fn read_u64(offset: usize) -> u64 {
    assert!(offset + 8 <= len());
    // SAFETY: as in `read_u32`, with 8-byte aligned offsets.
    unsafe { ((base() + offset) as *const u64).read_volatile() }
}

/// True if hvprobe wrote the arena header (its magic is there).
pub fn is_attached() -> bool {
    read_u32(header::MAGIC) == MAGIC
}

/// Waits until hvprobe has consumed every record of every ring (each ring's tail equals its
/// head). Returns true at once if no header is there (no jump-optimized probes), true once
/// drained, and false if the header is unusable or the rings are still not drained after
/// [`MAX_SPINS`] polls (about 0.3 s in ring 3 natively, but minutes of emulated ring 0 on our
/// CI's KVM), so a guest never hangs here.
pub fn wait_drained() -> bool {
    if !is_attached() {
        return true;
    }
    let count = u64::from(read_u32(header::RING_COUNT));
    let rings = read_u64(header::RINGS_OFFSET);
    let stride = read_u64(header::RING_STRIDE);
    let fits = count
        .checked_mul(stride)
        .and_then(|size| size.checked_add(rings))
        .is_some_and(|end| end <= len() as u64 && stride >= RING_TAIL as u64 + 8);
    if !fits {
        return count == 0;
    }
    let mut spins = 0u64;
    for i in 0..count {
        // Below len() (checked above), so it fits.
        let Ok(ring) = usize::try_from(rings + i * stride) else {
            return false;
        };
        while read_u64(ring + RING_TAIL) != read_u64(ring + RING_HEAD) {
            spins += 1;
            if spins >= MAX_SPINS {
                return false;
            }
            core::hint::spin_loop();
        }
    }
    true
}
