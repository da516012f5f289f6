//! Slot manager, DR7 / DR6 and stepper tests, against hand-computed SDM constants and a mock
//! vCPU that interprets the debug registers (data watchpoints never fire on our software KVM).

use super::mock::{Call, DR6_ACTIVE_LOW, INSN_LEN, MockTarget, MockVcpu};
use super::*;
use crate::target::{GuestDebug, RFLAGS_RF, Regs};
use BreakpointKind::{Execute, ReadWrite, Write};
use BreakpointLen::{Eight, Four, One, Two};

fn exec(addr: u64, owner: &str) -> Request {
    Request::execute(Gva(addr), owner)
}

fn watch(addr: u64, kind: BreakpointKind, len: BreakpointLen, owner: &str) -> Request {
    Request::watch(Gva(addr), kind, len, owner)
}

// ---- DR7 encoding (Intel SDM vol. 3, 18.2.4: Ln = bit 2n, R/Wn = bits 16+4n, LENn = bits
// 18+4n; R/W 00 execute, 01 write, 11 read/write; LEN 00 = 1, 01 = 2, 11 = 4, 10 = 8) ----

#[test]
fn dr7_bits_match_the_sdm() {
    // Slot 0, execute, 1 byte: L0 only.
    assert_eq!(dr7_slot_bits(0, Execute, One), 0x0000_0001);
    // Slot 0, write 8: L0 | R/W0=01 (bit 16) | LEN0=10 (bit 19).
    assert_eq!(dr7_slot_bits(0, Write, Eight), 0x0009_0001);
    // Slot 0, read/write 1: L0 | R/W0=11 (bits 16-17).
    assert_eq!(dr7_slot_bits(0, ReadWrite, One), 0x0003_0001);
    // Slot 1, write 4: L1 (bit 2) | R/W1=01 (bit 20) | LEN1=11 (bits 22-23).
    assert_eq!(dr7_slot_bits(1, Write, Four), 0x00d0_0004);
    // Slot 1, execute: L1 only.
    assert_eq!(dr7_slot_bits(1, Execute, One), 0x0000_0004);
    // Slot 2, read/write 8: L2 (bit 4) | R/W2=11 (bits 24-25) | LEN2=10 (bit 27).
    assert_eq!(dr7_slot_bits(2, ReadWrite, Eight), 0x0b00_0010);
    // Slot 2, write 2: L2 | R/W2=01 (bit 24) | LEN2=01 (bit 26).
    assert_eq!(dr7_slot_bits(2, Write, Two), 0x0500_0010);
    // Slot 3, write 2: L3 (bit 6) | R/W3=01 (bit 28) | LEN3=01 (bit 30).
    assert_eq!(dr7_slot_bits(3, Write, Two), 0x5000_0040);
    // Slot 3, read/write 4: L3 | R/W3=11 (bits 28-29) | LEN3=11 (bits 30-31).
    assert_eq!(dr7_slot_bits(3, ReadWrite, Four), 0xf000_0040);
    // Slot 3, execute: L3 only.
    assert_eq!(dr7_slot_bits(3, Execute, One), 0x0000_0040);
    assert_eq!(DR7_FIXED_1, 0x400);
}

#[test]
fn debug_state_encodes_every_slot_and_keeps_base() {
    let mut m = SlotManager::new();
    let base = GuestDebug {
        single_step: true,
        intercept_int3: true,
        hw_breakpoints: false,
        dr: [0xdead; 4],
        dr7: 0xffff,
    };
    let empty = m.debug_state(base);
    assert_eq!(
        empty,
        GuestDebug {
            single_step: true,
            intercept_int3: true,
            hw_breakpoints: false,
            dr: [0; 4],
            dr7: 0x400,
        }
    );

    m.insert(exec(0xffff_ffff_8100_0000, "--hbreak start_kernel"))
        .unwrap();
    m.insert(watch(0x2000, Write, Four, "--watch a")).unwrap();
    m.insert(watch(0x3000, ReadWrite, Eight, "--watch b").pinned())
        .unwrap();
    m.insert(watch(0x4002, Write, Two, "--watch c")).unwrap();
    let d = m.debug_state(base);
    assert!(d.hw_breakpoints && d.single_step && d.intercept_int3);
    assert_eq!(d.dr, [0xffff_ffff_8100_0000, 0x2000, 0x3000, 0x4002]);
    assert_eq!(d.dr7, 0x400 | 0x1 | 0x00d0_0004 | 0x0b00_0010 | 0x5000_0040);
    assert_eq!(d.dr7, 0x5bd0_0455);
}

