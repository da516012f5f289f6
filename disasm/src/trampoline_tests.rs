//! Trampoline tests: the code is decoded back and checked instruction by instruction (the
//! end-to-end runs are in vmm/tests/optprobes.rs, on real /dev/kvm).

use crate::{
    CpuSource, Fetch, Gpr, Handler, InsnKind, RingSpec, TrampolineError, TrampolineSpec,
    build_trampoline, decode, jump_patch,
};

/// `mov rax, rdi` ; `imul rax, rsi` ; `ret`: a 7-byte window of plain instructions.
const PLAIN: [u8; 7] = [0x48, 0x89, 0xf8, 0x48, 0x0f, 0xaf, 0xc6];
const SITE: u64 = 0x10_0000;
const SLOT_AT: u64 = 0x40_2000;

fn listing(code: &[u8], at: u64) -> Vec<(u64, String, InsnKind)> {
    let mut out = Vec::new();
    let mut ip = at;
    let end = at + code.len() as u64;
    while ip < end {
        let insn = decode(&code[usize::try_from(ip - at).unwrap()..], ip).unwrap();
        out.push((insn.ip, insn.to_string(), insn.kind));
        ip = insn.next_ip();
    }
    out
}

#[test]
fn exit_trampoline_rings_the_doorbell_then_runs_the_displaced_code_and_jumps_back() {
    let t = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 3,
        site: SITE,
        displaced: &PLAIN,
        handler: Handler::Exit {
            doorbell: 0x40_1000,
        },
        max_len: 256,
    })
    .unwrap();
    let l = listing(&t.code, SLOT_AT);
    assert_eq!(l.len(), 4, "{l:#?}");
    assert_eq!(l[0].2, InsnKind::RipRelative { target: 0x40_1000 });
    assert!(l[0].1.starts_with("mov dword ptr"), "{}", l[0].1);
    assert!(l[0].1.ends_with(", 3"), "{}", l[0].1);
    assert_eq!(l[1].1, "mov rax, rdi");
    assert_eq!(l[2].1, "imul rax, rsi");
    assert_eq!(l[3].2, InsnKind::RelJmp { target: SITE + 7 });
    assert_eq!(t.relocated_at, l[1].0);
    assert_eq!(t.map, vec![(SITE, l[1].0), (SITE + 3, l[2].0)]);
}

#[test]
fn relocated_rip_relative_operands_and_short_jumps_keep_their_targets() {
    // mov rax, [rip+0x1000] (7 bytes) then je +0x20 (2 bytes): a 9-byte window.
    let code = [0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0x74, 0x20];
    let t = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 0,
        site: SITE,
        displaced: &code,
        handler: Handler::Exit {
            doorbell: 0x40_1000,
        },
        max_len: 256,
    })
    .unwrap();
    let l = listing(&t.code, SLOT_AT);
    assert_eq!(
        l[1].2,
        InsnKind::RipRelative {
            target: SITE + 7 + 0x1000
        }
    );
    assert_eq!(
        l[2].2,
        InsnKind::RelJcc {
            target: SITE + 9 + 0x20
        }
    );
    assert_eq!(l[3].2, InsnKind::RelJmp { target: SITE + 9 });
}

#[test]
fn in_guest_trampoline_saves_and_restores_what_it_uses() {
    let ring = RingSpec {
        cpu: CpuSource::Rdtscp,
        rings: 0x40_3000,
        ring_count: 2,
        ring_stride: 0x2_1000,
        capacity: 4096,
        lost: 0x40_2ff8,
        fetches: vec![
            Fetch::Reg(Gpr::Rsp),
            Fetch::Reg(Gpr::Rdi),
            Fetch::Reg(Gpr::Rax),
            Fetch::Rflags,
            Fetch::Mem(0x10_2000),
        ],
    };
    let t = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 9,
        site: SITE,
        displaced: &PLAIN,
        handler: Handler::InGuest(ring),
        max_len: 256,
    })
    .unwrap();
    let l = listing(&t.code, SLOT_AT);
    let text: Vec<&str> = l.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(text[0], "lea rsp, [rsp-0x80]");
    assert_eq!(
        &text[1..6],
        ["pushfq", "push rax", "push rcx", "push rdx", "push rbx"]
    );
    assert!(text.contains(&"rdtscp"));
    assert!(text.iter().any(|t| t.starts_with("lock cmpxchg")));
    assert!(text.iter().any(|t| t.starts_with("lock inc qword ptr")));
    // RSP as the probed code saw it: 128 + 40 bytes above the trampoline's.
    assert!(text.contains(&"lea rax, [rsp+0xa8]"), "{text:#?}");
    // The epilogue restores in reverse, then the displaced code, then the jump back.
    let n = text.len();
    assert_eq!(
        &text[n - 9..n - 1],
        [
            "pop rbx",
            "pop rdx",
            "pop rcx",
            "pop rax",
            "popfq",
            "lea rsp, [rsp+0x80]",
            "mov rax, rdi",
            "imul rax, rsi"
        ]
    );
    assert_eq!(l[n - 1].2, InsnKind::RelJmp { target: SITE + 7 });
    assert!(t.code.len() <= 256);
}

