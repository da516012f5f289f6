//! Replays the committed regression corpora of the fuzz targets over introspect's parsers
//! (`fuzz/regressions/{kallsyms,elf_symtab,system_map,paging,ring}`) through the very checks
//! the targets make (`fuzz/checks/*.rs`, included here). Seeds say in their names what they
//! are: `seed-good-*` parse (or translate, or drain), `seed-bad-*` do not; fuzzer finds
//! (`crash-*`, `timeout-*`, ...) can go either way and must merely pass the checks.

use std::path::PathBuf;

mod kallsyms {
    include!("../../fuzz/checks/kallsyms.rs");
}
mod elf_symtab {
    include!("../../fuzz/checks/elf_symtab.rs");
}
mod system_map {
    include!("../../fuzz/checks/system_map.rs");
}
mod paging {
    include!("../../fuzz/checks/paging.rs");
}
mod ring {
    include!("../../fuzz/checks/ring.rs");
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target)
}

/// Every file of `target`'s corpus (at least `min` of them), name and bytes, sorted by name.
fn corpus(target: &str, min: usize) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&f).unwrap())
        })
        .collect()
}

/// Replays `target`'s corpus through its check, which says whether the input was good
/// (parsed, translated, drained something): seeds must be what their names say.
fn replay(target: &str, min: usize, check: impl Fn(&[u8]) -> bool) {
    for (name, bytes) in corpus(target, min) {
        let good = check(&bytes);
        if name.starts_with("seed-good-") {
            assert!(good, "{target}/{name} is not good");
        } else if name.starts_with("seed-bad-") {
            assert!(!good, "{target}/{name} is good");
        }
    }
}

#[test]
fn kallsyms_corpus_replays() {
    replay("kallsyms", 4, kallsyms::check);
}

#[test]
fn elf_symtab_corpus_replays() {
    replay("elf_symtab", 4, elf_symtab::check);
}

#[test]
fn system_map_corpus_replays() {
    replay("system_map", 4, system_map::check);
}

#[test]
fn paging_corpus_replays() {
    replay("paging", 4, paging::check);
}

#[test]
fn ring_corpus_replays() {
    replay("ring", 4, |b| ring::check(b) > 0);
}

