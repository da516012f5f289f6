//! The kallsyms finder on blobs made by the test encoder.

use super::encode::{LINUX_6_1, Layout, Offsets, Sym, encode};
use super::*;

const BASE: u64 = 0xffff_ffff_8200_0000;
const TEXT: u64 = 0xffff_ffff_8100_0000;

/// Deterministic pseudo-random bytes (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// `n` symbols like a kernel's: per-CPU absolutes at 0, then `_text`, then functions and data,
/// with names using every digit, duplicates, and one "big" name longer than 127 tokens.
fn kernel_syms(n: usize) -> Vec<Sym> {
    let mut syms: Vec<Sym> = vec![
        ('A', "fixed_percpu_data".into(), 0),
        ('A', "cpu_number".into(), 0x20),
        ('T', "_text".into(), TEXT),
        ('T', "startup_64".into(), TEXT),
    ];
    let mut rng = Rng(0x1234_5678);
    let mut addr = TEXT + 0x40;
    let words = [
        "sched", "mem", "block", "irq", "pci", "virtio", "init", "do", "get", "page",
    ];
    for i in 0..n.saturating_sub(syms.len() + 1) {
        let w1 = words[rng.below(words.len())];
        let w2 = words[rng.below(words.len())];
        let kind = ['T', 't', 'D', 'd', 'R', 'b'][i % 6];
        syms.push((kind, format!("{w1}_{w2}_{i}"), addr));
        addr += 1 + rng.next() % 0x200;
    }
    // A long Rust-style name: more than 127 tokens even compressed.
    let big: String = (0..400)
        .map(|i| {
            char::from(
                b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    [(i * 7 + i / 62) % 62],
            )
        })
        .collect();
    syms.push(('t', format!("_RNv{big}"), addr));
    syms.truncate(n.max(5));
    syms
}

fn check(syms: &[Sym], found: &Kallsyms) {
    let t = &found.symbols;
    assert_eq!(t.len(), syms.len());
    for (kind, name, addr) in syms {
        assert!(
            t.get_all(name).any(|s| s.addr == *addr && s.kind == *kind),
            "{name} at {addr:#x} ({kind}) missing"
        );
    }
}

fn blob(n: usize, layout: Layout) -> (Vec<Sym>, Vec<u8>, Offsets) {
    let syms = kernel_syms(n);
    let prefix = Rng(99).bytes(13);
    let (b, o) = encode(&syms, BASE, &prefix, layout);
    (syms, b, o)
}

#[test]
fn finds_linux_6_1_tables() {
    let (syms, b, o) = blob(1000, LINUX_6_1);
    let k = find_kallsyms(&b, BASE).unwrap();
    check(&syms, &k);
    let va = |p: usize| BASE + p as u64;
    assert_eq!(
        k.layout,
        KallsymsLayout {
            offsets: va(o.offsets),
            relative_base: va(o.relative_base),
            relative_base_value: TEXT,
            num_syms: va(o.num_syms),
            names: va(o.names),
            markers: va(o.markers),
            seqs_of_names: None,
            token_table: va(o.token_table),
            token_index: va(o.token_index),
            absolute_percpu: true,
        }
    );
    assert_eq!(k.symbols.addr_of("_text"), Some(TEXT));
    assert_eq!(
        k.symbols.lookup(TEXT + 1).unwrap().symbol.name,
        "startup_64"
    );
    assert_eq!(k.symbols.get("cpu_number").unwrap().addr, 0x20);
    assert!(k.symbols.iter().any(|s| s.name.len() > 400));
}

#[test]
fn finds_tables_with_seqs_of_names() {
    for n in [5, 255, 256, 257, 700] {
        let (syms, b, o) = blob(
            n,
            Layout {
                seqs: true,
                ..LINUX_6_1
            },
        );
        let k = find_kallsyms(&b, BASE).unwrap_or_else(|e| panic!("{n}: {e}"));
        check(&syms, &k);
        assert_eq!(k.layout.seqs_of_names, Some(BASE + o.seqs as u64));
    }
}

