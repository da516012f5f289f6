//! [`PageWalker`]: cached translation and page-crossing virtual reads and writes.

use super::cache::{CacheStats, TranslationCache};
use super::{PagingContext, PhysMem, PhysMemError, PhysMemMut, Translation, VirtError, WalkError};
use crate::addr::{Gpa, Gva};

/// Translates guest-virtual addresses with a cache, and reads and writes virtual ranges.
///
/// The cache is dropped when the paging context (CR3, paging mode) changes, on every write
/// made through the walker (it may have hit a page table), and by [`PageWalker::invalidate_all`]
/// (call it when the guest may have changed its page tables, e.g. after it ran).
#[derive(Debug, Clone)]
pub struct PageWalker {
    cache: TranslationCache,
}

impl Default for PageWalker {
    fn default() -> Self {
        Self::new()
    }
}

impl PageWalker {
    /// A walker with an empty cache.
    pub fn new() -> Self {
        PageWalker {
            cache: TranslationCache::new(),
        }
    }

    /// Translates `gva`, from the cache when possible.
    pub fn translate<M: PhysMem + ?Sized>(
        &mut self,
        mem: &M,
        ctx: &PagingContext,
        gva: Gva,
    ) -> Result<Translation, WalkError> {
        self.cache.sync(ctx);
        if let Some(t) = self.cache.get(gva) {
            return Ok(t);
        }
        let t = super::translate(mem, ctx, gva)?;
        self.cache.insert(gva, t);
        Ok(t)
    }

    /// Drops every cached translation.
    pub fn invalidate_all(&mut self) {
        self.cache.invalidate_all();
    }

    /// Cache hits, misses and flushes so far.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Reads `buf.len()` bytes of guest-virtual memory from `gva`, crossing pages as needed.
    ///
    /// Page permissions are not checked: the hypervisor may read anything mapped.
    pub fn read_virt<M: PhysMem + ?Sized>(
        &mut self,
        mem: &M,
        ctx: &PagingContext,
        gva: Gva,
        buf: &mut [u8],
    ) -> Result<(), VirtError> {
        check_range(gva, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = Gva(gva.raw().wrapping_add(done as u64));
            let len = chunk_len(at, buf.len() - done);
            let gpa = self.translate_at(mem, ctx, at)?;
            mem.read_phys(gpa, &mut buf[done..done + len])
                .map_err(|source| VirtError::Phys {
                    gva: at,
                    gpa,
                    source,
                })?;
            done += len;
        }
        Ok(())
    }

    /// Writes `buf` to guest-virtual memory at `gva`, crossing pages as needed, then drops the
    /// translation cache.
    ///
    /// Every page is translated before anything is written, so a range that does not fully
    /// translate is left untouched. Page permissions are not checked: the hypervisor may
    /// write read-only kernel text.
    pub fn write_virt<M: PhysMemMut + ?Sized>(
        &mut self,
        mem: &M,
        ctx: &PagingContext,
        gva: Gva,
        buf: &[u8],
    ) -> Result<(), VirtError> {
        check_range(gva, buf.len())?;
        let mut chunks = Vec::new();
        let mut done = 0;
        while done < buf.len() {
            let at = Gva(gva.raw().wrapping_add(done as u64));
            let len = chunk_len(at, buf.len() - done);
            chunks.push((at, self.translate_at(mem, ctx, at)?, done, len));
            done += len;
        }
        let result = chunks.into_iter().try_for_each(|(at, gpa, off, len)| {
            mem.write_phys(gpa, &buf[off..off + len])
                .map_err(|source| VirtError::Phys {
                    gva: at,
                    gpa,
                    source,
                })
        });
        self.cache.invalidate_all();
        result
    }

    /// Writes guest-physical memory and drops the translation cache (the write may have hit a
    /// page table).
    pub fn write_phys<M: PhysMemMut + ?Sized>(
        &mut self,
        mem: &M,
        gpa: Gpa,
        buf: &[u8],
    ) -> Result<(), PhysMemError> {
        let result = mem.write_phys(gpa, buf);
        self.cache.invalidate_all();
        result
    }

    fn translate_at<M: PhysMem + ?Sized>(
        &mut self,
        mem: &M,
        ctx: &PagingContext,
        gva: Gva,
    ) -> Result<Gpa, VirtError> {
        self.translate(mem, ctx, gva)
            .map(|t| t.gpa)
            .map_err(|source| VirtError::Translate { gva, source })
    }
}

/// Fails if `gva..gva+len` runs past the top of the address space.
fn check_range(gva: Gva, len: usize) -> Result<(), VirtError> {
    if len > 0 && gva.raw().checked_add(len as u64 - 1).is_none() {
        return Err(VirtError::Wraps { gva, len });
    }
    Ok(())
}

/// How many of `remaining` bytes from `at` lie in `at`'s 4 KiB page.
fn chunk_len(at: Gva, remaining: usize) -> usize {
    usize::try_from(at.bytes_to_page_end()).map_or(remaining, |to_end| to_end.min(remaining))
}
