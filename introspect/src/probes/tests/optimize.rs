//! The optimizer against the mock VM: jump patching, quiescence, unoptimize, dirty slots,
//! neighbours and reservations. (Real trampolines run in vmm/tests/optprobes.rs.)

use super::*;
use crate::probes::arena::ArenaLayout;

/// The arena: 64 KiB mapped at KERNEL + 2 MiB (within reach of the text).
const ARENA: u64 = KERNEL + 0x20_0000;
const ARENA_GPA: u64 = 0x30_0000;
const ARENA_LEN: u64 = 0x1_0000;
/// `push rbp` (1) ; `add rbp, rsp` (3) ; `mov rax, [rip+counter]` (7): an 11-byte window.
const WINDOW: usize = 11;

fn with_arena(vcpus: usize) -> (Arc<MockTarget>, Arc<ProbeEngine>, ArenaLayout) {
    let (t, e) = setup(vcpus);
    t.map(Gva(ARENA), Gpa(ARENA_GPA), ARENA_LEN, true);
    let layout = locate_arena(&*t, &t.paging(), Gva(ARENA), ARENA_LEN, vcpus).unwrap();
    e.set_paging(t.paging());
    e.attach_arena(&*t, layout.clone()).unwrap();
    (t, e, layout)
}

fn jump_probe(t: &MockTarget, e: &ProbeEngine, site: u64) -> Arc<AtomicU64> {
    let (h, n) = counter();
    e.add_probe(t, &format!("{site:#x}"), h).unwrap();
    e.request_jump(Gva(site), JumpHandler::Exit);
    n
}

fn old_slot_rip(layout: &ArenaLayout) -> u64 {
    layout.slot(0).0.raw()
}

fn original_func_a(t: &MockTarget) -> Vec<u8> {
    let e = ProbeEngine::new();
    let mut b = vec![0u8; WINDOW];
    e.read_phys(t, gpa_of(FUNC_A), &mut b).unwrap();
    b
}

#[test]
fn a_quiescent_site_becomes_a_jump_and_reads_still_see_the_original_bytes() {
    let (t, e, layout) = with_arena(1);
    let before = original_func_a(&t);
    let hits = jump_probe(&t, &e, FUNC_A);
    assert_eq!(e.armed_as(Gva(FUNC_A)), ArmedAs::Pending);
    assert_eq!(t.peek(gpa_of(FUNC_A), 1), [0xcc], "an int3 first");
    assert_eq!(e.optimize_pending(&*t, Quiesce::Controller).unwrap(), 1);
    assert_eq!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Jump {
            kind: JumpKind::Exit,
            slot: 0,
            len: WINDOW
        }
    );
    let slot = layout.slot(0).0.raw();
    let rel = i32::try_from(i128::from(slot) - i128::from(FUNC_A + 5)).unwrap();
    let mut jmp = vec![0xe9];
    jmp.extend_from_slice(&rel.to_le_bytes());
    assert_eq!(t.peek(gpa_of(FUNC_A), 5), jmp);
    // Introspection reads see the original window, byte 0 and the rest.
    let mut seen = vec![0u8; WINDOW + 4];
    e.read_phys(&*t, gpa_of(FUNC_A), &mut seen).unwrap();
    assert_eq!(&seen[..WINDOW], &before[..]);
    // The trampoline rings the doorbell with its slot, then runs the window's instructions.
    let code = t.peek(layout.slot(0).1, 64);
    let first = disasm::decode(&code, slot).unwrap();
    assert_eq!(
        first.kind,
        disasm::InsnKind::RipRelative {
            target: layout.doorbell().0.raw()
        }
    );
    // The doorbell carries the trampoline's tag (the first optimization's: 1): a hit at the
    // site, with the vCPU's registers.
    assert!(
        disasm::decode(&code, slot)
            .unwrap()
            .to_string()
            .ends_with(", 1")
    );
    let mut v = at(&t, 0, first.next_ip());
    assert_eq!(e.on_doorbell(&mut v, 1), Some(HookDecision::Continue));
    assert_eq!(hits.load(Ordering::Relaxed), 1);
    assert_eq!(e.on_doorbell(&mut v, 7), None, "no such tag");
    // A vCPU stopped inside the relocated instructions maps back to the original ones.
    let map_back = e.original_address(first.next_ip()).unwrap();
    assert_eq!(map_back, FUNC_A);
}

#[test]
fn a_vcpu_inside_the_window_defers_the_jump_until_it_leaves() {
    let (t, e, _) = with_arena(1);
    jump_probe(&t, &e, FUNC_A);
    let inside = Quiesce::FromVcpu {
        me: 0,
        rip: FUNC_A + 4,
    };
    assert_eq!(e.optimize_pending(&*t, inside).unwrap(), 0);
    assert_eq!(e.armed_as(Gva(FUNC_A)), ArmedAs::Pending);
    assert!(e.has_deferred());
    assert_eq!(t.peek(gpa_of(FUNC_A), 1), [0xcc]);
    // At byte 0 is fine: that vCPU executes the int3 or the jump, both whole.
    let at_site = Quiesce::FromVcpu { me: 0, rip: FUNC_A };
    assert_eq!(e.optimize_pending(&*t, at_site).unwrap(), 1);
    assert!(!e.has_deferred());
}

#[test]
fn a_site_that_never_quiesces_falls_back_to_int3_with_the_reason() {
    let (t, e, _) = with_arena(1);
    jump_probe(&t, &e, FUNC_A);
    let inside = Quiesce::FromVcpu {
        me: 0,
        rip: FUNC_A + 1,
    };
    for _ in 0..=MAX_DEFERRALS {
        assert_eq!(e.optimize_pending(&*t, inside).unwrap(), 0);
    }
    match e.armed_as(Gva(FUNC_A)) {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("inside the window"), "{r}"),
        other => panic!("{other}"),
    }
    assert!(!e.has_pending());
}

