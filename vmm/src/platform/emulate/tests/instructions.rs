//! Each instruction family's effect, flags and faults.

use std::sync::atomic::Ordering;

use iced_x86::code_asm::*;

use super::*;
use crate::platform::emulate::{ARITH_FLAGS, FLAG_CF, FLAG_ZF};

/// DATA_VA + `off` as an absolute memory operand.
fn data(off: u64) -> AsmMemoryOperand {
    qword_ptr(DATA_VA + off)
}

#[test]
fn fwait_is_a_nop_without_a_pending_error() {
    let w = World::new();
    let (mut cpu, len) = w.code(|a| a.wait().unwrap());
    let before = cpu.fpu;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fwait", len);
    assert_eq!(len, 1);
    assert_eq!(cpu.fpu.fsw, before.fsw);
}

#[test]
fn fwait_with_a_pending_error_raises_mf_or_nm() {
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.wait().unwrap());
    cpu.fpu.fsw = 0x0081; // IE | ES
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::MathFault);

    // CR0.TS with CR0.MP: #NM comes first.
    let (mut cpu, _) = w.code(|a| a.wait().unwrap());
    cpu.sregs.cr0 |= 1 << 3;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::DeviceNotAvailable);

    // ES with CR0.NE clear is legacy FERR#: refused, not skipped.
    let (mut cpu, _) = w.code(|a| a.wait().unwrap());
    cpu.fpu.fsw = 0x0081;
    cpu.sregs.cr0 &= !(1 << 5);
    let r = emu().run(&mut cpu, &w.mem);
    assert!(matches!(r, Emulated::Refused { .. }), "{r:?}");
    assert_eq!(cpu.regs.rip, CODE_VA);
}

#[test]
fn ldmxcsr_loads_and_checks_reserved_bits() {
    let w = World::new();
    w.put(DATA_PA + 0x40, &0x3f80u32.to_le_bytes());
    let (mut cpu, len) = w.code(|a| a.ldmxcsr(dword_ptr(DATA_VA + 0x40)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "ldmxcsr", len);
    assert_eq!(cpu.fpu.mxcsr, 0x3f80);

    w.put(DATA_PA + 0x40, &0x1_1f80u32.to_le_bytes());
    let (mut cpu, _) = w.code(|a| a.ldmxcsr(dword_ptr(DATA_VA + 0x40)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);
    assert_eq!(cpu.fpu.mxcsr, 0x1f80, "MXCSR unchanged after #GP");

    // No OS support for SSE: #UD before the operand is looked at.
    let (mut cpu, _) = w.code(|a| a.ldmxcsr(dword_ptr(DATA_VA + 0x40)).unwrap());
    cpu.sregs.cr4 &= !(1 << 9);
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::InvalidOpcode);
}

#[test]
fn stmxcsr_stores_through_a_gs_operand() {
    let w = World::new();
    // stmxcsr gs:[0x10] -> GS_BASE + 0x10 = DATA_VA + 0x810
    let (mut cpu, len) = w.code(|a| a.stmxcsr(dword_ptr(0x10u64).gs()).unwrap());
    cpu.fpu.mxcsr = 0x1234;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "stmxcsr", len);
    assert_eq!(w.read(DATA_PA + 0x810, 4), 0x1234u32.to_le_bytes());
    assert_ne!(w.pte(DATA_VA) & (1 << 6), 0, "the write set the dirty bit");
}

fn sample_fpu() -> kvm_fpu {
    let mut f = kvm_fpu {
        fcw: 0x027f,
        fsw: 0x3800,
        ftwx: 0x81,
        last_opcode: 0x5d9,
        last_ip: 0xffff_ffff_8123_4567,
        last_dp: 0xffff_8880_1234_5678,
        mxcsr: 0x1fa0,
        ..Default::default()
    };
    for (i, st) in f.fpr.iter_mut().enumerate() {
        st[..10].fill(u8::try_from(0x10 + i).unwrap());
    }
    for (i, x) in f.xmm.iter_mut().enumerate() {
        x.fill(u8::try_from(0x40 + i).unwrap());
    }
    f
}

