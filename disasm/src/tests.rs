//! Hand-checked encodings, and functions assembled with iced's `code_asm`.

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;

use super::*;

const IP: u64 = 0xffff_ffff_8100_1000;

fn one(bytes: &[u8]) -> Insn {
    decode(bytes, IP).unwrap()
}

#[test]
fn hand_checked_kinds() {
    // mov rax, [rip+0x10]: 48 8b 05 disp32.
    let i = one(&[0x48, 0x8b, 0x05, 0x10, 0, 0, 0]);
    assert_eq!(i.len, 7);
    assert_eq!(i.next_ip(), IP + 7);
    assert_eq!(
        i.kind,
        InsnKind::RipRelative {
            target: IP + 7 + 0x10
        }
    );
    assert_eq!(i.to_string(), "mov rax, [rip+0x10]");

    assert_eq!(one(&[0xcc]).kind, InsnKind::Int3);
    assert_eq!(one(&[0xcc]).len, 1);
    // call rel32 0x100 past the next instruction.
    assert_eq!(
        one(&[0xe8, 0, 1, 0, 0]).kind,
        InsnKind::RelCall {
            target: IP + 5 + 0x100
        }
    );
    // jmp $ (eb fe) jumps to itself.
    assert_eq!(one(&[0xeb, 0xfe]).kind, InsnKind::RelJmp { target: IP });
    // je -4.
    assert_eq!(
        one(&[0x74, 0xfc]).kind,
        InsnKind::RelJcc { target: IP + 2 - 4 }
    );
    // loop +0 and jrcxz +0 are conditional branches too.
    assert_eq!(one(&[0xe2, 0]).kind, InsnKind::RelJcc { target: IP + 2 });
    assert_eq!(one(&[0xe3, 0]).kind, InsnKind::RelJcc { target: IP + 2 });
    assert_eq!(one(&[0xc3]).kind, InsnKind::Ret);
    assert_eq!(one(&[0xc2, 8, 0]).kind, InsnKind::Ret);
    // call rax, jmp [rip+0]: indirect, even when the memory operand is RIP-relative.
    assert_eq!(one(&[0xff, 0xd0]).kind, InsnKind::IndirectJmpOrCall);
    assert_eq!(
        one(&[0xff, 0x25, 0, 0, 0, 0]).kind,
        InsnKind::IndirectJmpOrCall
    );
    // lea rdi, [rip-0x20] is RIP-relative.
    assert_eq!(
        one(&[0x48, 0x8d, 0x3d, 0xe0, 0xff, 0xff, 0xff]).kind,
        InsnKind::RipRelative {
            target: IP + 7 - 0x20
        }
    );
    // nop, push rbp, mov rbp, rsp.
    for b in [&[0x90][..], &[0x55], &[0x48, 0x89, 0xe5]] {
        assert_eq!(one(b).kind, InsnKind::Other, "{:x?}", b);
    }
}

#[test]
fn hand_checked_special() {
    use SpecialKind::*;
    let cases: [(&[u8], SpecialKind); 10] = [
        (&[0x0f, 0x0b], Undefined),       // ud2
        (&[0xcd, 0x80], Interrupt),       // int 0x80
        (&[0xcd, 0x03], Interrupt),       // int 3 (two bytes): not our 0xCC
        (&[0x9c], Flags),                 // pushfq
        (&[0x9d], Flags),                 // popfq
        (&[0xfb], InterruptShadow),       // sti
        (&[0x8e, 0xd0], InterruptShadow), // mov ss, eax
        (&[0xf4], Halt),                  // hlt
        (&[0x0f, 0x05], FarOrSystem),     // syscall
        (&[0x48, 0xcf], FarOrSystem),     // iretq
    ];
    for (bytes, kind) in cases {
        assert_eq!(one(bytes).kind, InsnKind::Special(kind), "{bytes:x?}");
    }
    assert_eq!(one(&[0xcb]).kind, InsnKind::Special(FarOrSystem)); // retf
}