#[test]
fn unoptimize_restores_int3_then_bytes_and_frees_the_slot_only_when_no_vcpu_is_in_it() {
    let (t, e, layout) = with_arena(1);
    let before = original_func_a(&t);
    jump_probe(&t, &e, FUNC_A);
    e.optimize_pending(&*t, Quiesce::Controller).unwrap();
    t.take_log();
    assert!(e.unoptimize(&*t, Gva(FUNC_A), "test").unwrap());
    // Byte 0 first (back to int3), then the rest of the window.
    let writes: Vec<Call> = t
        .take_log()
        .into_iter()
        .filter(|c| matches!(c, Call::WritePhys { .. }))
        .collect();
    assert_eq!(writes[0], write(gpa_of(FUNC_A), 0xcc));
    let mut now = t.peek(gpa_of(FUNC_A), WINDOW);
    assert_eq!(now[0], 0xcc);
    now[0] = before[0];
    assert_eq!(now, before);
    assert_eq!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Int3 {
            reason: Some("test".into())
        }
    );
    // A late doorbell from the given-up trampoline (a vCPU was inside it) still counts.
    let (h, late) = counter();
    e.register(Gva(FUNC_A), h);
    let mut v = at(&t, 0, old_slot_rip(&layout));
    assert_eq!(e.on_doorbell(&mut v, 1), Some(HookDecision::Continue));
    assert_eq!(late.load(Ordering::Relaxed), 1);
    // Optimize again while a vCPU is still inside the old trampoline: a new slot.
    let old = layout.slot(0).0.raw();
    e.request_jump(Gva(FUNC_A), JumpHandler::Exit);
    let in_old = Quiesce::FromVcpu {
        me: 0,
        rip: old + 3,
    };
    e.optimize_pending(&*t, in_old).unwrap();
    assert!(matches!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Jump { slot: 1, .. }
    ));
    // Slot 0 stayed dirty (that pass saw a RIP in it); slot 1 goes dirty now. A pass with
    // the vCPU elsewhere takes a fresh slot (2) and then frees both.
    e.unoptimize(&*t, Gva(FUNC_A), "again").unwrap();
    e.request_jump(Gva(FUNC_A), JumpHandler::Exit);
    let elsewhere = Quiesce::FromVcpu { me: 0, rip: 0 };
    e.optimize_pending(&*t, elsewhere).unwrap();
    assert!(matches!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Jump { slot: 2, .. }
    ));
    e.unoptimize(&*t, Gva(FUNC_A), "third").unwrap();
    e.request_jump(Gva(FUNC_A), JumpHandler::Exit);
    e.optimize_pending(&*t, elsewhere).unwrap();
    assert!(matches!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Jump { slot: 0, .. }
    ));
}

#[test]
fn a_probe_armed_inside_an_optimized_window_unoptimizes_it() {
    let (t, e, _) = with_arena(1);
    jump_probe(&t, &e, FUNC_A);
    e.optimize_pending(&*t, Quiesce::Controller).unwrap();
    let (h, _) = counter();
    e.add_probe(&*t, &format!("{SITE:#x}"), h).unwrap();
    match e.armed_as(Gva(FUNC_A)) {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("inside its window"), "{r}"),
        other => panic!("{other}"),
    }
    // Both sites are int3s now, each on its own byte.
    assert_eq!(t.peek(gpa_of(FUNC_A), 1), [0xcc]);
    assert_eq!(t.peek(SITE_GPA, 1), [0xcc]);
    // And asking again for the jump is refused: another probe sits in the window.
    e.request_jump(Gva(FUNC_A), JumpHandler::Exit);
    e.optimize_pending(&*t, Quiesce::Controller).unwrap();
    match e.armed_as(Gva(FUNC_A)) {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("another probe"), "{r}"),
        other => panic!("{other}"),
    }
}

#[test]
fn reserved_addresses_and_missing_arenas_keep_int3() {
    let (t, e, _) = with_arena(1);
    e.reserve(Gva(FUNC_A + 4), "--hbreak x");
    jump_probe(&t, &e, FUNC_A);
    e.optimize_pending(&*t, Quiesce::Controller).unwrap();
    match e.armed_as(Gva(FUNC_A)) {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("--hbreak x"), "{r}"),
        other => panic!("{other}"),
    }
    // No arena: the request waits, then gives up with the reason at the end.
    let (t, e) = setup(1);
    jump_probe(&t, &e, FUNC_A);
    assert_eq!(e.optimize_pending(&*t, Quiesce::Controller).unwrap(), 0);
    assert_eq!(e.armed_as(Gva(FUNC_A)), ArmedAs::Pending);
    e.give_up_pending("no arena");
    assert_eq!(
        e.armed_as(Gva(FUNC_A)),
        ArmedAs::Int3 {
            reason: Some("no arena".into())
        }
    );
}

#[test]
fn disarming_an_optimized_site_restores_every_original_byte() {
    let (t, e, _) = with_arena(1);
    let before = original_func_a(&t);
    let (h, _) = counter();
    let id = e.add_probe(&*t, &format!("{FUNC_A:#x}"), h).unwrap();
    e.request_jump(Gva(FUNC_A), JumpHandler::Exit);
    e.optimize_pending(&*t, Quiesce::Controller).unwrap();
    e.unregister(&*t, id).unwrap();
    assert_eq!(t.peek(gpa_of(FUNC_A), WINDOW), before);
    assert_eq!(e.armed_as(Gva(FUNC_A)), ArmedAs::Disarmed);
}
