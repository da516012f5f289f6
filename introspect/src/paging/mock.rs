//! A Vec-backed guest memory and a page-table builder for the walker's tests.

use std::cell::RefCell;

use super::{PageSize, PhysMem, PhysMemError, PhysMemMut};
use crate::addr::Gpa;

pub(super) const P: u64 = 1;
pub(super) const RW: u64 = 1 << 1;
pub(super) const US: u64 = 1 << 2;
pub(super) const PS: u64 = 1 << 7;
pub(super) const XD: u64 = 1 << 63;

/// Guest RAM from 0 to `size`, with page tables bump-allocated from 0x1000 upwards.
pub(super) struct MockMem {
    bytes: RefCell<Vec<u8>>,
    next_table: RefCell<u64>,
}

impl PhysMem for MockMem {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        let bytes = self.bytes.borrow();
        let range = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }
}

impl PhysMemMut for MockMem {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        let range = self.range(gpa, buf.len())?;
        self.bytes.borrow_mut()[range].copy_from_slice(buf);
        Ok(())
    }
}

impl MockMem {
    pub(super) fn new(size: usize) -> Self {
        MockMem {
            bytes: RefCell::new(vec![0; size]),
            next_table: RefCell::new(0x1000),
        }
    }

    fn range(&self, gpa: Gpa, len: usize) -> Result<std::ops::Range<usize>, PhysMemError> {
        let err = PhysMemError::OutOfRange { gpa, len };
        let start = usize::try_from(gpa.raw()).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > self.bytes.borrow().len() {
            return Err(err);
        }
        Ok(start..end)
    }

    /// A fresh zeroed 4 KiB table.
    pub(super) fn alloc_table(&self) -> u64 {
        let mut next = self.next_table.borrow_mut();
        let t = *next;
        *next += 0x1000;
        t
    }

    pub(super) fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0; 8];
        self.read_phys(Gpa(gpa), &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    pub(super) fn write_u64(&self, gpa: u64, v: u64) {
        self.write_phys(Gpa(gpa), &v.to_le_bytes()).unwrap();
    }

    /// Maps `gva` to `frame` with a page of `size` under the `root` table, `levels` deep. Missing
    /// tables are created with `table_flags`; the leaf gets `leaf_flags` (plus PS for large
    /// pages). Returns the entry addresses walked, indexed by level (index 0 unused).
    pub(super) fn map(
        &self,
        (root, levels): (u64, u8),
        gva: u64,
        frame: u64,
        size: PageSize,
        table_flags: u64,
        leaf_flags: u64,
    ) -> [u64; 6] {
        let leaf_level = match size {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        };
        let mut entries = [0; 6];
        let mut table = root;
        for level in (leaf_level..=levels).rev() {
            let index = (gva >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
            let entry_gpa = table + index * 8;
            entries[usize::from(level)] = entry_gpa;
            if level == leaf_level {
                let ps = if leaf_level > 1 { PS } else { 0 };
                self.write_u64(entry_gpa, frame | leaf_flags | ps);
                break;
            }
            let entry = self.read_u64(entry_gpa);
            table = if entry & P != 0 {
                entry & 0x000f_ffff_ffff_f000
            } else {
                let t = self.alloc_table();
                self.write_u64(entry_gpa, t | table_flags);
                t
            };
        }
        entries
    }
}
