//! Debian's stock 6.1 kernel: symbols from its embedded kallsyms tables (its vmlinux is
//! stripped and its System.map is a stub).
//!
//! The decompressed vmlinux comes from `HVPROBE_DEBIAN_VMLINUX`, else from decompressing the
//! fetched bzImage (`scripts/fetch-debian-kernel.sh`); without either the test prints a loud
//! SKIPPED line and returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use introspect::elf::ElfFile;
use introspect::symbols::kallsyms::find_kallsyms_in_elf;
use introspect::symbols::{SymbolTable, SystemMapError, X86_64_LINK_TEXT};

fn boot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/debian-kernel/root/boot")
}

/// The first `vmlinuz-*` in the fetched kernel's /boot.
fn bzimage_path() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(boot_dir())
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The xz payload of a bzImage, located through its setup header.
fn decompress_bzimage(image: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let u32_at = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
    assert_eq!(&image[0x202..0x206], b"HdrS", "not a bzImage");
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    // payload_offset / payload_length live in the setup header (file offsets 0x248 / 0x24c);
    // the offset counts from the start of the protected-mode code.
    let offset = protected_mode + usize::try_from(u32_at(0x248)).unwrap();
    let len = usize::try_from(u32_at(0x24c)).unwrap();
    let payload = &image[offset..offset + len];
    assert_eq!(&payload[..6], b"\xfd7zXZ\x00", "the payload is not xz");
    // One xz stream, then the kernel's 4-byte little-endian decompressed size.
    let (stream, size) = payload.split_at(len - 4);
    let mut out = Vec::new();
    xz2::read::XzDecoder::new(stream)
        .read_to_end(&mut out)
        .expect("decompress the bzImage payload");
    assert_eq!(
        out.len() as u64,
        u64::from(u32::from_le_bytes(size.try_into().unwrap()))
    );
    out
}

fn vmlinux() -> Option<Vec<u8>> {
    if let Ok(path) = std::env::var("HVPROBE_DEBIAN_VMLINUX") {
        return Some(std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}")));
    }
    let bz = bzimage_path()?;
    let image = std::fs::read(&bz).unwrap_or_else(|e| panic!("read {}: {e}", bz.display()));
    let t = Instant::now();
    let out = decompress_bzimage(&image);
    eprintln!("decompressed {} in {:?}", bz.display(), t.elapsed());
    Some(out)
}

#[test]
fn debian_kernel_symbols_from_embedded_kallsyms() {
    let Some(image) = vmlinux() else {
        println!(
            "SKIPPED (not tested): Debian kernel not fetched; run scripts/fetch-debian-kernel.sh"
        );
        return;
    };
    // Stripped: the ELF symbol table is not there.
    assert!(SymbolTable::from_elf(&image).is_err());

    let t = Instant::now();
    let k = find_kallsyms_in_elf(&image).expect("find kallsyms in Debian's vmlinux");
    let took = t.elapsed();
    let syms = &k.symbols;
    eprintln!(
        "kallsyms: {} symbols in {took:?} ({} build); layout {:#x?}",
        syms.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        k.layout
    );
    assert!(syms.len() >= 90_000, "only {} symbols", syms.len());
    assert_eq!(syms.addr_of("_text"), Some(X86_64_LINK_TEXT));
    assert_eq!(syms.kaslr_slide(X86_64_LINK_TEXT), Ok(0));
    for name in ["start_kernel", "linux_banner", "memblock_add_range"] {
        let addr = syms
            .addr_of(name)
            .unwrap_or_else(|| panic!("{name} not found"));
        let back = syms.lookup(addr).unwrap();
        assert_eq!(back.offset, 0);
        eprintln!("{name} = {addr:#x} ({})", back.symbol.kind);
    }
    assert!(syms.get("start_kernel").unwrap().is_text());
    assert_eq!(
        syms.resolve("start_kernel+0x10"),
        Ok(syms.addr_of("start_kernel").unwrap() + 0x10)
    );

    // The same search over just the bytes around the tables, as read from guest memory.
    let elf = ElfFile::parse(&image).unwrap();
    let from = k.layout.offsets - 0x1234;
    let to = k.layout.token_index + 0x1000;
    let window = elf
        .read_vaddr(from, usize::try_from(to - from).unwrap())
        .unwrap();
    let t = Instant::now();
    let again = introspect::symbols::kallsyms::find_kallsyms(window, from).unwrap();
    eprintln!(
        "kallsyms from a {} KiB window: {:?}",
        window.len() >> 10,
        t.elapsed()
    );
    assert_eq!(again.layout, k.layout);
    assert_eq!(again.symbols.len(), syms.len());

    let banner = elf
        .read_vaddr(syms.addr_of("linux_banner").unwrap(), 17)
        .expect("linux_banner is in the image");
    assert_eq!(
        banner,
        b"Linux version 6.1",
        "{}",
        String::from_utf8_lossy(banner)
    );

    // Debian's /boot/System.map is the stub that says to look elsewhere.
    let stub = std::fs::read_dir(boot_dir())
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("System.map-"))
        });
    if let Some(stub) = stub {
        let text = std::fs::read_to_string(stub).unwrap();
        assert!(matches!(
            SymbolTable::from_system_map(&text),
            Err(SystemMapError::DebianStub { .. })
        ));
    }
}