#[test]
fn fxsave64_writes_the_image() {
    let w = World::new();
    w.put(DATA_PA + 0x200, &[0xee; 512]);
    let (mut cpu, len) = w.code(|a| a.fxsave64(data(0x200)).unwrap());
    cpu.fpu = sample_fpu();
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fxsave64", len);
    let img = w.read(DATA_PA + 0x200, 512);
    assert_eq!(img[0..2], 0x027fu16.to_le_bytes());
    assert_eq!(img[2..4], 0x3800u16.to_le_bytes());
    assert_eq!(img[4], 0x81);
    assert_eq!(img[6..8], 0x5d9u16.to_le_bytes());
    assert_eq!(img[8..16], 0xffff_ffff_8123_4567u64.to_le_bytes());
    assert_eq!(img[16..24], 0xffff_8880_1234_5678u64.to_le_bytes());
    assert_eq!(img[24..28], 0x1fa0u32.to_le_bytes());
    assert_eq!(img[28..32], 0xffffu32.to_le_bytes());
    assert_eq!(img[32..42], [0x10; 10]);
    assert_eq!(img[42..48], [0; 6]);
    assert_eq!(img[32 + 7 * 16], 0x17);
    assert_eq!(img[160..176], [0x40; 16]);
    assert_eq!(img[400..416], [0x4f; 16]);
    assert_eq!(
        img[416..512],
        [0xee; 96],
        "reserved/software bytes untouched"
    );
}

#[test]
fn fxsave_without_rex_w_stores_32_bit_pointers() {
    let w = World::new();
    w.put(DATA_PA + 0x200, &[0xee; 512]);
    let (mut cpu, len) = w.code(|a| a.fxsave(data(0x200)).unwrap());
    cpu.fpu = sample_fpu();
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fxsave", len);
    let img = w.read(DATA_PA + 0x200, 512);
    assert_eq!(img[8..12], 0x8123_4567u32.to_le_bytes());
    assert_eq!(img[12..16], [0; 4], "FCS stored as 0");
    assert_eq!(img[16..20], 0x1234_5678u32.to_le_bytes());
}

#[test]
fn fxrstor64_round_trips_and_checks_mxcsr() {
    let w = World::new();
    let img = crate::platform::emulate::fxsave::image(&sample_fpu(), true, true);
    let mut full = [0u8; 512];
    full[..416].copy_from_slice(&img);
    w.put(DATA_PA + 0x400, &full);
    let (mut cpu, len) = w.code(|a| a.fxrstor64(data(0x400)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fxrstor64", len);
    let want = sample_fpu();
    assert_eq!(cpu.fpu.fcw, want.fcw);
    assert_eq!(cpu.fpu.fsw, want.fsw);
    assert_eq!(cpu.fpu.ftwx, want.ftwx);
    assert_eq!(cpu.fpu.last_opcode, want.last_opcode);
    assert_eq!(cpu.fpu.last_ip, want.last_ip);
    assert_eq!(cpu.fpu.last_dp, want.last_dp);
    assert_eq!(cpu.fpu.mxcsr, want.mxcsr);
    assert_eq!(cpu.fpu.fpr, want.fpr);
    assert_eq!(cpu.fpu.xmm, want.xmm);

    // A reserved MXCSR bit in the image: #GP(0), FPU state untouched.
    full[24..28].copy_from_slice(&0x0002_1f80u32.to_le_bytes());
    w.put(DATA_PA + 0x400, &full);
    let (mut cpu, _) = w.code(|a| a.fxrstor64(data(0x400)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);
    assert_eq!(cpu.fpu.fcw, 0x37f);
}

#[test]
fn fxsave_and_fxrstor_need_16_byte_alignment() {
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.fxsave64(data(0x208)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);
    let (mut cpu, _) = w.code(|a| a.fxrstor(data(0x204)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);
}

#[test]
fn fninit_and_fnclex() {
    let w = World::new();
    let (mut cpu, len) = w.code(|a| a.fninit().unwrap());
    cpu.fpu = sample_fpu();
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fninit", len);
    assert_eq!(
        (
            cpu.fpu.fcw,
            cpu.fpu.fsw,
            cpu.fpu.ftwx,
            cpu.fpu.last_ip,
            cpu.fpu.last_dp
        ),
        (0x37f, 0, 0, 0, 0)
    );
    assert_eq!(cpu.fpu.mxcsr, 0x1fa0, "SSE state kept");
    assert_eq!(cpu.fpu.xmm, sample_fpu().xmm);

    let (mut cpu, len) = w.code(|a| a.fnclex().unwrap());
    cpu.fpu.fsw = 0xb8ff; // B, TOP=7, C?=0, ES, SF, all flags
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "fnclex", len);
    assert_eq!(cpu.fpu.fsw, 0x3800, "only TOP stays");
}

#[test]
fn xgetbv_reads_xcr0_and_faults_otherwise() {
    let w = World::new();
    let (mut cpu, len) = w.code(|a| a.xgetbv().unwrap());
    cpu.xcr0 = 0x0000_0002_0000_0007;
    cpu.regs.rax = u64::MAX;
    cpu.regs.rdx = u64::MAX;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "xgetbv", len);
    assert_eq!((cpu.regs.rax, cpu.regs.rdx), (7, 2));

    let (mut cpu, _) = w.code(|a| a.xgetbv().unwrap());
    cpu.regs.rcx = 1;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);

    let (mut cpu, _) = w.code(|a| a.xgetbv().unwrap());
    cpu.sregs.cr4 &= !(1 << 18);
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::InvalidOpcode);
}

