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
///   targets and checks their results, checks the test device over PIO and MMIO, drives the
///   `edu` device as `edu` does; POINTs 1, 2, 3; EXIT 0, or 1 if a check failed.
/// - `exit`: EXIT with `code=N` from the command line (default 7; 2 if N is not a number).
/// - `points`: POINT 1..=5, EXIT 0.
/// - `mmio`: test device MMIO accesses of widths 1, 2, 4 and 8, each value read printed; EXIT 0.
/// - `pio`: the same with port I/O of widths 1, 2 and 4; EXIT 0.
/// - `mark`: one MARK line, `hello from the test kernel`; EXIT 0.
/// - `edu`: a driver for the `edu` PCI device (`devices::edu`): finds 1234:11e8 on bus 0
///   through 0xcf8/0xcfc, sizes BAR0, programs it at [`crate::layout::EDU_BAR_DEFAULT`] and
///   enables memory space (MAP), then makes exactly the MMIO accesses of
///   [`EDU_MMIO_SEQUENCE`] with MARK lines between phases, then disables memory space
///   (UNMAP) and sets BAR0 to 0; every value read printed (`edu: ... = 0x..., ok`); EXIT 0,
///   or 1 if a check failed.
/// - `triple-fault`: loads an empty IDT and executes `ud2`: shutdown.
/// - `reset`: writes 0xFE to i8042 port 0x64, then spins.
/// - `spin`: loops forever (`pause`).
/// - `hlt`: `cli; hlt` forever.
/// - `panic`: a Rust panic: prints `test kernel panic: ...`, EXIT 101.
/// - `optloop`: the workload of jump-optimized probe tests. Calls the naked probe targets
///   `tk_opt_plain`, `tk_opt_riprel` (RIP-relative load and increment), `tk_opt_shortjmp`
///   (a 2-byte `je` at +3) and `tk_opt_jump_into` (a loop back to +2: must be refused) in a
///   loop, POINT 1 before it; stops when the host makes the u64 at `TK_OPT_STOP` nonzero, or
///   after `hviters=N` iterations; checks the checksum against plain Rust and the
///   RIP-relative call counter; SCRATCH = iterations (one 64-bit MMIO write); MARK
///   `optloop: iterations N checksum 0x... ok` (or `FAILED`); POINT 2; EXIT 0 (1 if a check
///   failed).
/// - `optbench`: 5 rounds of POINT 100, `hviters=N` (default 20000) calls of
///   `tk_bench_plain`, POINT 101, N calls of the probed `tk_bench_target` (same bytes),
///   POINT 102, MARK `optbench: round R plain_cycles P target_cycles T iters N` (guest TSC),
///   then waits for the trampoline arena's rings to drain; EXIT 0 (1 if the two loops' sums
///   differ).
/// - `ring3`: in ring 3, the test device ID and SCRATCH over PIO and MMIO, the console and
///   the TSC; POINT 1, MARK `ring3: cpl 3 pio 0x54505648 mmio 0x54505648 tsc_aux A ok`,
///   POINT 2; EXIT 0 (1 if a check failed).
/// - `tscaux`: `rdtscp`; SCRATCH = IA32_TSC_AUX (hvprobe sets it to the vCPU index), MARK
///   `tscaux: ring R cpl C aux A tsc_nonzero true`; EXIT 0. On our CI's software KVM,
///   `rdtscp` in (emulated) ring 0 is an emulation failure, and (native) ring 3 sees the
///   host CPU's TSC_AUX.
///
/// `optloop`, `optbench` and `tscaux` run in ring 0, or in ring 3 with `hvring=3` (where our
/// CI's software KVM runs them natively rather than emulated). Before any scenario runs,
/// the kernel reports its trampoline arena (20 MiB at `__hvprobe_arena_start`) through the
/// test device's ARENA registers.
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
    "edu",
    "triple-fault",
    "reset",
    "spin",
    "hlt",
    "panic",
    "optloop",
    "optbench",
    "ring3",
    "ring3pace",
    "tscaux",
    "serve",
];

/// One MMIO access of the `edu` scenario, at an offset from BAR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EduAccess {
    /// The MARK line the test kernel writes just before this access (without `\n`).
    pub mark_before: Option<&'static str>,
    /// A write (else a read).
    pub write: bool,
    /// Access width in bytes.
    pub width: u8,
    /// Offset from BAR0.
    pub offset: u64,
    /// The value written, or the value the read returns.
    pub value: u64,
}

