//! Replays the committed regression corpora of the fuzz targets over vmm's parsers of the
//! config file, the instrumentation specs and the control API's requests, and over the
//! emulated PCI devices (`fuzz/regressions/{config_file,specs,api_request,devices}`) through the very checks the targets make
//! (`fuzz/checks/*.rs`, included here). Seeds say in their names what they are: `seed-good-*`
//! parse, `seed-bad-*` do not; fuzzer finds can go either way and must merely pass the checks.
//! (The kernel loader's corpus is replayed by `vmm::loader`'s unit tests.)

use std::path::PathBuf;

mod config_file {
    include!("../../fuzz/checks/config_file.rs");
}
mod specs {
    include!("../../fuzz/checks/specs.rs");
}
mod api_request {
    include!("../../fuzz/checks/api_request.rs");
}
mod devices {
    include!("../../fuzz/checks/devices.rs");
}

/// Replays `target`'s corpus (at least `min` files) through its check, which says whether
/// the input parsed: seeds must be what their names say.
fn replay(target: &str, min: usize, check: impl Fn(&[u8]) -> bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
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
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let good = check(&std::fs::read(&f).unwrap());
        if name.starts_with("seed-good-") {
            assert!(good, "{target}/{name} does not parse");
        } else if name.starts_with("seed-bad-") {
            assert!(!good, "{target}/{name} parses");
        }
    }
}

#[test]
fn config_file_corpus_replays() {
    replay("config_file", 4, config_file::check);
}

#[test]
fn specs_corpus_replays() {
    replay("specs", 8, specs::check);
}

#[test]
fn api_request_corpus_replays() {
    replay("api_request", 4, api_request::check);
}

#[test]
fn devices_corpus_replays() {
    replay("devices", 4, devices::check);
}

/// `devices` inputs: guest accesses, each `(write, size, mmio, address, value)`.
fn accesses(list: &[(bool, usize, bool, u64, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(write, size, mmio, addr, value) in list {
        let size_bits = u8::try_from(size.trailing_zeros()).unwrap();
        v.push(u8::from(write) | size_bits << 1 | u8::from(mmio) << 3);
        if mmio {
            v.extend_from_slice(&u32::try_from(addr).unwrap().to_le_bytes());
        } else {
            v.push(u8::try_from(addr - 0xcf8).unwrap());
        }
        if write {
            v.extend_from_slice(&value.to_le_bytes()[..size]);
        }
    }
    v
}

/// Regenerates the seeds of the `devices` corpus:
/// `cargo test -p vmm --test fuzz_corpora write_regression_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/regressions/devices/seed-*"]
fn write_regression_seeds() {
    const BAR: u64 = 0xfe00_0000;
    let select = |reg: u64| (true, 4, false, 0xcf8, 0x8000_0800 | reg);
    let data = |size: usize, value: u64| (true, size, false, 0xcfc, value);
    let mmio_w = |size: usize, off: u64, value: u64| (true, size, true, BAR + off, value);
    let mmio_r = |off: u64| (false, 4, true, BAR + off, 0);
    let map = vec![
        select(0x10),
        data(4, BAR),
        select(0x04),
        data(2, 2),
        mmio_r(0),
    ];
    let mut use_it = map.clone();
    use_it.extend([
        mmio_w(4, 4, 0x1234_5678),
        mmio_r(4),
        mmio_w(4, 8, 5),
        mmio_r(0x20),
        mmio_r(8),
        mmio_w(4, 0x20, 0x80),
        mmio_w(4, 0x60, 1),
        mmio_r(0x24),
        mmio_w(4, 0x64, 1),
    ]);
    let mut dma = map.clone();
    dma.extend([
        mmio_w(8, 0x80, 0x1000),
        mmio_w(8, 0x88, 0x4_0000),
        mmio_w(8, 0x90, 0x100),
        mmio_w(8, 0x98, 1),
        mmio_r(0x98),
        mmio_w(8, 0x80, 0x4_0000),
        mmio_w(8, 0x88, 0x2000),
        mmio_w(8, 0x98, 3),
    ]);
    let mut disabled = map.clone();
    disabled.extend([select(0x04), data(2, 0), mmio_r(0)]);
    let mut moved = map.clone();
    moved.extend([
        select(0x10),
        data(4, 0xffff_ffff),
        (false, 4, false, 0xcfc, 0),
    ]);
    let mut empty = Vec::new();
    for dev in [0u64, 2, 31] {
        empty.push((true, 4, false, 0xcf8, 0x8000_0000 | dev << 11));
        empty.push((false, 4, false, 0xcfc, 0));
        empty.push((false, 2, false, 0xcfe, 0));
    }
    empty.push((false, 8, true, BAR, 0));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/devices");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, list) in [
        ("seed-good-map-bar0", map),
        ("seed-good-registers", use_it),
        ("seed-good-dma", dma),
        ("seed-bad-memory-decoding-off", disabled),
        ("seed-good-bar-sizing-while-decoding", moved),
        ("seed-bad-empty-slots", empty),
    ] {
        std::fs::write(dir.join(name), accesses(&list)).unwrap();
    }
}