// ---- validation ----

#[test]
fn validation_errors_say_what_to_do() {
    let mut m = SlotManager::new();
    let e = m
        .insert(Request::new(Gva(0x1000), Execute, Four, "--hbreak f"))
        .unwrap_err();
    assert_eq!(
        e,
        HwbpError::ExecuteLength {
            owner: "--hbreak f".into(),
            len: 4
        }
    );
    assert!(e.to_string().contains("covers 1 byte"), "{e}");

    let e = m
        .insert(watch(0x1002, Write, Four, "--watch x"))
        .unwrap_err();
    assert_eq!(
        e,
        HwbpError::Misaligned {
            owner: "--watch x".into(),
            addr: Gva(0x1002),
            len: 4,
            aligned_down: Gva(0x1000)
        }
    );
    assert_eq!(
        e.to_string(),
        "--watch x: a 4-byte watchpoint needs a 4-byte aligned address (address % 4 == 0), \
         and 0x1002 is not; watch 0x1000 or use a shorter length"
    );
    assert!(matches!(
        m.insert(watch(0x1004, ReadWrite, Eight, "w")),
        Err(HwbpError::Misaligned { len: 8, .. })
    ));
    assert!(matches!(
        m.insert(watch(0x1001, Write, Two, "w")),
        Err(HwbpError::Misaligned { len: 2, .. })
    ));
    // Execute breakpoints and 1-byte watches need no alignment.
    for (addr, kind, len) in [
        (0x1003, Execute, One),
        (0x1003, Write, One),
        (0x1002, Write, Two),
        (0x1004, ReadWrite, Four),
        (0x1008, ReadWrite, Eight),
    ] {
        m.validate(&Request::new(Gva(addr), kind, len, "ok"))
            .unwrap();
    }

    // Canonical in 57 bits but not in 48: accepted unless the guest has 4-level paging.
    let half = exec(0x0000_8000_0000_0000, "--hbreak h");
    m.validate(&half).unwrap();
    m.set_la57(false);
    assert_eq!(
        m.validate(&half),
        Err(HwbpError::NonCanonical {
            owner: "--hbreak h".into(),
            addr: Gva(0x0000_8000_0000_0000)
        })
    );
    m.set_la57(true);
    let e = m
        .insert(exec(0x0100_0000_0000_0000, "--hbreak x"))
        .unwrap_err();
    assert!(matches!(e, HwbpError::NonCanonical { .. }));
    assert!(e.to_string().contains("not a canonical address"));

    assert_eq!(
        BreakpointLen::from_bytes(3),
        Err(HwbpError::BadLength { len: 3 })
    );
    assert_eq!(BreakpointLen::try_from(8), Ok(Eight));
    assert_eq!(
        HwbpError::BadLength { len: 16 }.to_string(),
        "Debug registers watch 1, 2, 4 or 8 bytes, not 16"
    );
    // Nothing was registered by the failures.
    assert!(m.is_empty());
    assert_eq!(m.installed(), [None; 4]);
}

// ---- pinned and flexible ----