#[test]
fn popcnt_widths_and_flags() {
    let w = World::new();
    // 64-bit register source; every arithmetic flag set beforehand must be cleared.
    let (mut cpu, len) = w.code(|a| a.popcnt(rax, rbx).unwrap());
    cpu.regs.rbx = 0xf0f0_0000_0000_0001;
    cpu.regs.rflags |= ARITH_FLAGS;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "popcnt", len);
    assert_eq!(cpu.regs.rax, 9);
    assert_eq!(cpu.regs.rflags & ARITH_FLAGS, 0);

    // 32-bit: upper half of the source ignored, destination zero-extended.
    let (mut cpu, _) = w.code(|a| a.popcnt(ecx, edx).unwrap());
    cpu.regs.rdx = 0xffff_ffff_0000_0003;
    cpu.regs.rcx = u64::MAX;
    emu().run(&mut cpu, &w.mem);
    assert_eq!(cpu.regs.rcx, 2);

    // 16-bit: the destination's other bits kept.
    let (mut cpu, _) = w.code(|a| a.popcnt(r9w, r10w).unwrap());
    cpu.regs.r10 = 0xffff_0000_0000_00ff;
    cpu.regs.r9 = 0x1234_5678_9abc_def0;
    emu().run(&mut cpu, &w.mem);
    assert_eq!(cpu.regs.r9, 0x1234_5678_9abc_0008);

    // Zero source: ZF set, result 0.
    let (mut cpu, _) = w.code(|a| a.popcnt(rax, rbx).unwrap());
    cpu.regs.rax = 55;
    emu().run(&mut cpu, &w.mem);
    assert_eq!(cpu.regs.rax, 0);
    assert_eq!(cpu.regs.rflags & ARITH_FLAGS, FLAG_ZF);

    // Memory source through a base + index operand.
    w.put(DATA_PA + 0x100, &0x0101_0101_0101_0101u64.to_le_bytes());
    let (mut cpu, len) = w.code(|a| a.popcnt(r8, qword_ptr(rsi + rdi * 8 + 0x10)).unwrap());
    cpu.regs.rsi = DATA_VA + 0xf0 - 0x40;
    cpu.regs.rdi = 8;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "popcnt", len);
    assert_eq!(cpu.regs.r8, 8);
    assert_ne!(
        w.pte(DATA_VA) & (1 << 5),
        0,
        "the read set the accessed bit"
    );
}

#[test]
fn rdrand_and_rdseed_give_host_randomness_with_cf() {
    let w = World::new();
    let mut seen = Vec::new();
    for seed in [false, true] {
        let (mut cpu, len) = w.code(|a| {
            if seed {
                a.rdseed(rax).unwrap();
            } else {
                a.rdrand(rax).unwrap();
            }
        });
        cpu.regs.rflags |= ARITH_FLAGS & !FLAG_CF;
        let r = emu().run(&mut cpu, &w.mem);
        assert_done(&r, &cpu, if seed { "rdseed" } else { "rdrand" }, len);
        assert_eq!(cpu.regs.rflags & ARITH_FLAGS, FLAG_CF);
        seen.push(cpu.regs.rax);
    }
    assert_ne!(seen[0], seen[1], "two 64-bit random values differ");

    let (mut cpu, _) = w.code(|a| a.rdrand(cx).unwrap());
    cpu.regs.rcx = 0xaaaa_bbbb_cccc_0000;
    emu().run(&mut cpu, &w.mem);
    assert_eq!(
        cpu.regs.rcx >> 16,
        0xaaaa_bbbb_cccc,
        "16-bit destination keeps the rest"
    );
}

#[test]
fn clac_and_stac_flip_ac_in_ring_0_only() {
    let w = World::new();
    let (mut cpu, len) = w.code(|a| a.stac().unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "stac", len);
    assert_ne!(cpu.regs.rflags & (1 << 18), 0);

    let (mut cpu, len) = w.code(|a| a.clac().unwrap());
    cpu.regs.rflags |= 1 << 18;
    let r = emu().run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "clac", len);
    assert_eq!(cpu.regs.rflags & (1 << 18), 0);

    let mut w = World::new();
    w.map(CODE_VA, CODE_PA, P | US);
    let (mut cpu, _) = w.code(|a| a.clac().unwrap());
    cpu.sregs.cs.selector = 0x33;
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::InvalidOpcode);
}

