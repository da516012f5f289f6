//! `can_optimize` and `relocate` on functions assembled with iced's `code_asm`.

use iced_x86::code_asm::*;
use iced_x86::{Instruction, MemoryOperand};

use super::*;

const IP: u64 = 0xffff_ffff_8100_1000;
const MIB: u64 = 1 << 20;

/// Assembles at `ip` what `build` emits.
fn asm(ip: u64, build: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a);
    a.assemble(ip).unwrap()
}

/// Emits `mov rax, [rip+..]` reading `target`.
fn rip_load(a: &mut CodeAssembler, target: u64) {
    let mem =
        MemoryOperand::with_base_displ(Register::RIP, i64::from_ne_bytes(target.to_ne_bytes()));
    a.add_instruction(Instruction::with2(Code::Mov_r64_rm64, Register::RAX, mem).unwrap())
        .unwrap();
}

fn refusal(code: &[u8], addr: u64) -> CannotOptimize {
    can_optimize(code, IP, addr).unwrap_err()
}

#[test]
fn entry_of_an_ordinary_function_can_be_optimized() {
    let code = asm(IP, |a| {
        a.push(rbp).unwrap();
        a.mov(rbp, rsp).unwrap();
        rip_load(a, IP + 0x800);
        a.pop(rbp).unwrap();
        a.ret().unwrap();
    });
    let info = can_optimize(&code, IP, IP).unwrap();
    assert_eq!(info.addr, IP);
    let ips: Vec<u64> = info.displaced.iter().map(|i| i.ip).collect();
    // push rbp (1) + mov rbp, rsp (3) + mov rax, [rip+..] (7).
    assert_eq!(ips, [IP, IP + 1, IP + 4]);
    assert_eq!(info.len, 11);
    assert!(info.len >= JUMP_LEN);
}

#[test]
fn call_ret_and_int3_in_the_window_are_refused_naming_the_instruction() {
    let code = asm(IP, |a| {
        a.nop().unwrap();
        a.call(IP + 0x4000).unwrap();
        a.ret().unwrap();
    });
    let e = refusal(&code, IP);
    assert!(
        matches!(e, CannotOptimize::InWindow { what: Unrelocatable::Call, insn_ip, .. } if insn_ip == IP + 1),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.starts_with("call `call 0x"), "{text}");
    assert!(
        text.contains(&format!("at {:#x} (+0x1 in the 5-byte window)", IP + 1)),
        "{text}"
    );
    assert_eq!(e.category(), "call in window");

    let code = asm(IP, |a| {
        a.xor(eax, eax).unwrap();
        a.ret().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
    });
    assert!(matches!(
        refusal(&code, IP),
        CannotOptimize::InWindow {
            what: Unrelocatable::Ret,
            ..
        }
    ));

    let code = asm(IP, |a| {
        a.nop().unwrap();
        a.int3().unwrap();
        a.mov(eax, 1).unwrap();
    });
    assert!(matches!(
        refusal(&code, IP),
        CannotOptimize::InWindow {
            what: Unrelocatable::Int3,
            ..
        }
    ));
    // An int3 at the address itself is no place for any probe.
    assert!(matches!(
        refusal(&code, IP + 1),
        CannotOptimize::Probe(CannotProbe::AlreadyInt3 { .. })
    ));

    let code = asm(IP, |a| {
        a.nop().unwrap();
        a.ud2().unwrap();
        a.mov(eax, 1).unwrap();
    });
    assert!(matches!(
        refusal(&code, IP),
        CannotOptimize::InWindow {
            what: Unrelocatable::Special,
            ..
        }
    ));
}