#[test]
fn decode_errors() {
    // push es does not exist in 64-bit mode.
    assert_eq!(
        decode(&[0x06, 0x90], IP),
        Err(DecodeError::Invalid {
            ip: IP,
            bytes: vec![0x06, 0x90]
        })
    );
    assert_eq!(
        decode(&[0x48, 0x8b], IP),
        Err(DecodeError::Truncated {
            ip: IP,
            available: 2
        })
    );
    assert_eq!(
        decode(&[], IP),
        Err(DecodeError::Truncated {
            ip: IP,
            available: 0
        })
    );
    let e = decode(&[0x06], 0x1000).unwrap_err();
    assert_eq!(e.to_string(), "Invalid instruction at 0x1000 (bytes 06)");
}

/// A small function with every kind of instruction a probe cares about. Returns its bytes
/// and the address of every instruction.
fn function(ip: u64) -> (Vec<u8>, Vec<u64>) {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut data = a.create_label();
    let mut out = a.create_label();
    a.push(rbp).unwrap();
    a.mov(rbp, rsp).unwrap();
    a.mov(rax, qword_ptr(data)).unwrap();
    a.cmp(rax, 0x1234_5678).unwrap();
    a.je(out).unwrap();
    a.call(ip + 0x4000).unwrap();
    a.lea(rdi, ptr(data)).unwrap();
    a.set_label(&mut out).unwrap();
    a.pop(rbp).unwrap();
    a.ret().unwrap();
    a.set_label(&mut data).unwrap();
    a.dq(&[0x1122_3344_5566_7788]).unwrap();
    let r = a
        .assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let starts = r
        .inner
        .new_instruction_offsets
        .iter()
        .map(|&o| ip + u64::from(o))
        .collect();
    (r.inner.code_buffer, starts)
}

#[test]
fn boundaries_match_the_assembler() {
    let (code, starts) = function(IP);
    // The last "instruction" is the data quadword: stop before it.
    let text_end = starts[starts.len() - 1];
    for ip in IP..=text_end {
        assert_eq!(
            boundaries(&code, IP, ip),
            Ok(starts.contains(&ip)),
            "{ip:#x}"
        );
    }
    assert!(matches!(
        boundaries(&code, IP, IP - 1),
        Err(DecodeError::OutOfRange { .. })
    ));
    let end = IP + code.len() as u64;
    assert!(matches!(
        boundaries(&code, IP, end + 1),
        Err(DecodeError::OutOfRange { .. })
    ));
}

#[test]
fn kinds_in_assembled_function() {
    let (code, starts) = function(IP);
    let kinds: Vec<InsnKind> = starts[..starts.len() - 1]
        .iter()
        .map(|&ip| {
            decode(&code[usize::try_from(ip - IP).unwrap()..], ip)
                .unwrap()
                .kind
        })
        .collect();
    let data = starts[starts.len() - 1];
    let out = starts[starts.len() - 3];
    assert_eq!(
        kinds,
        [
            InsnKind::Other,
            InsnKind::Other,
            InsnKind::RipRelative { target: data },
            InsnKind::Other,
            InsnKind::RelJcc { target: out },
            InsnKind::RelCall {
                target: IP + 0x4000
            },
            InsnKind::RipRelative { target: data },
            InsnKind::Other,
            InsnKind::Ret,
        ]
    );
}