const fn edu_access(
    mark_before: Option<&'static str>,
    write: bool,
    width: u8,
    offset: u64,
    value: u64,
) -> EduAccess {
    EduAccess {
        mark_before,
        write,
        width,
        offset,
        value,
    }
}

/// Every MMIO access the `edu` scenario makes on BAR0, in order (the table in
/// `tests/test-kernel/src/edu.rs`). BAR0 is at [`crate::layout::EDU_BAR_DEFAULT`]; it is
/// mapped after the MARK line `edu: probe` and unmapped after `edu: unmap`, and the MARK line
/// `edu: done` follows. DMA uses guest RAM at [`EDU_DMA_SRC_RAM`] and [`EDU_DMA_DST_RAM`].
pub const EDU_MMIO_SEQUENCE: &[EduAccess] = &[
    edu_access(Some("edu: id"), false, 4, 0x00, 0x0100_00ed),
    edu_access(Some("edu: liveness"), true, 4, 0x04, 0x1234_5678),
    edu_access(None, false, 4, 0x04, 0xedcb_a987),
    edu_access(Some("edu: factorial"), true, 4, 0x08, 5),
    edu_access(None, false, 4, 0x20, 0x1),
    edu_access(None, false, 4, 0x20, 0x0),
    edu_access(None, false, 4, 0x08, 120),
    edu_access(Some("edu: interrupt"), true, 4, 0x60, 0x1),
    edu_access(None, false, 4, 0x24, 0x1),
    edu_access(None, true, 4, 0x64, 0x1),
    edu_access(None, false, 4, 0x24, 0x0),
    edu_access(Some("edu: dma"), true, 8, 0x80, EDU_DMA_SRC_RAM),
    edu_access(None, true, 8, 0x88, 0x4_0000),
    edu_access(None, true, 8, 0x90, 16),
    edu_access(None, true, 8, 0x98, 0x1),
    edu_access(None, false, 8, 0x98, 0x0),
    edu_access(None, true, 8, 0x80, 0x4_0000),
    edu_access(None, true, 8, 0x88, EDU_DMA_DST_RAM),
    edu_access(None, true, 8, 0x90, 16),
    edu_access(None, true, 8, 0x98, 0x3),
    edu_access(None, false, 8, 0x98, 0x2),
];

/// The MARK lines of the `edu` scenario, in order.
pub const EDU_MARKS: &[&str] = &[
    "edu: probe",
    "edu: id",
    "edu: liveness",
    "edu: factorial",
    "edu: interrupt",
    "edu: dma",
    "edu: unmap",
    "edu: done",
];

/// Guest RAM the `edu` scenario's DMA reads (16 bytes, `hvprobe edu DMA!`).
pub const EDU_DMA_SRC_RAM: u64 = 0x6_0000;
/// Guest RAM the `edu` scenario's DMA writes back to.
pub const EDU_DMA_DST_RAM: u64 = 0x6_1000;

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

    #[test]
    fn edu_sequence_matches_the_device_model() {
        use crate::devices::BusDevice;
        use crate::devices::edu::EduDevice;
        use crate::memory::{Gpa, GuestMem};
        let mem = GuestMem::new(16 << 20).unwrap();
        mem.write(Gpa(EDU_DMA_SRC_RAM), b"hvprobe edu DMA!")
            .unwrap();
        let mut edu = EduDevice::new(mem.clone(), None);
        for (i, a) in EDU_MMIO_SEQUENCE.iter().enumerate() {
            let mut data = vec![0u8; usize::from(a.width)];
            if a.write {
                let n = data.len();
                data.copy_from_slice(&a.value.to_le_bytes()[..n]);
                edu.write(a.offset, &data);
            } else {
                edu.read(a.offset, &mut data);
                assert_eq!(
                    crate::devices::le_value(&data),
                    a.value,
                    "access {}: {a:?}",
                    i + 1
                );
            }
        }
        let mut back = [0u8; 16];
        mem.read(Gpa(EDU_DMA_DST_RAM), &mut back).unwrap();
        assert_eq!(&back, b"hvprobe edu DMA!");
        let marks: Vec<_> = EDU_MMIO_SEQUENCE
            .iter()
            .filter_map(|a| a.mark_before)
            .collect();
        assert_eq!(marks, EDU_MARKS[1..EDU_MARKS.len() - 2]);
    }
}