#[test]
fn fifth_pinned_is_refused_naming_the_holders() {
    let mut m = SlotManager::new();
    let owners = ["--hbreak a", "--watch b", "--hbreak c", "--watch d"];
    let ids: Vec<_> = owners
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let addr = 0x1000 * (i as u64 + 1);
            let req = if o.starts_with("--watch") {
                watch(addr, Write, Eight, o)
            } else {
                exec(addr, o)
            };
            m.insert(req.pinned()).unwrap()
        })
        .collect();
    assert_eq!(
        m.installed(),
        [Some(ids[0]), Some(ids[1]), Some(ids[2]), Some(ids[3])]
    );
    let e = m.insert(exec(0x9000, "--hbreak e").pinned()).unwrap_err();
    assert_eq!(
        e,
        HwbpError::NoSlot {
            held_by: owners.iter().map(|o| o.to_string()).collect()
        }
    );
    assert_eq!(
        e.to_string(),
        "No debug register slot free: held by --hbreak a, --watch b, --hbreak c, --watch d"
    );
    assert_eq!(m.len(), 4);
    // A flexible one is accepted and waits.
    let f = m.insert(exec(0x9000, "--hbreak f")).unwrap();
    assert_eq!(m.slot_of(f), None);
    assert_eq!(m.waiting().collect::<Vec<_>>(), [f]);
    assert!(!m.rotate(), "no slot for flexible ones to share");
    // Removing a pinned one installs it.
    m.remove(ids[2]).unwrap();
    assert_eq!(m.slot_of(f), Some(2));
    assert_eq!(m.waiting().count(), 0);
}

#[test]
fn pinned_evicts_a_flexible_one_which_waits() {
    let mut m = SlotManager::new();
    let p: Vec<_> = (0..3)
        .map(|i| m.insert(exec(0x1000 + i, "p").pinned()).unwrap())
        .collect();
    let flex = m.insert(exec(0x2000, "flex")).unwrap();
    assert_eq!(m.slot_of(flex), Some(3));
    let p4 = m.insert(exec(0x3000, "p4").pinned()).unwrap();
    assert_eq!(m.slot_of(p4), Some(3));
    assert_eq!(m.slot_of(flex), None);
    assert_eq!(m.get(flex).unwrap().owner, "flex", "still registered");
    assert_eq!(m.waiting().collect::<Vec<_>>(), [flex]);
    m.remove(p[0]).unwrap();
    assert_eq!(m.slot_of(flex), Some(0));
    // Ids are stable and never reused.
    let again = m.insert(exec(0x4000, "again")).unwrap();
    assert!(again.raw() > p4.raw());
    assert_eq!(m.iter().count(), 5);
}

#[test]
fn flexible_ones_wait_and_removal_promotes_the_next() {
    let mut m = SlotManager::new();
    let ids: Vec<_> = (0..6)
        .map(|i| {
            m.insert(watch(
                0x1000 + 8 * i,
                Write,
                Eight,
                &format!("--watch w{i}"),
            ))
            .unwrap()
        })
        .collect();
    assert_eq!(
        m.installed(),
        [Some(ids[0]), Some(ids[1]), Some(ids[2]), Some(ids[3])]
    );
    assert_eq!(m.waiting().collect::<Vec<_>>(), [ids[4], ids[5]]);
    // Only installed ones are in the debug state.
    assert_eq!(m.debug_state(GuestDebug::default()).dr[1], 0x1008);

    let removed = m.remove(ids[1]).unwrap();
    assert_eq!(removed.owner, "--watch w1");
    assert_eq!(
        m.slot_of(ids[4]),
        Some(1),
        "the first waiting one takes the slot"
    );
    assert_eq!(m.debug_state(GuestDebug::default()).dr[1], 0x1020);
    // Removing a waiting one takes it out of the line.
    m.remove(ids[5]).unwrap();
    assert_eq!(m.waiting().count(), 0);
    assert_eq!(m.remove(ids[5]), Err(HwbpError::UnknownId(ids[5])));
    assert_eq!(
        HwbpError::UnknownId(ids[5]).to_string(),
        format!("No hardware breakpoint has id hwbp#{}", ids[5].raw())
    );
    m.remove(ids[0]).unwrap();
    assert_eq!(m.installed()[0], None);
    assert_eq!(
        m.debug_state(GuestDebug::default()).dr7 & 0b11,
        0,
        "L0 cleared"
    );
}

