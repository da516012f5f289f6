//! A small direct-mapped cache of translations, keyed by (paging context, 4 KiB page).

use super::{CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, EFER_LMA, EFER_NXE, PagingContext, Translation};
use crate::addr::{Gpa, Gva};

/// Number of cached pages (a power of two).
const SLOTS: usize = 256;

/// How the cache has been used since the walker was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that needed a walk.
    pub misses: u64,
    /// Times the whole cache was dropped (CR3 or mode change, our own writes, explicit calls).
    pub flushes: u64,
}

/// The parts of a [`PagingContext`] that change translations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    cr3: u64,
    cr0: u64,
    cr4: u64,
    efer: u64,
    max_phys_bits: u8,
}

impl Key {
    fn of(ctx: &PagingContext) -> Key {
        Key {
            cr3: ctx.cr3,
            cr0: ctx.cr0 & (CR0_PG | CR0_WP),
            cr4: ctx.cr4 & (CR4_PAE | CR4_LA57),
            efer: ctx.efer & (EFER_LMA | EFER_NXE),
            max_phys_bits: ctx.max_phys_bits,
        }
    }
}

/// Cached translations of 4 KiB virtual pages under one paging context.
#[derive(Debug, Clone)]
pub(super) struct TranslationCache {
    key: Option<Key>,
    /// Per slot: the virtual page number and its translation, whose `gpa` is the 4 KiB frame.
    slots: Box<[Option<(u64, Translation)>; SLOTS]>,
    stats: CacheStats,
}

impl TranslationCache {
    pub(super) fn new() -> Self {
        TranslationCache {
            key: None,
            slots: Box::new([None; SLOTS]),
            stats: CacheStats::default(),
        }
    }

    /// Drops everything if `ctx` differs from the context the entries were made under.
    pub(super) fn sync(&mut self, ctx: &PagingContext) {
        let key = Key::of(ctx);
        if self.key != Some(key) {
            if self.key.is_some() {
                self.invalidate_all();
            }
            self.key = Some(key);
        }
    }

    pub(super) fn invalidate_all(&mut self) {
        self.slots.fill(None);
        self.stats.flushes += 1;
    }

    /// The cached translation of `gva`, if any (call [`Self::sync`] first).
    pub(super) fn get(&mut self, gva: Gva) -> Option<Translation> {
        let vpn = gva.page_number();
        match self.slots[slot(vpn)] {
            Some((v, t)) if v == vpn => {
                self.stats.hits += 1;
                Some(Translation {
                    gpa: Gpa(t.gpa.raw() | gva.page_offset()),
                    ..t
                })
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Remembers the translation `t` of `gva`.
    pub(super) fn insert(&mut self, gva: Gva, t: Translation) {
        let vpn = gva.page_number();
        let frame = Translation {
            gpa: t.gpa.page_base(),
            ..t
        };
        self.slots[slot(vpn)] = Some((vpn, frame));
    }

    pub(super) fn stats(&self) -> CacheStats {
        self.stats
    }
}

fn slot(vpn: u64) -> usize {
    // SLOTS is a power of two, so the masked value always fits.
    usize::from(u16::try_from((vpn ^ (vpn >> 8)) & (SLOTS as u64 - 1)).unwrap_or(0))
}
