//! Memory through the page tables: faults with CR2 and error code, page-crossing operands and
//! instructions, MMIO operands.

use iced_x86::code_asm::*;

use super::*;
use crate::platform::emulate::access::{PF_FETCH, PF_PRESENT, PF_RSVD, PF_USER, PF_WRITE};

/// Two virtual pages mapped to physical pages that are not adjacent (and in reverse order).
const SPLIT_VA: u64 = 0xffff_ffff_8300_0000;
const SPLIT_PA_LO: u64 = 0x40_0000;
const SPLIT_PA_HI: u64 = 0x38_0000;

fn split_world(second: Option<u64>) -> World {
    let mut w = World::new();
    w.map(SPLIT_VA, SPLIT_PA_LO, P | RW | XD);
    if let Some(flags) = second {
        w.map(SPLIT_VA + 0x1000, SPLIT_PA_HI, flags);
    }
    w
}

fn pf(addr: u64, error_code: u32) -> Exception {
    Exception::PageFault {
        cr2: addr,
        error_code,
    }
}

#[test]
fn unmapped_read_operand_is_a_page_fault_with_cr2() {
    let w = World::new();
    let addr = DATA_VA + 0x2000;
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(addr)).unwrap());
    cpu.regs.rax = 77;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(addr, 0));
    assert_eq!(cpu.sregs.cr2, addr);
    assert_eq!(cpu.regs.rax, 77, "destination untouched");
}

#[test]
fn write_faults_say_write_and_protection() {
    let mut w = World::new();
    let ro = DATA_VA + 0x1000;
    w.map(ro, 0x31_0000, P | XD);
    let (mut cpu, _) = w.code(|a| a.stmxcsr(dword_ptr(ro + 8)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(ro + 8, PF_PRESENT | PF_WRITE));

    let missing = DATA_VA + 0x5000;
    let (mut cpu, _) = w.code(|a| a.stmxcsr(dword_ptr(missing)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(missing, PF_WRITE));

    // With CR0.WP clear the kernel may write a read-only page.
    w.put(0x31_0008, &[0; 4]);
    let (mut cpu, len) = w.code(|a| a.stmxcsr(dword_ptr(ro + 8)).unwrap());
    cpu.sregs.cr0 &= !(1 << 16);
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "stmxcsr", len);
    assert_eq!(w.read(0x31_0008, 4), 0x1f80u32.to_le_bytes());
}

#[test]
fn user_and_smap_checks() {
    let mut w = World::new();
    let user_va = 0x7000_0000u64;
    w.map(user_va, 0x32_0000, P | RW | US | XD);

    // CPL 3 touching a supervisor page: P | U.
    w.map(CODE_VA, CODE_PA, P | US);
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(DATA_VA)).unwrap());
    cpu.sregs.cs.selector = 0x33;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(DATA_VA, PF_PRESENT | PF_USER));

    // Supervisor read of a user page with SMAP and AC clear: P; with AC set it works.
    w.map(CODE_VA, CODE_PA, P);
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(user_va)).unwrap());
    cpu.sregs.cr4 |= 1 << 21;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(user_va, PF_PRESENT));
    w.put(0x32_0000, &7u64.to_le_bytes());
    let (mut cpu, len) = w.code(|a| a.popcnt(rax, qword_ptr(user_va)).unwrap());
    cpu.sregs.cr4 |= 1 << 21;
    cpu.regs.rflags |= 1 << 18;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "popcnt", len);
    assert_eq!(cpu.regs.rax, 3);
}

#[test]
fn reserved_bit_in_an_entry_is_reported() {
    // XD set on the data page while EFER.NXE is off: a reserved bit.
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(DATA_VA)).unwrap());
    cpu.sregs.efer &= !(1 << 11);
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(DATA_VA, PF_PRESENT | PF_RSVD));
}

#[test]
fn non_canonical_operands_are_gp_or_ss() {
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(rbx)).unwrap());
    cpu.regs.rbx = 0x0000_8000_0000_0000;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);

    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(rsp + 8)).unwrap());
    cpu.regs.rsp = 0x0000_8000_0000_0000;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::StackFault);
}

#[test]
fn page_crossing_read_operand_joins_both_pages() {
    let w = split_world(Some(P | RW | XD));
    w.put(SPLIT_PA_LO + 0xffc, &[0xff; 4]);
    w.put(SPLIT_PA_HI, &[0x01; 4]);
    let (mut cpu, len) = w.code(|a| a.popcnt(rax, qword_ptr(SPLIT_VA + 0xffc)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "popcnt", len);
    assert_eq!(cpu.regs.rax, 32 + 4);
}

#[test]
fn page_crossing_operand_faults_on_the_second_page() {
    let w = split_world(None);
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(SPLIT_VA + 0xffc)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(SPLIT_VA + 0x1000, 0));
}