#[test]
fn rotation_is_round_robin_and_fair() {
    let mut m = SlotManager::new();
    let pinned = m.insert(exec(0x100, "--hbreak pinned").pinned()).unwrap();
    let flex: Vec<_> = (0..7)
        .map(|i| m.insert(exec(0x1000 + i, &format!("f{i}"))).unwrap())
        .collect();
    // 7 flexible ones share 3 slots: everyone is installed within ceil(7/3) = 3 states.
    let mut seen = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeMap::new();
    for round in 0..7 {
        let installed = m.installed();
        assert_eq!(installed[0], Some(pinned), "the pinned one never moves");
        for id in installed.iter().flatten().filter(|&&id| id != pinned) {
            if round < 3 {
                seen.insert(*id);
            }
            *counts.entry(*id).or_insert(0) += 1;
        }
        assert_eq!(installed.iter().flatten().count(), 4, "no slot left idle");
        assert!(m.rotate(), "round {round}: the installed set changes");
    }
    assert_eq!(
        seen.len(),
        7,
        "every flexible request installed within 3 states"
    );
    // Over 7 rotations each is installed exactly 3 times (3 slots x 7 states / 7 requests).
    assert_eq!(counts.len(), 7);
    assert!(counts.values().all(|&c| c == 3), "{counts:?}");
    assert!(flex.iter().all(|id| counts.contains_key(id)));
}

#[test]
fn rotation_keeps_slots_of_those_staying_installed() {
    let mut m = SlotManager::new();
    let ids: Vec<_> = (0..5)
        .map(|i| m.insert(exec(0x1000 + i, "f")).unwrap())
        .collect();
    assert_eq!(
        m.installed(),
        [Some(ids[0]), Some(ids[1]), Some(ids[2]), Some(ids[3])]
    );
    assert!(m.rotate());
    // The line was [4, 0, 1, 2, 3]: 4 comes in, 3 goes out, 0-2 stay where they were.
    assert_eq!(
        m.installed(),
        [Some(ids[0]), Some(ids[1]), Some(ids[2]), Some(ids[4])]
    );
    assert_eq!(m.waiting().collect::<Vec<_>>(), [ids[3]]);
    // Nothing waiting: nothing to rotate.
    m.remove(ids[3]).unwrap();
    let before = m.installed();
    assert!(!m.rotate());
    assert_eq!(m.installed(), before);
}

