//! Unit tests: a mock vCPU over a real [`GuestMem`] with 4-level page tables built here.

mod instructions;
mod memory;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use iced_x86::code_asm::CodeAssembler;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::cpu::{CpuError, EmuCpu, OthersPaused};
use super::{Emulated, Emulator, Exception};
use crate::memory::{Gpa, GuestMem};

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const XD: u64 = 1 << 63;

/// Where test code runs (a kernel-text-like address).
const CODE_VA: u64 = 0xffff_ffff_8100_0000;
/// Its physical page.
const CODE_PA: u64 = 0x20_0000;
/// A writable kernel data page.
const DATA_VA: u64 = 0xffff_ffff_8200_0000;
/// Its physical page.
const DATA_PA: u64 = 0x30_0000;
/// The GS base tests use (Linux per-CPU style); maps onto the data page.
const GS_BASE: u64 = DATA_VA + 0x800;

/// A vCPU whose state lives in plain structs; injected exceptions and pauses are recorded.
struct MockCpu {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    xcr0: u64,
    injected: Vec<Exception>,
    pauses: Arc<AtomicUsize>,
    resumes: Arc<AtomicUsize>,
    fail_pause: bool,
}

impl EmuCpu for MockCpu {
    fn regs(&self) -> Result<kvm_regs, CpuError> {
        Ok(self.regs)
    }
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), CpuError> {
        self.regs = *regs;
        Ok(())
    }
    fn sregs(&self) -> Result<kvm_sregs, CpuError> {
        Ok(self.sregs)
    }
    fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), CpuError> {
        self.sregs = *sregs;
        Ok(())
    }
    fn fpu(&self) -> Result<kvm_fpu, CpuError> {
        Ok(self.fpu)
    }
    fn set_fpu(&mut self, fpu: &kvm_fpu) -> Result<(), CpuError> {
        self.fpu = *fpu;
        Ok(())
    }
    fn xcr0(&self) -> Result<u64, CpuError> {
        Ok(self.xcr0)
    }
    fn inject(&mut self, e: &Exception) -> Result<(), CpuError> {
        if let Exception::PageFault { cr2, .. } = *e {
            self.sregs.cr2 = cr2;
        }
        self.injected.push(*e);
        Ok(())
    }
    fn pause_others(&mut self) -> Result<OthersPaused, CpuError> {
        if self.fail_pause {
            return Err(CpuError::Pause("test: pausing fails".into()));
        }
        self.pauses.fetch_add(1, Ordering::SeqCst);
        let resumes = self.resumes.clone();
        Ok(OthersPaused::new(move || {
            resumes.fetch_add(1, Ordering::SeqCst);
        }))
    }
}

/// Guest RAM with page tables, a code page and a data page mapped.
struct World {
    mem: GuestMem,
    cr3: u64,
    next_table: u64,
}

impl World {
    fn new() -> Self {
        let mem = GuestMem::new(16 << 20).unwrap();
        let mut w = World {
            mem,
            cr3: 0,
            next_table: 0x1000,
        };
        w.cr3 = w.alloc();
        w.map(CODE_VA, CODE_PA, P);
        w.map(DATA_VA, DATA_PA, P | RW | XD);
        w
    }

    /// A zeroed page for a page table.
    fn alloc(&mut self) -> u64 {
        let p = self.next_table;
        self.next_table += 0x1000;
        self.mem.write(Gpa(p), &[0u8; 4096]).unwrap();
        p
    }

    /// Maps the 4 KiB page at `gva` to `gpa` with leaf `flags`; upper levels allow everything.
    fn map(&mut self, gva: u64, gpa: u64, flags: u64) {
        let mut table = self.cr3;
        for level in (2..=4u32).rev() {
            let idx = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
            let at = Gpa(table + idx * 8);
            let e = self.mem.read_u64(at).unwrap();
            table = if e & P != 0 {
                e & 0x000f_ffff_ffff_f000
            } else {
                let t = self.alloc();
                self.mem.write_u64(at, t | P | RW | US).unwrap();
                t
            };
        }
        let idx = (gva >> 12) & 0x1ff;
        self.mem
            .write_u64(Gpa(table + idx * 8), gpa | flags)
            .unwrap();
    }

    /// The leaf entry of `gva` (to look at accessed/dirty bits).
    fn pte(&self, gva: u64) -> u64 {
        let mut table = self.cr3;
        for level in (1..=4u32).rev() {
            let idx = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
            let e = self.mem.read_u64(Gpa(table + idx * 8)).unwrap();
            if level == 1 {
                return e;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        unreachable!()
    }

    /// Writes `code` at physical `pa`.
    fn put(&self, pa: u64, bytes: &[u8]) {
        self.mem.write(Gpa(pa), bytes).unwrap();
    }

    /// A ring-0 64-bit vCPU at `rip` with this world's page tables.
    fn cpu(&self, rip: u64) -> MockCpu {
        let mut sregs = kvm_sregs {
            // PE | MP | ET | NE | WP | PG
            cr0: 1 | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31),
            cr3: self.cr3,
            // PAE | OSFXSR | OSXMMEXCPT | OSXSAVE
            cr4: (1 << 5) | (1 << 9) | (1 << 10) | (1 << 18),
            // LME | LMA | NXE
            efer: (1 << 8) | (1 << 10) | (1 << 11),
            ..Default::default()
        };
        sregs.cs.l = 1;
        sregs.cs.selector = 0x10;
        sregs.gs.base = GS_BASE;
        MockCpu {
            regs: kvm_regs {
                rip,
                rflags: 0x2,
                ..Default::default()
            },
            sregs,
            fpu: kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            },
            xcr0: 0x7,
            injected: Vec::new(),
            pauses: Arc::new(AtomicUsize::new(0)),
            resumes: Arc::new(AtomicUsize::new(0)),
            fail_pause: false,
        }
    }

    /// Assembles `build` at `CODE_VA`, writes it to the code page, and gives a vCPU on it.
    fn code(&self, build: impl FnOnce(&mut CodeAssembler)) -> (MockCpu, usize) {
        let mut a = CodeAssembler::new(64).unwrap();
        build(&mut a);
        let bytes = a.assemble(CODE_VA).unwrap();
        self.put(CODE_PA, &bytes);
        (self.cpu(CODE_VA), bytes.len())
    }

    fn read(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read(Gpa(pa), &mut b).unwrap();
        b
    }
}

/// Asserts the instruction completed: `Done` with `mnemonic`, RIP advanced by `len`, nothing
/// injected.
#[track_caller]
fn assert_done(r: &Emulated, cpu: &MockCpu, mnemonic: &str, len: usize) {
    assert!(
        matches!(r, Emulated::Done { mnemonic: m } if *m == mnemonic),
        "expected {mnemonic} done, got {r:?}"
    );
    assert_eq!(
        cpu.regs.rip,
        CODE_VA + len as u64,
        "RIP past the instruction"
    );
    assert!(cpu.injected.is_empty(), "{:?}", cpu.injected);
}

/// Asserts the instruction faulted with `e`: injected once, RIP unchanged.
#[track_caller]
fn assert_fault(r: &Emulated, cpu: &MockCpu, e: Exception) {
    match r {
        Emulated::Faulted { exception, .. } => assert_eq!(*exception, e),
        other => panic!("expected {e}, got {other:?}"),
    }
    assert_eq!(cpu.injected, vec![e]);
    assert_eq!(cpu.regs.rip, CODE_VA, "RIP stays on a faulting instruction");
}

fn emu() -> Emulator {
    Emulator::new()
}