#[test]
fn finds_linux_6_4_order_and_relative_offsets() {
    for layout in [
        Layout {
            seqs: true,
            new_order: true,
            absolute_percpu: true,
        },
        Layout {
            seqs: false,
            new_order: false,
            absolute_percpu: false,
        },
        Layout {
            seqs: true,
            new_order: true,
            absolute_percpu: false,
        },
    ] {
        let syms: Vec<Sym> = kernel_syms(600)
            .into_iter()
            .filter(|s| layout.absolute_percpu || s.0 != 'A')
            .collect();
        let (b, o) = encode(&syms, BASE, &[], layout);
        let k = find_kallsyms(&b, BASE).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        check(&syms, &k);
        assert_eq!(k.layout.absolute_percpu, layout.absolute_percpu);
        assert_eq!(k.layout.offsets, BASE + o.offsets as u64);
    }
}

#[test]
fn few_symbols_and_marker_boundaries() {
    for n in [5, 100, 255, 256, 257, 512, 513] {
        let (syms, b, _) = blob(n, LINUX_6_1);
        let k = find_kallsyms(&b, BASE).unwrap_or_else(|e| panic!("{n}: {e}"));
        check(&syms, &k);
    }
}

#[test]
fn alignment_follows_the_virtual_address() {
    // The same tables in a buffer that starts 4 bytes into an 8-aligned address.
    let syms = kernel_syms(300);
    let base = BASE + 4;
    let (b, _) = encode(&syms, base, &[0xaa; 3], LINUX_6_1);
    check(&syms, &find_kallsyms(&b, base).unwrap());
    // Read as if from the wrong address, the alignment no longer fits.
    assert!(find_kallsyms(&b, BASE).is_err());
}

#[test]
fn found_in_an_elf_segment() {
    let (syms, b, _) = blob(400, LINUX_6_1);
    let image = crate::elf::testing::build(BASE, &b, &[]);
    let k = find_kallsyms_in_elf(&image).unwrap();
    check(&syms, &k);
    assert_eq!(
        SymbolTable::from_kallsyms_image(&image).unwrap().len(),
        syms.len()
    );
    assert_eq!(
        find_kallsyms_in_elf(&b).unwrap_err(),
        KallsymsError::Elf(ElfError::NotElf)
    );
    assert_eq!(
        SymbolTable::from_kallsyms_bytes(&b, BASE).unwrap().len(),
        syms.len()
    );
}

#[test]
fn random_bytes_have_no_token_table() {
    let mut rng = Rng(7);
    for len in [0, 1, 19, 20, 4096, 100_000] {
        assert_eq!(
            find_kallsyms(&rng.bytes(len), BASE).unwrap_err(),
            KallsymsError::TokenTableNotFound
        );
    }
    // A lone digit run with nothing around it.
    let digits = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
    assert!(matches!(
        find_kallsyms(digits, BASE).unwrap_err(),
        KallsymsError::TokenIndexNotFound { .. }
    ));
}