#[test]
fn modify_keeps_slot_and_id_and_changes_nothing_on_error() {
    let mut m = SlotManager::new();
    let a = m.insert(exec(0x1000, "--hbreak a").pinned()).unwrap();
    let b = m
        .insert(watch(0x2000, Write, Four, "--watch b").pinned())
        .unwrap();
    let c = m.insert(exec(0x3000, "--hbreak c").pinned()).unwrap();
    let d = m.insert(exec(0x4000, "--hbreak d")).unwrap();
    let w = m.insert(exec(0x5000, "--hbreak w")).unwrap();
    assert_eq!(m.slot_of(b), Some(1));

    // Even with every slot taken, b moves to a new address and kind in its own slot.
    let old = m
        .modify(b, watch(0x6000, ReadWrite, Eight, "--watch b").pinned())
        .unwrap();
    assert_eq!(old.addr, Gva(0x2000));
    assert_eq!(m.slot_of(b), Some(1));
    assert_eq!(m.installed(), [Some(a), Some(b), Some(c), Some(d)]);
    let s = m.debug_state(GuestDebug::default());
    assert_eq!(s.dr[1], 0x6000);
    assert_eq!(
        s.dr7,
        0x400 | 0x1 | dr7_slot_bits(1, ReadWrite, Eight) | 0x10 | 0x40
    );

    // An invalid new request changes nothing.
    let before = m.clone();
    let e = m
        .modify(b, watch(0x6004, Write, Eight, "--watch b").pinned())
        .unwrap_err();
    assert!(matches!(e, HwbpError::Misaligned { .. }));
    assert_eq!(m.get(b).unwrap().addr, Gva(0x6000));
    assert_eq!(m.installed(), before.installed());
    assert_eq!(
        m.modify(BreakpointId(999), exec(0, "x")),
        Err(HwbpError::UnknownId(BreakpointId(999)))
    );

    // A waiting flexible one made pinned evicts the flexible d...
    m.modify(w, exec(0x5000, "--hbreak w").pinned()).unwrap();
    assert_eq!(m.slot_of(w), Some(3));
    assert_eq!(m.waiting().collect::<Vec<_>>(), [d]);
    // ...and d, made pinned now that all four are pinned, is refused, still waiting.
    let e = m
        .modify(d, exec(0x4000, "--hbreak d").pinned())
        .unwrap_err();
    assert_eq!(
        e,
        HwbpError::NoSlot {
            held_by: vec![
                "--hbreak a".into(),
                "--watch b".into(),
                "--hbreak c".into(),
                "--hbreak w".into()
            ]
        }
    );
    assert!(!m.get(d).unwrap().pinned);
    assert_eq!(m.waiting().collect::<Vec<_>>(), [d]);

    // A pinned one made flexible keeps its slot until rotation shares it.
    m.modify(c, exec(0x3000, "--hbreak c")).unwrap();
    assert_eq!(m.slot_of(c), Some(2));
    assert!(m.rotate());
    assert_eq!(m.slot_of(d), Some(2));
    assert_eq!(m.slot_of(c), None);
}

// ---- DR6 ----

#[test]
fn dr6_decoding() {
    assert_eq!(decode_dr6(0), Dr6Hits::default());
    // KVM reports the active-low bits as 1: they are not hits.
    assert_eq!(decode_dr6(DR6_ACTIVE_LOW), Dr6Hits::default());
    assert_eq!(
        decode_dr6(DR6_ACTIVE_LOW | 0x1),
        Dr6Hits {
            slots: vec![0],
            single_step: false
        }
    );
    assert_eq!(
        decode_dr6(DR6_ACTIVE_LOW | DR6_BS),
        Dr6Hits {
            slots: vec![],
            single_step: true
        }
    );
    let several = decode_dr6(DR6_ACTIVE_LOW | DR6_BS | 0b1011);
    assert_eq!(
        several,
        Dr6Hits {
            slots: vec![0, 1, 3],
            single_step: true
        }
    );
    assert_eq!(several.mask(), 0b1011);
    assert_eq!(decode_dr6(0x4000), decode_dr6(DR6_ACTIVE_LOW | DR6_BS));

    let mut m = SlotManager::new();
    let a = m.insert(exec(0x1000, "a")).unwrap();
    let b = m.insert(watch(0x2000, Write, Eight, "b")).unwrap();
    let c = m.insert(watch(0x2008, ReadWrite, Eight, "c")).unwrap();
    assert_eq!(m.hit_breakpoints(DR6_ACTIVE_LOW | 0b0110), [b, c]);
    assert_eq!(m.hit_breakpoints(0b0001 | DR6_BS), [a]);
    // Slot 3 holds nothing: its bit maps to no breakpoint.
    assert_eq!(m.hit_breakpoints(0b1000), []);
}

// ---- applying to every vCPU and dispatching hits ----

