//! Finding `kallsyms_num_syms` and `kallsyms_names`, and expanding the names.
//!
//! `kallsyms_names` holds, per symbol, a length (one byte, or two as a ULEB128 when the
//! top bit is set: "big" symbols, Linux 6.1+) and that many token numbers. The expanded
//! string's first character is the symbol's type letter. `kallsyms_num_syms` (a u32) sits
//! 8 bytes before the names, which end right before the (8-aligned) markers.

use super::KallsymsError;
use super::markers::Markers;
use super::region::Region;

/// Where the names are and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Names {
    /// Position of `kallsyms_num_syms`.
    pub(super) num_syms_pos: usize,
    /// Position of `kallsyms_names`.
    pub(super) start: usize,
    /// The symbol count.
    pub(super) count: u32,
}

/// One entry: where its tokens are, how many, and where the next entry starts.
fn entry(r: &Region<'_>, pos: usize) -> Option<(usize, usize, usize)> {
    let first = r.u8(pos)?;
    let (len, data) = if first & 0x80 != 0 {
        let second = r.u8(pos + 1)?;
        if second & 0x80 != 0 {
            return None;
        }
        (
            usize::from(first & 0x7f) | usize::from(second) << 7,
            pos + 2,
        )
    } else {
        (usize::from(first), pos + 1)
    };
    if len == 0 {
        return None;
    }
    Some((data, len, data.checked_add(len)?))
}

/// Walks `count` entries from `pos`; the position after the last.
fn skip(r: &Region<'_>, mut pos: usize, count: u32) -> Option<usize> {
    for _ in 0..count {
        pos = entry(r, pos)?.2;
    }
    Some(pos)
}

/// Finds the names that end at `markers` and agree with every marker.
pub(super) fn find(r: &Region<'_>, markers: &Markers) -> Option<Names> {
    let m = u32::try_from(markers.values.len()).ok()?;
    let last_marker = usize::try_from(*markers.values.last()?).ok()?;
    let range = markers.count_range();
    // The names end in the 8 bytes before the markers.
    let end_ok = |end: usize| end <= markers.pos && r.align_up(end, 8) == Some(markers.pos);
    // The last marker's symbols take 2 to 0x4001 bytes each, at most 256 of them.
    let highest = markers.pos.checked_sub(last_marker + 2)?;
    let lowest = highest.saturating_sub(256 * 0x4001 + 8).max(8);
    let mut start = r.align_down(highest, 8)?;
    while start >= lowest {
        if let Some(names) = try_start(r, markers, start, m, &range, &end_ok) {
            return Some(names);
        }
        start = match start.checked_sub(8) {
            Some(s) => s,
            None => break,
        };
    }
    None
}

fn try_start(
    r: &Region<'_>,
    markers: &Markers,
    start: usize,
    m: u32,
    range: &std::ops::RangeInclusive<u64>,
    end_ok: &dyn Fn(usize) -> bool,
) -> Option<Names> {
    let num_syms_pos = start.checked_sub(8)?;
    let count = r.u32(num_syms_pos)?;
    if !range.contains(&u64::from(count)) || r.u32(num_syms_pos + 4)? != 0 {
        return None;
    }
    if markers.num_syms.is_some_and(|n| n != count) {
        return None;
    }
    // Quick check: the last marker's run of names ends at the markers.
    let last_start = start.checked_add(usize::try_from(*markers.values.last()?).ok()?)?;
    if !end_ok(skip(r, last_start, count - 256 * (m - 1))?) {
        return None;
    }
    // Full check: every marker is where its symbol starts.
    let mut pos = start;
    for (i, &marker) in markers.values.iter().enumerate() {
        if pos - start != usize::try_from(marker).ok()? {
            return None;
        }
        let i = u32::try_from(i).ok()?;
        let run = (count - 256 * i).min(256);
        pos = skip(r, pos, run)?;
    }
    end_ok(pos).then_some(Names {
        num_syms_pos,
        start,
        count,
    })
}

/// Expands every name: (type letter, name).
pub(super) fn decode(
    r: &Region<'_>,
    names: &Names,
    tokens: &[&[u8]],
) -> Result<Vec<(char, String)>, KallsymsError> {
    let bad = |index: u32, reason: &'static str| KallsymsError::NamesInconsistent {
        names: r.va(names.start),
        index,
        reason,
    };
    let mut out = Vec::with_capacity(usize::try_from(names.count).unwrap_or(0));
    let mut pos = names.start;
    let mut buf = Vec::new();
    for index in 0..names.count {
        let (data, len, next) = entry(r, pos).ok_or(bad(index, "the entry's length is bad"))?;
        let compressed = r
            .get(data, len)
            .ok_or(bad(index, "the entry runs past the end"))?;
        buf.clear();
        for &t in compressed {
            buf.extend_from_slice(tokens.get(usize::from(t)).copied().unwrap_or_default());
        }
        let (&kind, name) = buf
            .split_first()
            .ok_or(bad(index, "the name expands to nothing"))?;
        if !kind.is_ascii_graphic() || name.is_empty() {
            return Err(bad(index, "the name has no type letter or is empty"));
        }
        // Tokens are checked to be printable ASCII, so this is valid UTF-8.
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((char::from(kind), name));
        pos = next;
    }
    Ok(out)
}
