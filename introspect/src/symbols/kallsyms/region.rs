//! [`Region`]: bytes at a known virtual address, with bounds-checked little-endian reads and
//! alignment computed on virtual addresses (the tables are aligned in the kernel's address
//! space, not in whatever buffer holds them).

#[derive(Debug, Clone, Copy)]
pub(super) struct Region<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) base: u64,
}

impl<'a> Region<'a> {
    /// The virtual address of byte `pos`.
    pub(super) fn va(&self, pos: usize) -> u64 {
        self.base.wrapping_add(pos as u64)
    }

    pub(super) fn get(&self, pos: usize, n: usize) -> Option<&'a [u8]> {
        self.bytes.get(pos..pos.checked_add(n)?)
    }

    fn array<const N: usize>(&self, pos: usize) -> Option<[u8; N]> {
        self.get(pos, N)?.try_into().ok()
    }

    pub(super) fn u8(&self, pos: usize) -> Option<u8> {
        self.bytes.get(pos).copied()
    }

    pub(super) fn u16(&self, pos: usize) -> Option<u16> {
        self.array(pos).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&self, pos: usize) -> Option<u32> {
        self.array(pos).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&self, pos: usize) -> Option<u64> {
        self.array(pos).map(u64::from_le_bytes)
    }

    /// How far `pos` is past the previous multiple of `align` (a power of two), in bytes.
    fn misalignment(&self, pos: usize, align: u64) -> usize {
        // Less than `align`, which is small: always fits.
        usize::try_from(self.va(pos) & (align - 1)).unwrap_or(0)
    }

    pub(super) fn is_aligned(&self, pos: usize, align: u64) -> bool {
        self.misalignment(pos, align) == 0
    }

    /// The first position at or after `pos` whose address is a multiple of `align`.
    pub(super) fn align_up(&self, pos: usize, align: u64) -> Option<usize> {
        match self.misalignment(pos, align) {
            0 => Some(pos),
            m => pos.checked_add(usize::try_from(align).ok()? - m),
        }
    }

    /// The last position at or before `pos` whose address is a multiple of `align`.
    pub(super) fn align_down(&self, pos: usize, align: u64) -> Option<usize> {
        pos.checked_sub(self.misalignment(pos, align))
    }
}
