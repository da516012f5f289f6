//! Finding `kallsyms_markers`: one u32 per 256 symbols, the offset of symbol 256*i in
//! `kallsyms_names`. They end just before the token table, or (kernels with
//! `kallsyms_seqs_of_names` between them, as Debian's 6.1 has) before that array.

use super::region::Region;

/// Every symbol takes at least two bytes in `kallsyms_names` (a length and one token).
const MIN_SYMBOL_BYTES: u32 = 2;
/// ... and at most a two-byte length plus 0x3fff tokens.
const MAX_SYMBOL_BYTES: u32 = 2 + 0x3fff;
/// More symbols than any kernel has (the seqs array numbers them in 24 bits).
pub(super) const MAX_SYMBOLS: usize = 1 << 24;

/// A plausible `kallsyms_markers` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Markers {
    /// Where the array starts.
    pub(super) pos: usize,
    /// Its values (the first is 0).
    pub(super) values: Vec<u32>,
    /// The symbol count, when the seqs array told it.
    pub(super) num_syms: Option<u32>,
    /// Where `kallsyms_seqs_of_names` is, if it sits between the markers and the tokens.
    pub(super) seqs: Option<usize>,
}

impl Markers {
    /// The symbol counts these markers allow: more than 256 per full marker, at most 256 more.
    pub(super) fn count_range(&self) -> std::ops::RangeInclusive<u64> {
        let m = self.values.len() as u64;
        (256 * (m - 1) + 1)..=(256 * m)
    }
}

fn step_ok(lower: u32, upper: u32) -> bool {
    upper > lower && (256 * MIN_SYMBOL_BYTES..=256 * MAX_SYMBOL_BYTES).contains(&(upper - lower))
}

/// The markers arrays that could end right before `token_table` (plain layout), then those
/// that fit with a seqs array in between, smallest symbol count first. Lazy: the caller stops
/// at the first one that checks out.
pub(super) fn candidates<'a>(
    r: &'a Region<'a>,
    token_table: usize,
) -> impl Iterator<Item = Markers> + 'a {
    [Some(token_table), token_table.checked_sub(4)]
        .into_iter()
        .filter_map(move |end| walk_back(r, end?))
        .chain(with_seqs(r, token_table))
}

/// Reads u32s backwards from `end` while they decrease in plausible steps, down to a 0.
fn walk_back(r: &Region<'_>, end: usize) -> Option<Markers> {
    let mut values = Vec::new();
    let mut pos = end;
    loop {
        pos = pos.checked_sub(4)?;
        let v = r.u32(pos)?;
        if let Some(&above) = values.last() {
            if !step_ok(v, above) {
                return None;
            }
        }
        values.push(v);
        if v == 0 {
            break;
        }
        if values.len() > MAX_SYMBOLS / 256 {
            return None;
        }
    }
    if !r.is_aligned(pos, 8) {
        return None;
    }
    values.reverse();
    Some(Markers {
        pos,
        values,
        num_syms: None,
        seqs: None,
    })
}

/// Markers followed by `kallsyms_seqs_of_names` (3 bytes per symbol) and then the token
/// table, each 8-aligned: for every symbol count N the positions are fixed, so try them all.
fn with_seqs<'a>(r: &'a Region<'a>, token_table: usize) -> impl Iterator<Item = Markers> + 'a {
    // Each symbol needs 3 bytes of seqs and at least 2 of names.
    let max = (token_table / 5).min(MAX_SYMBOLS - 1);
    // How far the buffer's start is past an 8-aligned address.
    let skew = usize::try_from(r.base % 8).unwrap_or(0);
    let down = move |p: usize| p.checked_sub((skew + p) % 8);
    // This runs for millions of counts: keep the first test to plain arithmetic on the bytes.
    (1..=max).filter_map(move |n| {
        let seqs = token_table.checked_sub(3 * n).and_then(down)?;
        let m = n.div_ceil(256);
        let pos = seqs.checked_sub(4 * m).and_then(down)?;
        if r.bytes.get(pos..pos + 4) != Some(&[0; 4]) {
            return None;
        }
        let values = read_markers(r, pos, m)?;
        let count = u32::try_from(n).ok()?;
        seqs_ok(r, seqs, count).then_some(Markers {
            pos,
            values,
            num_syms: Some(count),
            seqs: Some(seqs),
        })
    })
}

fn read_markers(r: &Region<'_>, pos: usize, m: usize) -> Option<Vec<u32>> {
    let mut values = Vec::with_capacity(m);
    for i in 0..m {
        let v = r.u32(pos + 4 * i)?;
        if let Some(&below) = values.last() {
            if !step_ok(below, v) {
                return None;
            }
        }
        values.push(v);
    }
    Some(values)
}

/// Every seqs entry (a 24-bit big-endian symbol index) is below `n`.
fn seqs_ok(r: &Region<'_>, seqs: usize, n: u32) -> bool {
    let Some(bytes) = usize::try_from(n).ok().and_then(|n| r.get(seqs, 3 * n)) else {
        return false;
    };
    bytes
        .chunks_exact(3)
        .all(|c| (u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2])) < n)
}