#[test]
fn truncated_tables_give_errors() {
    let (syms, b, o) = blob(600, LINUX_6_1);
    // Cut anywhere before the end of the token index: never a panic, always an error.
    for cut in (0..o.token_index + 512).step_by(61) {
        assert!(find_kallsyms(&b[..cut], BASE).is_err(), "cut at {cut}");
    }
    // Cut from the front up to the first table: still found.
    let from = o.offsets;
    check(
        &syms,
        &find_kallsyms(&b[from..], BASE + from as u64).unwrap(),
    );
    // Cut into the offsets: the names are found, the addresses are not.
    let from = o.offsets + 8;
    assert!(matches!(
        find_kallsyms(&b[from..], BASE + from as u64).unwrap_err(),
        KallsymsError::OffsetsNotFound { num_syms: 600, .. }
    ));
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn inconsistent_tables_give_typed_errors() {
    let (_, good, o) = blob(600, LINUX_6_1);

    // num_syms disagrees with the markers' count.
    let mut b = good.clone();
    put_u32(&mut b, o.num_syms, 599);
    assert!(matches!(
        find_kallsyms(&b, BASE).unwrap_err(),
        KallsymsError::NamesNotFound { .. }
    ));

    // A marker that points into the middle of a name.
    let mut b = good.clone();
    let m1 = u32::from_le_bytes(b[o.markers + 4..o.markers + 8].try_into().unwrap());
    put_u32(&mut b, o.markers + 4, m1 + 1);
    let e = find_kallsyms(&b, BASE).unwrap_err();
    assert!(
        matches!(
            e,
            KallsymsError::NamesNotFound { .. } | KallsymsError::MarkersNotFound { .. }
        ),
        "{e:?}"
    );

    // Markers that do not increase.
    let mut b = good.clone();
    put_u32(&mut b, o.markers + 4, 0);
    assert!(matches!(
        find_kallsyms(&b, BASE).unwrap_err(),
        KallsymsError::MarkersNotFound { .. }
    ));

    // A token index that disagrees with the token table.
    let mut b = good.clone();
    b[o.token_index + 2 * 0x41] ^= 1;
    assert!(matches!(
        find_kallsyms(&b, BASE).unwrap_err(),
        KallsymsError::TokenIndexNotFound { .. }
    ));

    // Offsets out of order.
    let mut b = good;
    put_u32(&mut b, o.offsets + 4 * 10, 0x7fff_0000);
    assert!(matches!(
        find_kallsyms(&b, BASE).unwrap_err(),
        KallsymsError::OffsetsNotFound { num_syms: 600, .. }
    ));

    // A name that is only a type letter.
    let mut syms = kernel_syms(300);
    syms[10].1 = String::new();
    let (b, _) = encode(&syms, BASE, &[], LINUX_6_1);
    let e = find_kallsyms(&b, BASE).unwrap_err();
    assert!(
        matches!(e, KallsymsError::NamesInconsistent { index: 10, .. }),
        "{e:?}"
    );
}

#[test]
fn random_corruption_never_panics() {
    let (_, good, o) = blob(
        300,
        Layout {
            seqs: true,
            ..LINUX_6_1
        },
    );
    let mut rng = Rng(42);
    let mut found = 0;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(4) {
            let at = o.offsets + rng.below(o.end - o.offsets);
            b[at] = rng.byte();
        }
        if find_kallsyms(&b, BASE).is_ok() {
            found += 1;
        }
    }
    // Some flips land in padding or keep the tables consistent; most do not.
    assert!(found < 300);
}

/// Regenerates the seeds of the `kallsyms` fuzz target's regression corpus (fuzzer finds next
/// to them are left alone). The target reads a buffer that is not an ELF file at `BASE`:
/// `cargo test -p introspect --lib write_regression_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/regressions/kallsyms/seed-*"]
fn write_regression_seeds() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/kallsyms");
    std::fs::create_dir_all(&dir).unwrap();
    let (_, small, _) = blob(5, LINUX_6_1);
    let (_, seqs, o) = blob(
        260,
        Layout {
            seqs: true,
            ..LINUX_6_1
        },
    );
    let new_order = Layout {
        seqs: true,
        new_order: true,
        absolute_percpu: false,
    };
    let syms: Vec<Sym> = kernel_syms(40).into_iter().filter(|s| s.0 != 'A').collect();
    let (new, _) = encode(&syms, BASE, &[], new_order);
    let image = crate::elf::testing::build(BASE, &small, &[]);
    let mut bad_marker = seqs.clone();
    bad_marker[o.markers + 4] ^= 0x40;
    let mut bad_names = seqs.clone();
    bad_names[o.names] ^= 0x03;
    let tokens_only = seqs[o.token_table..].to_vec();
    let seeds: [(&str, Vec<u8>); 7] = [
        ("seed-good-linux-6.1-few", small),
        ("seed-good-seqs-of-names-markers", seqs),
        ("seed-good-linux-6.4-relative", new),
        ("seed-good-elf-image", image),
        ("seed-bad-marker", bad_marker),
        ("seed-bad-names", bad_names),
        ("seed-bad-tokens-only", tokens_only),
    ];
    for (name, bytes) in seeds {
        assert_eq!(
            find_kallsyms(&bytes, BASE).is_ok() || find_kallsyms_in_elf(&bytes).is_ok(),
            name.starts_with("seed-good-"),
            "{name}"
        );
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