#[test]
fn bad_specs_and_far_slots_are_refused() {
    let ring = |capacity, fetches| RingSpec {
        cpu: CpuSource::SharedRing,
        rings: 0x40_3000,
        ring_count: 1,
        ring_stride: 0x1000,
        capacity,
        lost: 0x40_2ff8,
        fetches,
    };
    let spec = |handler| TrampolineSpec {
        at: SLOT_AT,
        tag: 0,
        site: SITE,
        displaced: &PLAIN,
        handler,
        max_len: 256,
    };
    assert!(matches!(
        build_trampoline(&spec(Handler::InGuest(ring(100, vec![])))),
        Err(TrampolineError::Spec(_))
    ));
    assert!(matches!(
        build_trampoline(&spec(Handler::InGuest(ring(64, vec![Fetch::Rflags; 7])))),
        Err(TrampolineError::Spec(_))
    ));
    let mut tight = spec(Handler::Exit {
        doorbell: 0x40_1000,
    });
    tight.max_len = 8;
    assert!(matches!(
        build_trampoline(&tight),
        Err(TrampolineError::TooLong { max: 8, .. })
    ));
    assert_eq!(
        jump_patch(0x1000, 0x1_0000_1000),
        Err(TrampolineError::OutOfReach {
            from: 0x1000,
            to: 0x1_0000_1000
        })
    );
    assert_eq!(jump_patch(0x1000, 0x1005).unwrap(), [0xe9, 0, 0, 0, 0]);
    assert_eq!(
        jump_patch(0x1000, 0x1000).unwrap(),
        [0xe9, 0xfb, 0xff, 0xff, 0xff]
    );
}

#[test]
fn register_names_round_trip() {
    for name in [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ] {
        let g = Gpr::from_name(name).unwrap();
        assert_eq!(g.name(), name);
        assert_eq!(Gpr::from_iced(g.iced()), Some(g));
    }
    assert_eq!(Gpr::from_name("rflags"), None);
    assert_eq!(Gpr::from_name("RAX"), None);
}

#[test]
fn call_trampoline_saves_every_register_calls_the_handler_with_the_ring_and_restores() {
    let ring = RingSpec {
        cpu: CpuSource::SharedRing,
        rings: 0x50_0000,
        ring_count: 2,
        ring_stride: 0x2_0000,
        capacity: 1024,
        lost: 0x40_3008,
        fetches: Vec::new(),
    };
    let func = 0x60_0040;
    let t = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 9,
        site: SITE,
        displaced: &PLAIN,
        handler: Handler::Call {
            func,
            arg: Some(Gpr::Rsi),
            ring: ring.clone(),
        },
        max_len: 224,
    })
    .unwrap();
    let l = listing(&t.code, SLOT_AT);
    let text: Vec<&str> = l.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(text[0], "lea rsp, [rsp-0x80]");
    assert_eq!(text[1], "pushfq");
    let pushes = text.iter().filter(|t| t.starts_with("push ")).count();
    let pops = text.iter().filter(|t| t.starts_with("pop ")).count();
    assert_eq!((pushes, pops), (15, 15), "{text:#?}");
    assert!(!text.contains(&"push rsp"), "{text:#?}");
    let call = l
        .iter()
        .position(|(_, _, k)| *k == InsnKind::RelCall { target: func })
        .unwrap_or_else(|| panic!("a direct call to the handler: {text:#?}"));
    // Arguments: regs block, tag | rsi's number (6) << 32, rings, geometry, capacity, lost.
    let before = &text[..call];
    for want in [
        "mov rdi, rsp".to_string(),
        format!("mov rsi, {:#x}", 9u64 | 6 << 32),
        "mov rdx, 0x500000".to_string(),
        format!("mov rcx, {:#x}", 2u64 | 0x2_0000 << 32),
        "mov r8, 0x400".to_string(),
        "mov r9, 0x403008".to_string(),
        "and rsp, 0xfffffffffffffff0".to_string(),
    ] {
        assert!(before.contains(&want.as_str()), "{want} in {before:#?}");
    }
    assert_eq!(text[call + 1], "mov rsp, rbp");
    let popfq = text.iter().position(|t| *t == "popfq").unwrap();
    assert_eq!(text[popfq + 1], "lea rsp, [rsp+0x80]");
    assert_eq!(text[popfq + 2], "mov rax, rdi");
    assert_eq!(l.last().unwrap().2, InsnKind::RelJmp { target: SITE + 7 });
    assert!(t.code.len() <= 224, "{} bytes", t.code.len());

    // A handler beyond +/-2 GiB, or rsp as the argument, is refused.
    let far = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 9,
        site: SITE,
        displaced: &PLAIN,
        handler: Handler::Call {
            func: SLOT_AT + (3 << 30),
            arg: None,
            ring: ring.clone(),
        },
        max_len: 224,
    });
    assert!(
        matches!(far, Err(TrampolineError::OutOfReach { .. })),
        "{far:?}"
    );
    let rsp = build_trampoline(&TrampolineSpec {
        at: SLOT_AT,
        tag: 9,
        site: SITE,
        displaced: &PLAIN,
        handler: Handler::Call {
            func,
            arg: Some(Gpr::Rsp),
            ring,
        },
        max_len: 224,
    });
    assert!(matches!(rsp, Err(TrampolineError::Spec(_))), "{rsp:?}");
}
