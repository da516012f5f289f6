//! Debian's stock 6.1 kernel: symbols from its embedded kallsyms tables (its vmlinux is
//! stripped and its System.map is a stub). The bzImage fetched by
//! `scripts/fetch-debian-kernel.sh` is decompressed with hvprobe's own loader.

use std::time::Instant;

use introspect::elf::ElfFile;
use introspect::symbols::kallsyms::find_kallsyms_in_elf;
use introspect::symbols::{SymbolTable, SystemMapError, X86_64_LINK_TEXT};

#[test]
fn debian_kernel_symbols_from_embedded_kallsyms() {
    let Some(bz) = hvprobe_tests::debian_kernel() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the Debian kernel first (scripts/fetch-debian-kernel.sh)"
        );
        hvprobe_tests::skip(
            "Debian kernel kallsyms",
            "Debian kernel not fetched; run scripts/fetch-debian-kernel.sh",
        );
        return;
    };
    let bzimage = std::fs::read(&bz).unwrap();
    let image = vmm::kernel_symbols::kernel_elf(&bzimage)
        .expect("decompress the bzImage payload")
        .into_owned();
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
    let stub = std::fs::read_dir(bz.parent().unwrap())
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