#[test]
fn page_crossing_write_is_all_or_nothing() {
    // fxsave64 at 0xf00: 256 bytes in each page. Second page read-only: nothing written.
    let w = split_world(Some(P | XD));
    w.put(SPLIT_PA_LO + 0xf00, &[0xaa; 256]);
    let (mut cpu, _) = w.code(|a| a.fxsave64(qword_ptr(SPLIT_VA + 0xf00)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, pf(SPLIT_VA + 0x1000, PF_PRESENT | PF_WRITE));
    assert_eq!(w.read(SPLIT_PA_LO + 0xf00, 256), [0xaa; 256]);

    // Both writable: the image is split across the two physical pages.
    let w = split_world(Some(P | RW | XD));
    let (mut cpu, len) = w.code(|a| a.fxsave64(qword_ptr(SPLIT_VA + 0xf00)).unwrap());
    cpu.fpu.xmm[15] = [0x5a; 16];
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fxsave64", len);
    assert_eq!(w.read(SPLIT_PA_LO + 0xf00, 2), 0x37fu16.to_le_bytes());
    // XMM15 is at image offset 400, i.e. 144 bytes into the second page.
    assert_eq!(w.read(SPLIT_PA_HI + 144, 16), [0x5a; 16]);
}

#[test]
fn mmio_operand_is_refused_untouched() {
    let mut w = World::new();
    let mmio_va = DATA_VA + 0x3000;
    w.map(mmio_va, 0xd000_0000, P | RW | XD);
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, qword_ptr(mmio_va)).unwrap());
    let before = cpu.regs;
    let r = emu().run(&mut cpu, &w.mem);
    match &r {
        Emulated::Refused {
            mnemonic,
            rip,
            reason,
            ..
        } => {
            assert_eq!(mnemonic, "popcnt");
            assert_eq!(*rip, CODE_VA);
            assert!(reason.contains("MMIO"), "{reason}");
            assert!(reason.contains("0xd0000000"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(cpu.regs, before);
    assert!(cpu.injected.is_empty());
}

/// popcnt rax, rbx: f3 48 0f b8 c3.
const POPCNT: [u8; 5] = [0xf3, 0x48, 0x0f, 0xb8, 0xc3];

#[test]
fn instruction_bytes_crossing_a_page_are_fetched_from_both() {
    let mut w = World::new();
    let code2 = CODE_VA + 0x1000;
    w.map(code2, 0x50_0000, P);
    // 3 bytes at the end of the first code page, 2 at the start of the second.
    w.put(CODE_PA + 0xffd, &POPCNT[..3]);
    w.put(0x50_0000, &POPCNT[3..]);
    let rip = CODE_VA + 0xffd;
    let mut cpu = w.cpu(rip);
    cpu.regs.rbx = 0xff;
    let r = emu().run(&mut cpu, &w.mem);
    assert_eq!(r, Emulated::Done { mnemonic: "popcnt" });
    assert_eq!(cpu.regs.rax, 8);
    assert_eq!(cpu.regs.rip, rip + 5);
}

#[test]
fn instruction_needing_an_unmapped_page_is_a_fetch_fault() {
    let w = World::new();
    w.put(CODE_PA + 0xffd, &POPCNT[..3]);
    let rip = CODE_VA + 0xffd;
    let mut cpu = w.cpu(rip);
    let r = emu().run(&mut cpu, &w.mem);
    let e = pf(CODE_VA + 0x1000, PF_FETCH);
    assert_eq!(
        r,
        Emulated::Faulted {
            mnemonic: "fetch",
            exception: e
        }
    );
    assert_eq!(cpu.injected, vec![e]);
    assert_eq!(cpu.sregs.cr2, CODE_VA + 0x1000);

    // An instruction that ends on the first page does not need the second.
    w.put(CODE_PA + 0xfff, &[0x9b]);
    let mut cpu = w.cpu(CODE_VA + 0xfff);
    let r = emu().run(&mut cpu, &w.mem);
    assert_eq!(r, Emulated::Done { mnemonic: "fwait" });
    assert_eq!(cpu.regs.rip, CODE_VA + 0x1000);
}

#[test]
fn fetch_from_a_non_executable_page_faults() {
    let w = World::new();
    w.put(DATA_PA, &POPCNT);
    let mut cpu = w.cpu(DATA_VA);
    let r = emu().run(&mut cpu, &w.mem);
    let e = pf(DATA_VA, PF_PRESENT | PF_FETCH);
    assert_eq!(
        r,
        Emulated::Faulted {
            mnemonic: "fetch",
            exception: e
        }
    );
}