#[test]
fn apply_all_sets_every_vcpu_and_reports_failures() {
    let t = MockTarget::new(3);
    let mut m = SlotManager::new();
    m.insert(watch(0x2000, Write, Eight, "w")).unwrap();
    let base = GuestDebug {
        intercept_int3: true,
        ..GuestDebug::default()
    };
    m.apply_all(&t, base).unwrap();
    for v in &t.vcpus {
        let v = v.lock().unwrap();
        assert_eq!(v.take_calls(), [Call::SetDebug(m.debug_state(base))]);
    }
    // A failing vCPU does not keep the others from getting the state.
    t.vcpus[1].lock().unwrap().fail_set_debug = true;
    m.insert(exec(0x1000, "x")).unwrap();
    let e = m.apply_all(&t, base).unwrap_err();
    assert!(matches!(e, crate::target::TargetError::Vm { .. }));
    assert_eq!(t.vcpus[2].lock().unwrap().debug, m.debug_state(base));
    // After a reset a vCPU gets the state again on its own.
    let mut v = MockVcpu::new(7);
    m.apply_to(&mut v, base).unwrap();
    assert_eq!(v.debug, m.debug_state(base));
}

#[test]
fn data_watchpoint_hits_dispatch_to_their_ids() {
    let t = MockTarget::new(2);
    let mut m = SlotManager::new();
    let x = m.insert(exec(0x1000, "--hbreak f")).unwrap();
    let w8 = m
        .insert(watch(0x2000, Write, Eight, "--watch a:8:w"))
        .unwrap();
    let rw4 = m
        .insert(watch(0x2004, ReadWrite, Four, "--watch b:4:rw"))
        .unwrap();
    let w2 = m
        .insert(watch(0x3002, Write, Two, "--watch c:2:w"))
        .unwrap();
    m.apply_all(&t, GuestDebug::default()).unwrap();

    let mut v = t.vcpus[1].lock().unwrap();
    v.take_calls();
    // What the mock CPU reports, from DR0-DR3 / DR7 as set.
    assert_eq!(
        v.data_bits(0x2000, 4, true),
        0b0010,
        "write to the low half: w8"
    );
    assert_eq!(v.data_bits(0x2006, 1, false), 0b0100, "read: rw4 only");
    assert_eq!(v.data_bits(0x2000, 8, true), 0b0110, "both at once");
    assert_eq!(v.data_bits(0x3000, 2, true), 0, "next to c");
    assert_eq!(v.data_bits(0x3003, 1, true), 0b1000);
    assert_eq!(
        v.data_bits(0x3002, 2, false),
        0,
        "a read does not fire a write watch"
    );

    // A guest instruction at 0x1010 writes 8 bytes at 0x2000: a trap after it.
    v.regs.rip = 0x1004;
    v.end = 0x1100;
    v.writes.insert(0x1010, (0x2000, 8));
    let (dr6, rip) = v.run().unwrap();
    assert_eq!(rip, 0x1010 + INSN_LEN);
    let mut s = ExecStepper::new();
    let out = s
        .on_debug_exit(&mut *v, &m, GuestDebug::default(), dr6, rip)
        .unwrap();
    assert_eq!(out.hits, [w8, rw4]);
    assert!(!out.step_over_done && !out.single_step && !out.stepping);
    assert_eq!(v.take_calls(), [], "a data hit needs no help to continue");
    assert_eq!(v.run(), None);
    assert_eq!(m.hit_breakpoints(DR6_ACTIVE_LOW | 0b1000), [w2]);
    assert_ne!(x, w2);
}

/// The program: 0x1000..0x1010, an execute breakpoint on 0x1008.
fn exec_setup(honours_rf: bool) -> (SlotManager, BreakpointId, MockVcpu, GuestDebug) {
    let mut m = SlotManager::new();
    let id = m.insert(exec(0x1008, "--hbreak f")).unwrap();
    let base = GuestDebug {
        intercept_int3: true,
        ..GuestDebug::default()
    };
    let mut v = MockVcpu::new(0);
    v.honours_rf = honours_rf;
    v.regs.rip = 0x1000;
    v.end = 0x1010;
    m.apply_to(&mut v, base).unwrap();
    v.take_calls();
    (m, id, v, base)
}