#[test]
fn cmpxchg16b_success_and_failure_with_others_paused() {
    let w = World::new();
    let old = [0x11u8; 8]
        .into_iter()
        .chain([0x22u8; 8])
        .collect::<Vec<_>>();
    w.put(DATA_PA + 0x300, &old);
    let e = emu();

    // Compare fails: RDX:RAX loaded, ZF clear, memory unchanged.
    let (mut cpu, len) = w.code(|a| a.lock().cmpxchg16b(xmmword_ptr(DATA_VA + 0x300)).unwrap());
    cpu.regs.rflags |= FLAG_ZF | FLAG_CF;
    cpu.regs.rbx = 5;
    cpu.regs.rcx = 6;
    let r = e.run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "cmpxchg16b", len);
    assert_eq!(cpu.regs.rax, 0x1111_1111_1111_1111);
    assert_eq!(cpu.regs.rdx, 0x2222_2222_2222_2222);
    assert_eq!(
        cpu.regs.rflags & (FLAG_ZF | FLAG_CF),
        FLAG_CF,
        "ZF clear, CF kept"
    );
    assert_eq!(w.read(DATA_PA + 0x300, 16), old);
    assert_eq!(cpu.pauses.load(Ordering::SeqCst), 1);
    assert_eq!(cpu.resumes.load(Ordering::SeqCst), 1);

    // Compare succeeds (RDX:RAX now holds the value): RCX:RBX stored, ZF set.
    cpu.regs.rip = CODE_VA;
    let r = e.run(&mut cpu, &w.mem);
    assert_done(&r, &cpu, "cmpxchg16b", len);
    assert_ne!(cpu.regs.rflags & FLAG_ZF, 0);
    let mut want = 5u64.to_le_bytes().to_vec();
    want.extend_from_slice(&6u64.to_le_bytes());
    assert_eq!(w.read(DATA_PA + 0x300, 16), want);
    assert_eq!(cpu.resumes.load(Ordering::SeqCst), 2);
    assert_eq!(e.counts(), vec![("cmpxchg16b".to_string(), 2)]);
}

#[test]
fn cmpxchg16b_misaligned_is_gp_without_pausing() {
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.cmpxchg16b(xmmword_ptr(DATA_VA + 0x308)).unwrap());
    let r = emu().run(&mut cpu, &w.mem);
    assert_fault(&r, &cpu, Exception::GeneralProtection);
    assert_eq!(cpu.pauses.load(Ordering::SeqCst), 0);
}

#[test]
fn cmpxchg16b_retries_when_the_atomic_section_is_busy_or_pausing_fails() {
    let w = World::new();
    w.put(DATA_PA + 0x300, &[0u8; 16]);
    let e = emu();
    let (mut cpu, _) = w.code(|a| a.cmpxchg16b(xmmword_ptr(DATA_VA + 0x300)).unwrap());
    cpu.regs.rbx = 1;
    {
        let _held = e.atomic.lock().unwrap();
        let r = e.run(&mut cpu, &w.mem);
        assert!(
            matches!(
                r,
                Emulated::Retry {
                    mnemonic: "cmpxchg16b",
                    ..
                }
            ),
            "{r:?}"
        );
    }
    cpu.fail_pause = true;
    let r = e.run(&mut cpu, &w.mem);
    assert!(matches!(r, Emulated::Retry { .. }), "{r:?}");
    assert_eq!(cpu.regs.rip, CODE_VA);
    assert_eq!(w.read(DATA_PA + 0x300, 16), [0u8; 16], "nothing written");
    assert!(cpu.injected.is_empty());
}

#[test]
fn unknown_instruction_is_refused_with_mnemonic_and_bytes() {
    let w = World::new();
    let (mut cpu, _) = w.code(|a| a.movd(xmm15, ecx).unwrap());
    let before = cpu.regs;
    let e = emu();
    let r = e.run(&mut cpu, &w.mem);
    match r {
        Emulated::Refused {
            mnemonic,
            rip,
            bytes,
            reason,
        } => {
            assert_eq!(mnemonic, "movd");
            assert_eq!(rip, CODE_VA);
            assert_eq!(bytes, [0x66, 0x44, 0x0f, 0x6e, 0xf9]);
            assert!(reason.contains("movd xmm15,ecx"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(cpu.regs, before);
    assert!(e.counts().is_empty());
}

#[test]
fn undecodable_bytes_and_32_bit_mode_are_refused() {
    let w = World::new();
    w.put(CODE_PA, &[0x06, 0x90]); // push es: invalid in 64-bit mode
    let mut cpu = w.cpu(CODE_VA);
    let r = emu().run(&mut cpu, &w.mem);
    assert!(
        matches!(&r, Emulated::Refused { mnemonic, .. } if mnemonic == "(unknown)"),
        "{r:?}"
    );

    let (mut cpu, _) = w.code(|a| a.wait().unwrap());
    cpu.sregs.cs.l = 0;
    let r = emu().run(&mut cpu, &w.mem);
    assert!(
        matches!(&r, Emulated::Refused { reason, .. } if reason.contains("64-bit")),
        "{r:?}"
    );
}
