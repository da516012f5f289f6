//! A kallsyms encoder for tests: builds the tables the way scripts/kallsyms.c lays them out,
//! so the finder is tested on blobs whose every byte we control.

use std::collections::BTreeMap;

/// How to lay the tables out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// Put `kallsyms_seqs_of_names` between the markers and the token table (Debian 6.1).
    pub(super) seqs: bool,
    /// The 6.4+ order (num_syms first; offsets, relative base and seqs after the index).
    pub(super) new_order: bool,
    /// CONFIG_KALLSYMS_ABSOLUTE_PERCPU: `A` symbols are stored as absolute values.
    pub(super) absolute_percpu: bool,
}

pub(super) const LINUX_6_1: Layout = Layout {
    seqs: false,
    new_order: false,
    absolute_percpu: true,
};

/// Byte offsets of each table in the blob.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Offsets {
    pub(super) offsets: usize,
    pub(super) relative_base: usize,
    pub(super) num_syms: usize,
    pub(super) names: usize,
    pub(super) markers: usize,
    pub(super) seqs: usize,
    pub(super) token_table: usize,
    pub(super) token_index: usize,
    pub(super) end: usize,
}

/// A symbol to encode: type letter, name, address.
pub(super) type Sym = (char, String, u64);

/// Tokens: every character used stands for itself; unused byte values get the most frequent
/// substrings of 2 to 4 characters.
fn tokens(syms: &[Sym]) -> Vec<Vec<u8>> {
    let mut table = vec![Vec::new(); 256];
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (kind, name, _) in syms {
        let full = format!("{kind}{name}").into_bytes();
        for &b in &full {
            table[usize::from(b)] = vec![b];
        }
        for len in 2..=4 {
            for w in full.windows(len) {
                *counts.entry(w.to_vec()).or_default() += 1;
            }
        }
    }
    let mut by_count: Vec<_> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut frequent = by_count.into_iter().map(|(s, _)| s);
    for slot in table.iter_mut().filter(|t| t.is_empty()) {
        match frequent.next() {
            Some(s) => *slot = s,
            None => break,
        }
    }
    table
}

/// Greedy longest-token compression.
fn compress(full: &[u8], table: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < full.len() {
        let (byte, len) = table
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty() && full[pos..].starts_with(t))
            .map(|(i, t)| (i, t.len()))
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))
            .expect("every character is its own token");
        out.push(u8::try_from(byte).unwrap());
        pos += len;
    }
    out
}

fn pad(blob: &mut Vec<u8>, base: u64, align: u64) {
    while (base + blob.len() as u64) % align != 0 {
        blob.push(0);
    }
}

/// Encodes `syms` (sorted by address) after `prefix`, the blob starting at address `base`.
pub(super) fn encode(syms: &[Sym], base: u64, prefix: &[u8], layout: Layout) -> (Vec<u8>, Offsets) {
    let table = tokens(syms);
    let percpu = |s: &Sym| layout.absolute_percpu && s.0 == 'A';
    let relative_base = syms
        .iter()
        .filter(|s| !percpu(s))
        .map(|s| s.2)
        .min()
        .unwrap_or(0);
    let n = u32::try_from(syms.len()).unwrap();

    let mut offsets = Vec::new();
    for s in syms {
        let v: u32 = if percpu(s) {
            u32::try_from(s.2).unwrap()
        } else if layout.absolute_percpu {
            // relative_base - addr - 1, a negative i32, stored as its bits.
            u32::MAX - u32::try_from(s.2 - relative_base).unwrap()
        } else {
            u32::try_from(s.2 - relative_base).unwrap()
        };
        offsets.extend_from_slice(&v.to_le_bytes());
    }
    let mut names = Vec::new();
    let mut markers = Vec::new();
    for (i, (kind, name, _)) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.extend_from_slice(&u32::try_from(names.len()).unwrap().to_le_bytes());
        }
        let c = compress(format!("{kind}{name}").as_bytes(), &table);
        if c.len() <= 0x7f {
            names.push(u8::try_from(c.len()).unwrap());
        } else {
            names.push(u8::try_from(c.len() & 0x7f).unwrap() | 0x80);
            names.push(u8::try_from(c.len() >> 7).unwrap());
        }
        names.extend_from_slice(&c);
    }
    let mut order: Vec<usize> = (0..syms.len()).collect();
    order.sort_by(|&a, &b| syms[a].1.cmp(&syms[b].1));
    let mut seqs = Vec::new();
    for i in order {
        seqs.extend_from_slice(&u32::try_from(i).unwrap().to_be_bytes()[1..]);
    }
    let mut token_table = Vec::new();
    let mut token_index = Vec::new();
    for t in &table {
        token_index.extend_from_slice(&u16::try_from(token_table.len()).unwrap().to_le_bytes());
        token_table.extend_from_slice(t);
        token_table.push(0);
    }

    let mut blob = prefix.to_vec();
    let mut o = Offsets::default();
    let put = |blob: &mut Vec<u8>, at: &mut usize, bytes: &[u8]| {
        pad(blob, base, 8);
        *at = blob.len();
        blob.extend_from_slice(bytes);
    };
    let base_bytes = relative_base.to_le_bytes();
    let n_bytes = n.to_le_bytes();
    if !layout.new_order {
        put(&mut blob, &mut o.offsets, &offsets);
        put(&mut blob, &mut o.relative_base, &base_bytes);
    }
    put(&mut blob, &mut o.num_syms, &n_bytes);
    put(&mut blob, &mut o.names, &names);
    put(&mut blob, &mut o.markers, &markers);
    if layout.seqs && !layout.new_order {
        put(&mut blob, &mut o.seqs, &seqs);
    }
    put(&mut blob, &mut o.token_table, &token_table);
    put(&mut blob, &mut o.token_index, &token_index);
    if layout.new_order {
        put(&mut blob, &mut o.offsets, &offsets);
        put(&mut blob, &mut o.relative_base, &base_bytes);
        if layout.seqs {
            put(&mut blob, &mut o.seqs, &seqs);
        }
    }
    pad(&mut blob, base, 8);
    o.end = blob.len();
    (blob, o)
}