#[test]
fn resume_flag_mode_one_exit_per_hit() {
    let (m, id, mut v, base) = exec_setup(true);
    let mut s = ExecStepper::new();
    for _ in 0..3 {
        v.regs.rip = 0x1000;
        let (dr6, rip) = v.run().unwrap();
        assert_eq!((dr6, rip), (DR6_ACTIVE_LOW | 1, 0x1008));
        let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
        assert_eq!(out.hits, [id]);
        assert!(!out.switched_mode && !out.stepping && !out.step_over_done);
        let mut with_rf = v.regs;
        assert_ne!(with_rf.rflags & RFLAGS_RF, 0);
        with_rf.rip = 0x1008;
        assert_eq!(v.take_calls(), [Call::Regs, Call::SetRegs(with_rf)]);
        // The CPU honours RF: the breakpoint is passed with no further exit.
        assert_eq!(v.run(), None);
        assert_eq!(v.regs.rflags & RFLAGS_RF, 0);
    }
    assert_eq!(s.mode(), StepMode::ResumeFlag);
}

#[test]
fn ignored_resume_flag_falls_back_to_disable_and_step() {
    // Whether the emulator leaves the ignored RF set or clears it, the fallback happens.
    for clears_ignored_rf in [false, true] {
        ignored_resume_flag(clears_ignored_rf);
    }
}

fn ignored_resume_flag(clears_ignored_rf: bool) {
    let (m, id, mut v, base) = exec_setup(false);
    v.clears_ignored_rf = clears_ignored_rf;
    let full = m.debug_state(base);
    let mut disabled = full;
    disabled.dr7 &= !1;
    disabled.single_step = true;
    let mut s = ExecStepper::new();

    // First hit: RF is tried.
    let (dr6, rip) = v.run().unwrap();
    let at_hit = v.regs;
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert_eq!(out.hits, [id]);
    let with_rf = Regs {
        rflags: at_hit.rflags | RFLAGS_RF,
        ..at_hit
    };
    assert_eq!(v.take_calls(), [Call::Regs, Call::SetRegs(with_rf)]);

    // The same slot at the same RIP again, nothing ran: RF was ignored. Not a second hit; RF
    // is cleared, the slot disabled on this vCPU and one instruction single-stepped.
    let (dr6, rip) = v.run().unwrap();
    assert_eq!((dr6, rip), (DR6_ACTIVE_LOW | 1, 0x1008));
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert_eq!(
        out,
        StepOutcome {
            hits: vec![],
            step_over_done: false,
            single_step: false,
            switched_mode: true,
            stepping: true,
        }
    );
    assert_eq!(s.mode(), StepMode::DisableAndStep);
    let expected: Vec<Call> = if clears_ignored_rf {
        vec![Call::Regs, Call::SetDebug(disabled)]
    } else {
        vec![Call::Regs, Call::SetRegs(at_hit), Call::SetDebug(disabled)]
    };
    assert_eq!(v.take_calls(), expected);
    assert_eq!(v.regs.rflags & RFLAGS_RF, 0);

    // The step completes: the slot is re-enabled, nothing is reported as a hit.
    let (dr6, rip) = v.run().unwrap();
    assert_eq!((dr6, rip), (DR6_ACTIVE_LOW | DR6_BS, 0x100c));
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert_eq!(
        out,
        StepOutcome {
            step_over_done: true,
            ..StepOutcome::default()
        }
    );
    assert_eq!(v.take_calls(), [Call::SetDebug(full)]);
    assert_eq!(v.run(), None);

    // From now on: two exits per hit, no register access, the mode change reported once.
    for _ in 0..2 {
        v.regs.rip = 0x1000;
        let (dr6, rip) = v.run().unwrap();
        let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
        assert_eq!(out.hits, [id]);
        assert!(!out.switched_mode && out.stepping);
        assert_eq!(v.take_calls(), [Call::SetDebug(disabled)]);
        let (dr6, rip) = v.run().unwrap();
        let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
        assert!(out.step_over_done && out.hits.is_empty() && !out.switched_mode);
        assert_eq!(v.take_calls(), [Call::SetDebug(full)]);
        assert_eq!(v.run(), None);
    }
}