#[test]
fn can_probe_says_which_instruction_covers_the_address() {
    let (code, starts) = function(IP);
    // Every instruction start but the data is probeable, and the instruction comes back.
    for &ip in &starts[..starts.len() - 1] {
        let insn = can_probe(&code, IP, ip).unwrap();
        assert_eq!(insn.ip, ip);
    }
    // mov rax, [rip+...] is the third instruction (after push rbp, mov rbp, rsp: 1 + 3 bytes).
    let mov = starts[2];
    assert_eq!(mov, IP + 4);
    let err = can_probe(&code, IP, mov + 3).unwrap_err();
    let CannotProbe::NotOnBoundary {
        addr,
        insn_ip,
        insn_len,
        ref insn_text,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((addr, insn_ip, insn_len), (mov + 3, mov, 7));
    assert!(insn_text.starts_with("mov rax, [rip+0x"), "{insn_text}");
    assert_eq!(
        err.to_string(),
        format!("{:#x}: inside `{insn_text}` at {mov:#x} (7 bytes)", mov + 3)
    );
}

#[test]
fn can_probe_refuses_int3_and_undecodable_code() {
    // nop; int3; nop
    let code = [0x90, 0xcc, 0x90];
    assert_eq!(
        can_probe(&code, 0x1000, 0x1001),
        Err(CannotProbe::AlreadyInt3 { addr: 0x1001 })
    );
    assert_eq!(can_probe(&code, 0x1000, 0x1002).unwrap().len, 1);
    // nop; (invalid) 06; nop: probing past the invalid byte cannot be checked.
    let code = [0x90, 0x06, 0x90];
    assert_eq!(
        can_probe(&code, 0x1000, 0x1002),
        Err(CannotProbe::Decode(DecodeError::Invalid {
            ip: 0x1001,
            bytes: vec![0x06, 0x90]
        }))
    );
    // The code must hold the whole instruction at the address.
    let code = [0x90, 0x48, 0x8b];
    assert_eq!(
        can_probe(&code, 0x1000, 0x1001),
        Err(CannotProbe::Decode(DecodeError::Truncated {
            ip: 0x1001,
            available: 2
        }))
    );
}

#[test]
fn emulation_of_entry_instructions() {
    use Emulation::*;
    let cases: &[(&[u8], Option<Emulation>)] = &[
        (&[0x90], Some(Nop)),
        (&[0x66, 0x90], Some(Nop)),
        (&[0x48, 0x90], Some(Nop)),
        (&[0x0f, 0x1f, 0x00], Some(Nop)),
        (&[0x0f, 0x1f, 0x40, 0x00], Some(Nop)),
        (&[0x0f, 0x1f, 0x44, 0x00, 0x00], Some(Nop)),
        (&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], Some(Nop)),
        (&[0x0f, 0x1f, 0x80, 0, 0, 0, 0], Some(Nop)),
        (&[0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], Some(Nop)),
        (&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], Some(Nop)),
        (&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], Some(Nop)),
        (&[0xf3, 0x0f, 0x1e, 0xfa], Some(Nop)),
        (&[0x55], Some(Push(Gpr::Rbp))),
        (&[0x50], Some(Push(Gpr::Rax))),
        (&[0x54], Some(Push(Gpr::Rsp))),
        (&[0x41, 0x54], Some(Push(Gpr::R12))),
        (&[0x41, 0x57], Some(Push(Gpr::R15))),
        (
            &[0x48, 0x89, 0xe5],
            Some(MovReg {
                dst: Gpr::Rbp,
                src: Gpr::Rsp,
            }),
        ),
        (
            &[0x48, 0x8b, 0xec],
            Some(MovReg {
                dst: Gpr::Rbp,
                src: Gpr::Rsp,
            }),
        ),
        (
            &[0x4c, 0x89, 0xc7],
            Some(MovReg {
                dst: Gpr::Rdi,
                src: Gpr::R8,
            }),
        ),
        // Not emulated: xchg r8d, eax (41 90), pause, the reserved nops 0f 1f /1, a 16-bit
        // push, push imm, pushf, mov ebp, esp, mov from memory, call, ret, int3.
        (&[0x41, 0x90], None),
        (&[0xf3, 0x90], None),
        (&[0x0f, 0x1f, 0x48, 0x00], None),
        (&[0x66, 0x55], None),
        (&[0x6a, 0x01], None),
        (&[0x9c], None),
        (&[0x89, 0xe5], None),
        (&[0x48, 0x8b, 0x45, 0x00], None),
        (&[0x48, 0x89, 0x45, 0x00], None),
        (&[0xe8, 0, 0, 0, 0], None),
        (&[0xc3], None),
        (&[0xcc], None),
        (&[0xf3, 0x0f, 0x1e, 0xfb], None),
    ];
    for (bytes, want) in cases {
        let insn = one(bytes);
        assert_eq!(insn.len, bytes.len(), "{bytes:02x?}");
        assert_eq!(insn.emulation(), *want, "{bytes:02x?}: {insn}");
    }
}