#[test]
fn jumps_into_the_window_are_refused_but_jumps_to_its_start_are_fine() {
    // Jumps from below into the window, then a jump back to its first byte.
    let build = |a: &mut CodeAssembler, into: bool| {
        let mut top = a.create_label();
        let mut second = a.create_label();
        a.set_label(&mut top).unwrap();
        a.push(rbp).unwrap();
        a.set_label(&mut second).unwrap();
        a.mov(rbp, rsp).unwrap();
        a.mov(eax, 1).unwrap();
        a.dec(edi).unwrap();
        if into {
            a.jne(second).unwrap();
        } else {
            a.jne(top).unwrap();
        }
        a.pop(rbp).unwrap();
        a.ret().unwrap();
    };
    let code = asm(IP, |a| build(a, false));
    assert_eq!(can_optimize(&code, IP, IP).unwrap().len, 9);

    let code = asm(IP, |a| build(a, true));
    let e = refusal(&code, IP);
    assert!(
        matches!(e, CannotOptimize::JumpIntoWindow { target, .. } if target == IP + 1),
        "{e:?}"
    );
    assert!(e.to_string().contains("jumps to"), "{e}");
    // Probing the jne's own instruction is fine: nothing jumps into that window.
    let jne = IP + 1 + 3 + 5 + 2;
    assert_eq!(
        can_optimize(&code, IP, jne).unwrap_err().category(),
        "ret in window"
    );
}

