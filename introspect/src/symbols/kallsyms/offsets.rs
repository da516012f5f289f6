//! Finding `kallsyms_offsets` and `kallsyms_relative_base` (CONFIG_KALLSYMS_BASE_RELATIVE)
//! and turning them into addresses.
//!
//! Linux 6.1 lays them out before `kallsyms_num_syms`; 6.4 and later after
//! `kallsyms_token_index`. Each offset is a 32-bit value: with
//! CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86_64 SMP), non-negative ones are absolute addresses
//! (per-CPU symbols) and a negative one means `relative_base - 1 - offset`; without it, every
//! one is `relative_base + (u32)offset`.

use super::region::Region;

/// The decoded addresses and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Addresses {
    pub(super) offsets_pos: usize,
    pub(super) relative_base_pos: usize,
    pub(super) relative_base: u64,
    pub(super) absolute_percpu: bool,
    pub(super) addrs: Vec<u64>,
}

/// Tries the 6.1 layout, then the 6.4+ one; the first whose addresses are sorted wins.
pub(super) fn find(
    r: &Region<'_>,
    num_syms_pos: usize,
    count: u32,
    token_index_end: usize,
) -> Option<Addresses> {
    let n = usize::try_from(count).ok()?;
    let table = 4 * n;
    let before = (|| {
        let base_pos = num_syms_pos.checked_sub(8)?;
        let offsets = base_pos.checked_sub(table.next_multiple_of(8))?;
        decode(r, offsets, base_pos, n)
    })();
    before.or_else(|| {
        let offsets = r.align_up(token_index_end, 8)?;
        let base_pos = r.align_up(offsets.checked_add(table)?, 8)?;
        decode(r, offsets, base_pos, n)
    })
}

fn decode(
    r: &Region<'_>,
    offsets_pos: usize,
    relative_base_pos: usize,
    n: usize,
) -> Option<Addresses> {
    let relative_base = r.u64(relative_base_pos)?;
    let raw = r.get(offsets_pos, 4 * n)?;
    let offsets = || {
        raw.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    };
    // A negative offset only exists with absolute per-CPU symbols: relative offsets of a
    // kernel image (well under 2 GiB) never set the top bit.
    let absolute_percpu = offsets().any(|o| o < 0);
    let addrs: Vec<u64> = offsets()
        .map(|o| match u64::try_from(o) {
            Ok(abs) if absolute_percpu => abs,
            Ok(rel) => relative_base.wrapping_add(rel),
            // relative_base - 1 - o, with o negative: relative_base + (-1 - o), and -1 - o >= 0.
            Err(_) => relative_base.wrapping_add(u64::from((-1 - o).unsigned_abs())),
        })
        .collect();
    if relative_base == 0 || addrs.windows(2).any(|w| w[0] > w[1]) {
        return None;
    }
    Some(Addresses {
        offsets_pos,
        relative_base_pos,
        relative_base,
        absolute_percpu,
        addrs,
    })
}