#[test]
fn same_breakpoint_again_after_real_progress_is_a_hit() {
    // RF honoured; the guest loops back to the breakpoint with no other debug exit between:
    // the registers changed, so it is a new hit and RF mode stays.
    let (m, id, mut v, base) = exec_setup(true);
    let mut s = ExecStepper::new();
    let (dr6, rip) = v.run().unwrap();
    s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    v.take_calls();
    v.regs.rip = 0x1000;
    let (dr6, rip) = v.run().unwrap();
    let r = v.regs;
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert_eq!(out.hits, [id]);
    assert!(!out.switched_mode);
    // The registers read for the check are reused to set RF: still one read per hit.
    let with_rf = Regs {
        rflags: r.rflags | RFLAGS_RF,
        ..r
    };
    assert_eq!(v.take_calls(), [Call::Regs, Call::SetRegs(with_rf)]);
    assert_eq!(s.mode(), StepMode::ResumeFlag);
}

#[test]
fn a_data_hit_during_the_step_is_reported_with_it() {
    let mut m = SlotManager::new();
    let x = m.insert(exec(0x1008, "--hbreak f")).unwrap();
    let w = m.insert(watch(0x2000, Write, Eight, "--watch v")).unwrap();
    let base = GuestDebug::default();
    let mut v = MockVcpu::new(0);
    v.regs.rip = 0x1000;
    v.end = 0x1010;
    v.writes.insert(0x1008, (0x2000, 8));
    m.apply_to(&mut v, base).unwrap();
    let mut s = ExecStepper::with_mode(StepMode::DisableAndStep);

    let (dr6, rip) = v.run().unwrap();
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert_eq!(out.hits, [x]);
    assert!(s.is_stepping());
    // The stepped instruction writes the watched variable: BS and B1 on one exit.
    let (dr6, rip) = v.run().unwrap();
    assert_eq!(dr6, DR6_ACTIVE_LOW | DR6_BS | 0b10);
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert!(out.step_over_done);
    assert_eq!(out.hits, [w]);
    assert!(!s.is_stepping());
    assert_eq!(v.debug, m.debug_state(base));
}

#[test]
fn callers_own_single_step_is_told_apart() {
    let (m, _, mut v, _) = exec_setup(true);
    let base = GuestDebug {
        single_step: true,
        ..GuestDebug::default()
    };
    m.apply_to(&mut v, base).unwrap();
    v.take_calls();
    let mut s = ExecStepper::new();
    let (dr6, rip) = v.run().unwrap();
    assert_eq!(rip, 0x1004);
    let out = s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    assert!(out.single_step && out.hits.is_empty() && !out.step_over_done);
    assert_eq!(v.take_calls(), []);
}

#[test]
fn an_unexpected_exit_mid_step_re_enables_the_slot() {
    let (m, id, mut v, base) = exec_setup(false);
    let mut s = ExecStepper::with_mode(StepMode::DisableAndStep);
    let (dr6, rip) = v.run().unwrap();
    s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap();
    v.take_calls();
    // Some other debug exit (no BS) arrives before the step completes.
    let out = s
        .on_debug_exit(&mut v, &m, base, DR6_ACTIVE_LOW, 0x1004)
        .unwrap();
    assert!(out.hits.is_empty() && !out.step_over_done);
    assert_eq!(v.take_calls(), [Call::SetDebug(m.debug_state(base))]);
    assert!(!s.is_stepping());
    // reset() forgets a step under way after a vCPU reset.
    v.regs.rip = 0x1000;
    let (dr6, rip) = v.run().unwrap();
    assert_eq!(
        s.on_debug_exit(&mut v, &m, base, dr6, rip).unwrap().hits,
        [id]
    );
    s.reset();
    assert!(!s.is_stepping());
}