#[test]
fn indirect_jumps_windows_past_the_end_and_mid_instruction_addresses_are_refused() {
    let code = asm(IP, |a| {
        a.push(rbp).unwrap();
        a.mov(rbp, rsp).unwrap();
        a.mov(eax, 1).unwrap();
        a.jmp(rax).unwrap();
    });
    assert!(matches!(
        refusal(&code, IP),
        CannotOptimize::IndirectJumpInFunction { insn_ip, .. } if insn_ip == IP + 9
    ));

    let code = asm(IP, |a| {
        a.nop().unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.xor(eax, eax).unwrap();
    });
    let e = refusal(&code, IP + 2);
    assert!(
        matches!(e, CannotOptimize::PastFunctionEnd { len: 5, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("past the function's end"), "{e}");
    assert!(can_optimize(&code, IP, IP).is_ok());
    assert!(matches!(
        refusal(&code, IP + 4),
        CannotOptimize::Probe(CannotProbe::NotOnBoundary { .. })
    ));
}

fn relocated_insns(r: &Relocated, to: u64) -> Vec<Insn> {
    let mut out = Vec::new();
    let mut ip = to;
    let end = to + r.code.len() as u64;
    while ip < end {
        let i = decode(&r.code[usize::try_from(ip - to).unwrap()..], ip).unwrap();
        ip = i.next_ip();
        out.push(i);
    }
    out
}

#[test]
fn rip_relative_load_still_reads_the_same_address() {
    let data = IP + 0x800;
    let code = asm(IP, |a| {
        a.push(rbp).unwrap();
        rip_load(a, data);
    });
    let to = IP + MIB;
    let r = relocate(&code, IP, to).unwrap();
    let insns = relocated_insns(&r, to);
    assert_eq!(insns.len(), 2);
    assert_eq!(insns[1].kind, InsnKind::RipRelative { target: data });
    assert_eq!(r.map, [(IP, to), (IP + 1, to + 1)]);
}

#[test]
fn short_jump_out_of_the_window_becomes_a_near_jump_to_the_same_target() {
    let target = IP + 0x40;
    let code = asm(IP, |a| {
        a.nop().unwrap();
        a.jne(target).unwrap();
        a.jmp(target).unwrap();
    });
    assert_eq!(code[1], 0x75, "short jne");
    assert_eq!(code[3], 0xeb, "short jmp");
    let to = IP + MIB;
    let r = relocate(&code, IP, to).unwrap();
    let insns = relocated_insns(&r, to);
    assert_eq!(insns[1].kind, InsnKind::RelJcc { target });
    assert_eq!(insns[1].len, 6, "near jne");
    assert_eq!(insns[2].kind, InsnKind::RelJmp { target });
    assert_eq!(insns[2].len, 5, "near jmp");
    assert_eq!(r.code[usize::try_from(insns[2].ip - to).unwrap()], 0xe9);
    assert_eq!(r.map, [(IP, to), (IP + 1, to + 1), (IP + 3, to + 7)]);
}

/// A fuzzer find: a `jrcxz` (short only) whose target is out of reach from the new place is
/// rewritten by the encoder into several instructions, which have no single new address: the
/// map got `to + u32::MAX` for it. Such code is refused.
#[test]
fn code_without_an_address_for_each_instruction_is_refused() {
    let code = [0xe3, 0xe3, 0x90, 0x90, 0x90, 0x90];
    let e = relocate(&code, IP, IP + MIB).unwrap_err();
    assert!(
        matches!(&e, RelocateError::Encode { message, .. } if message.contains("several")),
        "{e:?}"
    );
    // A second find: code placed so that it runs past the top of the address space, where
    // its addresses wrap (the map went u64::MAX, 0, 2).
    let xlat_adds = [0xd7, 0x00, 0x19, 0x00, 0x0f];
    let e = relocate(&xlat_adds, IP, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("past the top"), "{e}");
    assert_eq!(
        relocate(&xlat_adds, IP, u64::MAX - 4).unwrap().code,
        xlat_adds
    );
    // Within reach it stays a jrcxz.
    let near = relocate(&code, IP, IP + 0x10).unwrap();
    assert_eq!(near.map.len(), 5);
    assert!(near.map.windows(2).all(|w| w[0].1 < w[1].1));
}

#[test]
fn relocation_beyond_2_gib_is_refused_unless_nothing_is_relative() {
    let code = asm(IP, |a| {
        a.push(rbp).unwrap();
        rip_load(a, IP + 0x800);
    });
    let to = IP - (3 << 30);
    let e = relocate(&code, IP, to).unwrap_err();
    assert!(
        matches!(e, RelocateError::OutOfRange { insn_ip, target, .. } if insn_ip == IP + 1 && target == IP + 0x800),
        "{e:?}"
    );
    assert!(e.to_string().contains("beyond +/-2 GiB"), "{e}");

    let code = asm(IP, |a| {
        a.jmp(IP + 0x40).unwrap();
    });
    assert!(matches!(
        relocate(&code, IP, IP - (3 << 30)),
        Err(RelocateError::OutOfRange { .. })
    ));

    let code = asm(IP, |a| {
        a.push(rbp).unwrap();
        a.mov(rbp, rsp).unwrap();
    });
    let far = relocate(&code, IP, IP - (3 << 30)).unwrap();
    assert_eq!(far.code, code);

    assert!(matches!(
        relocate(&[0x48, 0x8b], IP, IP + MIB),
        Err(RelocateError::Decode(DecodeError::Truncated { .. }))
    ));
}

#[test]
fn exception_table_entries_in_the_window_refuse_the_jump() {
    // Two entries at 0x2000: insn fields +0x100 and -0x20 from themselves.
    let mut table = Vec::new();
    for (rel, fixup) in [(0x100i32, 0i32), (-0x20 - 12, 0)] {
        table.extend_from_slice(&rel.to_le_bytes());
        table.extend_from_slice(&fixup.to_le_bytes());
        table.extend_from_slice(&0i32.to_le_bytes());
    }
    table.push(0xff); // a trailing partial entry is ignored
    let fixups = crate::ex_table_insns(&table, 0x2000);
    assert_eq!(fixups, [0x2000 - 0x20, 0x2100]);
    // mov rax, rdi ; imul rax, rsi ; ret at 0x20fd: the imul (at 0x2100) has a fixup.
    let code = [0x48, 0x89, 0xf8, 0x48, 0x0f, 0xaf, 0xc6, 0xc3];
    let info = crate::can_optimize(&code, 0x20fd, 0x20fd).unwrap();
    assert_eq!(
        crate::check_fixups(&info, &fixups),
        Err(crate::CannotOptimize::ExceptionFixup {
            addr: 0x20fd,
            insn_ip: 0x2100
        })
    );
    let elsewhere = crate::can_optimize(&code, 0x3000, 0x3000).unwrap();
    assert_eq!(crate::check_fixups(&elsewhere, &fixups), Ok(()));
}
