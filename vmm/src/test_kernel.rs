//! The test kernel embedded in hvprobe: a small no_std x86_64 kernel (`tests/test-kernel`)
//! that runs one scenario, named by `hvtest=NAME` on its command line, against hvprobe's test
//! device, UART and i8042.
//!
//! `vmm/build.rs` builds it for `x86_64-unknown-none` (which needs
//! `rustup target add x86_64-unknown-none`) and this module embeds the result. It is an ELF
//! executable with its symbol table (`tk_probe_target`, `tk_loop_body`, `tk_leaf`, `tk_main`,
//! `_start`), loaded at its physical addresses from 1 MiB (`p_paddr == p_vaddr`), entered in
//! long mode with `rsi` pointing to boot_params. See `tests/test-kernel/README.md` for the
//! boot contract and what each scenario does.

/// The test kernel's ELF image.
pub static TEST_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-kernel.elf"));

/// The scenarios the test kernel knows, for `hvtest=NAME`:
///
/// - `hello` (the default): prints the e820 map and command line, calls the `tk_*` probe
///   targets and checks their results, checks the test device over PIO and MMIO; POINTs 1, 2,
///   3; EXIT 0, or 1 if a check failed.
/// - `exit`: EXIT with `code=N` from the command line (default 7; 2 if N is not a number).
/// - `points`: POINT 1..=5, EXIT 0.
/// - `mmio`: test device MMIO accesses of widths 1, 2, 4 and 8, each value read printed; EXIT 0.
/// - `pio`: the same with port I/O of widths 1, 2 and 4; EXIT 0.
/// - `mark`: one MARK line, `hello from the test kernel`; EXIT 0.
/// - `triple-fault`: loads an empty IDT and executes `ud2`: shutdown.
/// - `reset`: writes 0xFE to i8042 port 0x64, then spins.
/// - `spin`: loops forever (`pause`).
/// - `hlt`: `cli; hlt` forever.
/// - `panic`: a Rust panic: prints `test kernel panic: ...`, EXIT 101.
///
/// Every scenario starts with the line `hvprobe test kernel <version>: scenario NAME`; an
/// unknown NAME prints `unknown scenario NAME` and EXITs 2.
pub const SCENARIOS: &[&str] = &[
    "hello",
    "exit",
    "points",
    "mmio",
    "pio",
    "mark",
    "triple-fault",
    "reset",
    "spin",
    "hlt",
    "panic",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn usize_at(bytes: &[u8], offset: usize) -> usize {
        usize::try_from(u64_at(bytes, offset)).unwrap()
    }

    /// The ELF64 section headers of `elf`: (sh_type, sh_link, sh_offset, sh_size).
    fn sections(elf: &[u8]) -> Vec<(u32, usize, usize, usize)> {
        let shoff = usize_at(elf, 0x28);
        let shentsize = usize::from(u16_at(elf, 0x3a));
        let shnum = usize::from(u16_at(elf, 0x3c));
        (0..shnum)
            .map(|i| {
                let sh = shoff + i * shentsize;
                let link = usize::try_from(u32_at(elf, sh + 0x28)).unwrap();
                (
                    u32_at(elf, sh + 4),
                    link,
                    usize_at(elf, sh + 0x18),
                    usize_at(elf, sh + 0x20),
                )
            })
            .collect()
    }

    /// The value of the symbol `name` in `elf`'s symbol table (SHT_SYMTAB).
    fn symbol(elf: &[u8], name: &str) -> Option<u64> {
        const SHT_SYMTAB: u32 = 2;
        const SYM_SIZE: usize = 24;
        let sections = sections(elf);
        let &(_, strtab, offset, size) = sections.iter().find(|s| s.0 == SHT_SYMTAB)?;
        let (_, _, str_offset, str_size) = sections[strtab];
        let strings = &elf[str_offset..str_offset + str_size];
        (offset..offset + size).step_by(SYM_SIZE).find_map(|sym| {
            let name_offset = usize::try_from(u32_at(elf, sym)).unwrap();
            let rest = &strings[name_offset..];
            let sym_name = &rest[..rest.iter().position(|&b| b == 0)?];
            (sym_name == name.as_bytes()).then(|| u64_at(elf, sym + 8))
        })
    }

    #[test]
    fn is_a_static_x86_64_elf_loaded_from_1_mib() {
        let elf = TEST_KERNEL;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little-endian");
        assert_eq!(u16_at(elf, 0x10), 2, "ET_EXEC (not PIE)");
        assert_eq!(u16_at(elf, 0x12), 62, "EM_X86_64");

        let entry = u64_at(elf, 0x18);
        let phoff = usize_at(elf, 0x20);
        let phentsize = usize::from(u16_at(elf, 0x36));
        let phnum = usize::from(u16_at(elf, 0x38));
        let mut loads = 0;
        let mut entry_loaded = false;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            const PT_LOAD: u32 = 1;
            const PT_INTERP: u32 = 3;
            const PT_DYNAMIC: u32 = 2;
            let p_type = u32_at(elf, ph);
            assert!(
                p_type != PT_INTERP && p_type != PT_DYNAMIC,
                "statically linked"
            );
            if p_type != PT_LOAD {
                continue;
            }
            loads += 1;
            let (vaddr, paddr, memsz) = (
                u64_at(elf, ph + 0x10),
                u64_at(elf, ph + 0x18),
                u64_at(elf, ph + 0x28),
            );
            assert_eq!(paddr, vaddr, "identity-mapped segment");
            assert!(
                paddr >= crate::layout::HIMEM_START,
                "segment below 1 MiB: {paddr:#x}"
            );
            entry_loaded |= (paddr..paddr + memsz).contains(&entry);
        }
        assert!(loads > 0, "no PT_LOAD segment");
        assert!(
            entry_loaded,
            "entry point {entry:#x} outside every PT_LOAD segment"
        );
        assert_eq!(symbol(elf, "_start"), Some(entry));
    }

    #[test]
    fn has_the_probe_target_symbols() {
        for name in ["tk_probe_target", "tk_loop_body", "tk_leaf", "tk_main"] {
            let address = symbol(TEST_KERNEL, name);
            assert!(
                address.is_some_and(|a| a >= crate::layout::HIMEM_START),
                "{name}: {address:x?}"
            );
        }
        assert_eq!(symbol(TEST_KERNEL, "no_such_symbol"), None);
    }

    #[test]
    fn knows_every_listed_scenario() {
        // The kernel's scenario table holds the names as string literals.
        for name in SCENARIOS {
            assert!(
                TEST_KERNEL
                    .windows(name.len())
                    .any(|w| w == name.as_bytes()),
                "{name} not in the test kernel"
            );
        }
    }
}