/// Writes `seeds` into `target`'s corpus directory (fuzzer finds next to them are left alone).
fn write_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A `paging` input: flags, MAXPHYADDR, CR3's page (0), the addresses, then memory with
/// page tables mapping each `(gva, leaf level, leaf entry)` of `maps` (tables from page 0
/// up; leaf entries at levels 2 and 3 get PS) and a patterned page at 0x8000.
fn paging_input(flags: u8, gvas: [u64; 4], maps: &[(u64, u8, u64)]) -> Vec<u8> {
    let mut v = vec![flags, 46, 0x34, 0x12, 0, 0, 0, 0];
    for g in gvas {
        v.extend_from_slice(&g.to_le_bytes());
    }
    let mut mem = vec![0u8; 9 * 4096];
    let levels = if flags & 1 != 0 { 5 } else { 4 };
    let mut next_table = 0x1000u64;
    for &(gva, leaf, entry) in maps {
        let mut table = 0u64;
        for level in (leaf..=levels).rev() {
            let index = (gva >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
            let at = usize::try_from(table + index * 8).unwrap();
            let old = u64::from_le_bytes(mem[at..at + 8].try_into().unwrap());
            let value = if level == leaf {
                entry | if level > 1 { 1 << 7 } else { 0 }
            } else if old & 1 != 0 {
                old
            } else {
                next_table += 0x1000;
                (next_table - 0x1000) | 7
            };
            mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
            table = value & 0x000f_ffff_ffff_f000;
        }
    }
    assert!(next_table <= 0x8000, "too many tables");
    for (i, b) in mem[0x8000..].iter_mut().enumerate() {
        *b = u8::try_from(i % 251).unwrap();
    }
    v.extend_from_slice(&mem);
    v
}

/// A record written by the guest: `(slot, sequence, tag, tsc)`.
type Record = (usize, u64, u32, u64);

/// A `ring` input: vCPUs (and the small arena, whose rings hold 64 records), three drain
/// limits, then what the guest writes over ring 0 before each drain: `(head, records)`, each
/// record `(slot, sequence, tag, tsc)`.
fn ring_input(vcpus: u8, max: [u8; 3], rounds: &[(u64, Vec<Record>)]) -> Vec<u8> {
    let mut v = vec![vcpus - 1, max[0], max[1], max[2]];
    let size = 128 + 64 * 64;
    for (head, records) in rounds {
        let mut area = vec![0u8; size];
        area[..8].copy_from_slice(&head.to_le_bytes());
        for &(slot, seq, tag, tsc) in records {
            let r = 128 + 64 * slot;
            let seq = u32::try_from(seq & 0xffff_ffff).unwrap();
            area[r..r + 4].copy_from_slice(&seq.to_le_bytes());
            area[r + 4..r + 8].copy_from_slice(&tag.to_le_bytes());
            area[r + 8..r + 16].copy_from_slice(&tsc.to_le_bytes());
            area[r + 16..r + 24].copy_from_slice(&(0xdead_0000 + u64::from(seq)).to_le_bytes());
        }
        v.extend_from_slice(&area);
    }
    v
}

/// Regenerates the seeds of the `paging` and `ring` corpora:
/// `cargo test -p introspect --test fuzz_corpora write_regression_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/regressions/{paging,ring}/seed-*"]
fn write_regression_seeds() {
    const P_RW: u64 = 3;
    const XD: u64 = 1 << 63;
    const NXE_WP: u8 = 0b110;
    let text = 0xffff_ffff_8100_0000u64;
    let user = 0x40_1234u64;
    let la57_text = 0xff7f_ffff_8100_0000u64;
    write_seeds(
        "paging",
        &[
            (
                "seed-good-4k",
                paging_input(
                    NXE_WP,
                    [text, user, text + 0xff8, 1 << 47],
                    &[
                        (text, 1, 0x8000 | P_RW | XD),
                        (text + 0x1000, 1, 0x8000 | 1),
                        (user, 1, 0x8000 | P_RW | 4),
                    ],
                ),
            ),
            (
                "seed-good-2m",
                paging_input(
                    NXE_WP,
                    [text + 0x12_3456, text, 0, u64::MAX],
                    &[(text, 2, 0x20_0000 | P_RW), (0, 2, 1)],
                ),
            ),
            (
                "seed-good-1g",
                paging_input(
                    0b100,
                    [text, text + (1 << 30), 0xffff_8000_0000_0000, 0x1000],
                    &[(text, 3, P_RW), (0xffff_8000_0000_0000, 3, (1 << 30) | 1)],
                ),
            ),
            (
                "seed-good-la57",
                paging_input(
                    NXE_WP | 1,
                    [la57_text, text, user, 0],
                    &[(la57_text, 1, 0x8000 | P_RW), (user, 2, 1)],
                ),
            ),
            (
                "seed-bad-not-present",
                paging_input(NXE_WP, [text, user, 0, u64::MAX], &[]),
            ),
            (
                "seed-bad-reserved-bits",
                paging_input(
                    0b100,
                    [text, text + 0x20_0000, user, 0],
                    &[(text, 2, 0x20_2000 | P_RW), (user, 1, 0x8000 | P_RW | XD)],
                ),
            ),
            (
                "seed-bad-non-canonical",
                paging_input(NXE_WP, [1 << 47, 1 << 63, 0, 0], &[(0, 1, 0x8000 | 1)]),
            ),
            (
                "seed-good-frame-beyond-ram",
                paging_input(NXE_WP, [0x7000, 0, 0, 0], &[(0x7000, 2, (1 << 40) | 1)]),
            ),
        ],
    );
    // Records `from..to` (indices), committed, in their slots of a 64-record ring.
    let committed = |from: u64, to: u64| -> Vec<Record> {
        (from..to)
            .map(|k| (usize::try_from(k % 64).unwrap(), k + 1, 7, 1000 + k))
            .collect()
    };
    let mut torn = committed(0, 5);
    torn[2].1 = 99;
    // 60 records, then the guest wraps around: records 60..68 in slots 60..63 and 0..3.
    let wrap = [
        (60, committed(0, 60)),
        (68, committed(0, 68)),
        (68, committed(0, 68)),
    ];
    write_seeds(
        "ring",
        &[
            (
                "seed-good-one-record",
                ring_input(1, [8, 8, 8], &[(1, committed(0, 1))]),
            ),
            (
                "seed-good-limits",
                ring_input(2, [3, 0, 255], &[(10, committed(0, 10))]),
            ),
            (
                "seed-good-head-past-capacity",
                ring_input(1, [255, 255, 255], &[(u64::MAX, committed(0, 64))]),
            ),
            (
                "seed-good-torn-batch",
                ring_input(1, [255, 255, 255], &[(5, torn)]),
            ),
            ("seed-good-wrap", ring_input(1, [60, 255, 255], &wrap)),
            (
                "seed-bad-uncommitted",
                ring_input(4, [255, 255, 255], &[(3, vec![(0, 7, 1, 1)])]),
            ),
            (
                "seed-bad-empty",
                ring_input(3, [255, 255, 255], &[(0, vec![])]),
            ),
        ],
    );
}
