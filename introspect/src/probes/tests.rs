//! The probe engine against the mock VM (`target::mock`): a small kernel text assembled with
//! iced's `code_asm`, mapped through real 4-level page tables.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use iced_x86::code_asm::*;

use super::*;
use crate::addr::{Gpa, Gva};
use crate::paging::{PageWalker, PhysMem};
use crate::symbols::{ResolveError, Symbol, SymbolTable};
use crate::target::mock::{Call, MockTarget, MockVcpu};
use crate::target::{GuestDebug, Target};

const KERNEL: u64 = 0xffff_ffff_8100_0000;
const TEXT_GPA: u64 = 0x20_0000;
const TEXT_LEN: u64 = 0x1000;
/// A non-executable data page.
const DATA: u64 = KERNEL + 0x8000;
const DATA_GPA: u64 = 0x20_8000;
/// The direct-map alias of the text page.
const ALIAS: u64 = 0xffff_8880_0020_0000;

const FUNC_A: u64 = KERNEL;
const SPIN: u64 = KERNEL + 0x80;
const SPIN_END: u64 = SPIN + 11;
/// `add rax, 1` (code_asm picks `48 05 imm32`) in the middle of SPIN's nops.
const SPIN_SITE: u64 = SPIN + 4;
const EXC_INT3: u64 = KERNEL + 0x100;
const TEXT_POKE: u64 = KERNEL + 0x140;
/// A function made of instructions the host completes itself ([`EMUL_CODE`]).
const EMUL: u64 = KERNEL + 0x180;
const ENTRY: u64 = KERNEL + 0x200;
const TABLE_IN_TEXT: u64 = KERNEL + 0x300;
const ETEXT: u64 = KERNEL + 0x400;

/// `push rbp`, `add rbp, rsp` (the site most tests use: an instruction the host does not
/// emulate, so hits single-step it), `mov rax, [rip+counter]`, ...
const SITE: u64 = FUNC_A + 1;
const SITE_GPA: Gpa = Gpa(TEXT_GPA + 1);
/// The first byte of `add rbp, rsp` (REX.W).
const SITE_ORIG: u8 = 0x48;
const MOV_RIP: u64 = FUNC_A + 4;

fn gpa_of(gva: u64) -> Gpa {
    Gpa(TEXT_GPA + (gva - KERNEL))
}

fn asm(ip: u64, body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    body(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// The test kernel's text.
fn load_text(t: &MockTarget) {
    let func_a = asm(FUNC_A, |a| {
        let mut counter = a.create_label();
        a.push(rbp)?;
        a.add(rbp, rsp)?;
        a.mov(rax, qword_ptr(counter))?;
        a.add(rax, 1)?;
        a.mov(qword_ptr(counter), rax)?;
        a.pop(rbp)?;
        a.ret()?;
        a.set_label(&mut counter)?;
        a.dq(&[0])
    });
    let spin = asm(SPIN, |a| {
        for _ in 0..4 {
            a.nop()?;
        }
        a.add(rax, 1)?;
        for _ in 0..1 {
            a.nop()?;
        }
        Ok(())
    });
    assert_eq!(SPIN + spin.len() as u64, SPIN_END);
    let short = |ip| {
        asm(ip, |a| {
            a.nop()?;
            a.nop()?;
            a.ret()
        })
    };
    t.poke(gpa_of(FUNC_A), &func_a);
    t.poke(gpa_of(EMUL), EMUL_CODE);
    t.poke(gpa_of(SPIN), &spin);
    for ip in [EXC_INT3, TEXT_POKE, ENTRY, TABLE_IN_TEXT] {
        t.poke(gpa_of(ip), &short(ip));
    }
}

fn symbols() -> SymbolTable {
    let mut func_a = Symbol::new("func_a", FUNC_A, 'T');
    func_a.size = Some(0x40);
    SymbolTable::new(vec![
        Symbol::new("_stext", KERNEL, 'T'),
        func_a,
        Symbol::new("spin", SPIN, 't'),
        Symbol::new("exc_int3", EXC_INT3, 'T'),
        Symbol::new("text_poke_bp_batch.constprop.0", TEXT_POKE, 't'),
        Symbol::new("emul", EMUL, 'T'),
        Symbol::new("__entry_text_start", ENTRY, 'T'),
        Symbol::new("entry_SYSCALL_64", ENTRY, 'T'),
        Symbol::new("__entry_text_end", ENTRY + 0x40, 'T'),
        Symbol::new("some_table", TABLE_IN_TEXT, 'D'),
        Symbol::new("_etext", ETEXT, 'T'),
        Symbol::new("jiffies", DATA, 'D'),
    ])
}

/// A VM with `vcpus` vCPUs, the text mapped at KERNEL (and its alias), a data page, and an
/// engine with the symbols.
fn setup(vcpus: usize) -> (Arc<MockTarget>, Arc<ProbeEngine>) {
    let t = MockTarget::new(4 << 20, vcpus);
    t.map(Gva(KERNEL), Gpa(TEXT_GPA), TEXT_LEN, true);
    t.map(Gva(ALIAS), Gpa(TEXT_GPA), TEXT_LEN, true);
    t.map(Gva(DATA), Gpa(DATA_GPA), 0x1000, false);
    load_text(&t);
    let e = ProbeEngine::new().with_symbols(Arc::new(symbols()));
    (Arc::new(t), Arc::new(e))
}

/// What a handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    vcpu: usize,
    rip: u64,
    site: Gva,
    symbol: Option<String>,
    hit_count: u64,
    probe: ProbeId,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

fn recorder(decision: HookDecision) -> (Box<dyn ProbeHandler>, SeenLog) {
    let seen = SeenLog::default();
    let log = seen.clone();
    let handler = move |ctx: &HitContext<'_>| {
        log.lock().unwrap().push(Seen {
            vcpu: ctx.vcpu,
            rip: ctx.regs.rip,
            site: ctx.site,
            symbol: ctx.symbol_offset.map(|s| s.to_string()),
            hit_count: ctx.hit_count,
            probe: ctx.probe,
        });
        decision
    };
    (Box::new(handler), seen)
}

fn counter() -> (Box<dyn ProbeHandler>, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    let handler = move |_: &HitContext<'_>| {
        c.fetch_add(1, Ordering::Relaxed);
        HookDecision::Continue
    };
    (Box::new(handler), n)
}

fn at(t: &MockTarget, index: usize, rip: u64) -> MockVcpu {
    let mut v = t.vcpu(index);
    v.regs.rip = rip;
    v
}

fn write(gpa: Gpa, byte: u8) -> Call {
    Call::WritePhys {
        gpa,
        bytes: vec![byte],
    }
}

fn set_debug(vcpu: usize, single_step: bool) -> Call {
    Call::SetDebug {
        vcpu,
        debug: GuestDebug {
            single_step,
            intercept_int3: true,
            ..GuestDebug::default()
        },
    }
}

fn byte_at(t: &MockTarget, gpa: Gpa) -> u8 {
    t.peek(gpa, 1)[0]
}

#[test]
fn arm_writes_int3_and_saves_the_byte() {
    let (t, e) = setup(1);
    let (h, _) = counter();
    let id = e.register(Gva(SITE), h);
    assert!(!e.is_armed(Gva(SITE)));
    assert_eq!(byte_at(&t, SITE_GPA), SITE_ORIG);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    assert_eq!(
        t.take_log(),
        [Call::PauseAll, write(SITE_GPA, 0xcc), Call::ResumeAll]
    );
    assert_eq!(byte_at(&t, SITE_GPA), 0xcc);
    assert!(e.is_armed(Gva(SITE)));
    assert!(e.needs_int3_intercept());
    // Arming again changes nothing.
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    assert_eq!(t.take_log(), []);
    assert_eq!(
        e.probes(),
        [ProbeInfo {
            id,
            site: Gva(SITE),
            armed: true,
            stats: ProbeStats::default()
        }]
    );
}

#[test]
fn reads_through_the_engine_see_original_bytes() {
    let (t, e) = setup(1);
    let before = t.peek(gpa_of(FUNC_A), 16);
    for site in [FUNC_A, SITE, MOV_RIP] {
        let (h, _) = counter();
        e.register(Gva(site), h);
        e.arm(t.as_ref(), Gva(site)).unwrap();
    }
    let raw = t.peek(gpa_of(FUNC_A), 16);
    assert_eq!((raw[0], raw[1], raw[4]), (0xcc, 0xcc, 0xcc));

    let mut buf = [0; 16];
    e.read_phys(t.as_ref(), gpa_of(FUNC_A), &mut buf).unwrap();
    assert_eq!(buf.to_vec(), before);
    // A range starting after a site, and one ending on it.
    let mut mid = [0; 4];
    e.read_phys(t.as_ref(), gpa_of(FUNC_A + 2), &mut mid)
        .unwrap();
    assert_eq!(mid.to_vec(), before[2..6]);
    let mut tail = [0; 2];
    e.read_phys(t.as_ref(), gpa_of(FUNC_A), &mut tail).unwrap();
    assert_eq!(tail.to_vec(), before[..2]);
    // Virtual reads, through the text mapping and through its alias.
    let mut walker = PageWalker::new();
    for base in [FUNC_A, ALIAS] {
        let mut v = [0; 16];
        e.read_virt(&mut walker, t.as_ref(), &t.paging(), Gva(base), &mut v)
            .unwrap();
        assert_eq!(v.to_vec(), before, "{base:#x}");
    }
    // recover_probed_instruction on a buffer read elsewhere.
    let mut raw_buf = raw.clone();
    e.recover_probed_instruction(gpa_of(FUNC_A), &mut raw_buf);
    assert_eq!(raw_buf, before);
    // The analysis reads the same way: the instruction after our int3 at MOV_RIP still
    // checks as on a boundary.
    e.check(t.as_ref(), &t.paging(), Gva(MOV_RIP + 7)).unwrap();
}

/// As with kprobes, we patch real memory: a guest reading its own text sees our int3s.
#[test]
fn a_guest_reading_its_own_text_sees_the_int3() {
    let (t, e) = setup(1);
    let (h, _) = counter();
    e.register(Gva(SITE), h);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    // The guest reads guest memory directly (here: the mock's RAM through PhysMem).
    let mut guest_view = [0; 3];
    t.read_phys(SITE_GPA, &mut guest_view).unwrap();
    assert_eq!(guest_view, [0xcc, 0x01, 0xe5]);
    let mut ours = [0; 3];
    e.read_phys(t.as_ref(), SITE_GPA, &mut ours).unwrap();
    assert_eq!(ours, [SITE_ORIG, 0x01, 0xe5]);
}

#[test]
fn several_probes_at_one_address_share_one_int3() {
    let (t, e) = setup(1);
    let (h1, seen1) = recorder(HookDecision::Continue);
    let (h2, seen2) = recorder(HookDecision::Continue);
    let p1 = e.register(Gva(SITE), h1);
    let p2 = e.register(Gva(SITE), h2);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    assert_eq!(
        t.take_log(),
        [Call::PauseAll, write(SITE_GPA, 0xcc), Call::ResumeAll]
    );
    e.with_registry(|r| assert_eq!(r.probes_at(Gva(SITE)), [p1, p2]));
    for round in 1..=2u64 {
        let mut v = at(&t, 0, SITE);
        let out = e.on_breakpoint(t.as_ref(), &mut v, SITE).unwrap();
        assert_eq!(out, BreakpointOutcome::Handled(HookDecision::Continue));
        assert_eq!(
            e.on_single_step(t.as_ref(), &mut v).unwrap(),
            Some(HookDecision::Continue)
        );
        for (seen, id) in [(&seen1, p1), (&seen2, p2)] {
            let last = seen.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                last,
                Seen {
                    vcpu: 0,
                    rip: SITE,
                    site: Gva(SITE),
                    symbol: Some("func_a+0x1/0x40".into()),
                    hit_count: round,
                    probe: id,
                }
            );
        }
    }
    assert_eq!(
        e.stats(p1),
        Some(ProbeStats {
            hits: 2,
            nmissed: 0,
            emulated: 0,
        })
    );
    // Removing one probe keeps the int3 for the other; removing the last disarms.
    t.take_log();
    assert_eq!(
        e.unregister(t.as_ref(), p1),
        Ok(ProbeStats {
            hits: 2,
            nmissed: 0,
            emulated: 0,
        })
    );
    assert_eq!(t.take_log(), []);
    assert_eq!(byte_at(&t, SITE_GPA), 0xcc);
    e.unregister(t.as_ref(), p2).unwrap();
    assert_eq!(
        t.take_log(),
        [Call::PauseAll, write(SITE_GPA, SITE_ORIG), Call::ResumeAll]
    );
    assert_eq!(
        e.unregister(t.as_ref(), p2),
        Err(ProbeError::UnknownProbe(p2))
    );
    assert!(e.probes().is_empty());
}

#[test]
fn disarm_restores_the_byte() {
    let (t, e) = setup(1);
    let (h, _) = counter();
    e.register(Gva(SITE), h);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    t.take_log();
    e.disarm(t.as_ref(), Gva(SITE)).unwrap();
    assert_eq!(
        t.take_log(),
        [Call::PauseAll, write(SITE_GPA, SITE_ORIG), Call::ResumeAll]
    );
    assert_eq!(byte_at(&t, SITE_GPA), SITE_ORIG);
    assert!(!e.is_armed(Gva(SITE)));
    assert!(!e.needs_int3_intercept());
    e.disarm(t.as_ref(), Gva(SITE)).unwrap();
    assert_eq!(t.take_log(), []);
    // A vCPU that hit the int3 just before it went away runs the original instruction.
    let mut v = at(&t, 0, SITE);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, SITE),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!((t.take_log(), v.regs.rip), (vec![], SITE));
}

#[test]
fn a_hit_steps_the_original_instruction_and_rearms() {
    let (t, e) = setup(1);
    let (h, seen) = recorder(HookDecision::Continue);
    let id = e.register(Gva(SITE), h);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    t.take_log();

    let mut v = at(&t, 0, SITE);
    v.regs.rax = 0x1234;
    let out = e.on_breakpoint(t.as_ref(), &mut v, SITE).unwrap();
    assert_eq!(out, BreakpointOutcome::Handled(HookDecision::Continue));
    // One vCPU: nobody to pause. The byte is restored, then single-step is set.
    assert_eq!(
        t.take_log(),
        [write(SITE_GPA, SITE_ORIG), set_debug(0, true)]
    );
    assert_eq!(byte_at(&t, SITE_GPA), SITE_ORIG);
    assert!(v.debug.single_step);
    assert_eq!(v.regs.rip, SITE, "RIP stays on the displaced instruction");
    assert_eq!(
        *seen.lock().unwrap(),
        [Seen {
            vcpu: 0,
            rip: SITE,
            site: Gva(SITE),
            symbol: Some("func_a+0x1/0x40".into()),
            hit_count: 1,
            probe: id,
        }]
    );

    // The guest executes `add rbp, rsp`; the single-step exit re-arms.
    v.regs.rip = SITE + 3;
    assert_eq!(
        e.on_single_step(t.as_ref(), &mut v),
        Ok(Some(HookDecision::Continue))
    );
    assert_eq!(t.take_log(), [write(SITE_GPA, 0xcc), set_debug(0, false)]);
    assert_eq!(byte_at(&t, SITE_GPA), 0xcc);
    assert!(!v.debug.single_step);
    // Further single-steps are not ours.
    assert_eq!(e.on_single_step(t.as_ref(), &mut v), Ok(None));
    assert_eq!(
        e.stats(id),
        Some(ProbeStats {
            hits: 1,
            nmissed: 0,
            emulated: 0,
        })
    );
}

#[test]
fn a_second_vcpu_hitting_during_a_step_retries_untouched() {
    let (t, e) = setup(2);
    let (h, seen) = recorder(HookDecision::Continue);
    e.register(Gva(SITE), h);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    t.take_log();

    let mut v0 = at(&t, 0, SITE);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v0, SITE),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!(
        t.take_log(),
        [
            Call::PauseOthers(0),
            write(SITE_GPA, SITE_ORIG),
            set_debug(0, true)
        ]
    );

    // vCPU 1 hit the int3 before it was paused: it gets Continue, nothing is touched.
    let mut v1 = at(&t, 1, SITE);
    let regs_before = v1.regs;
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v1, SITE),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!(t.take_log(), []);
    assert_eq!(v1.regs, regs_before);
    assert_eq!(v1.debug, GuestDebug::default());
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(e.on_single_step(t.as_ref(), &mut v1), Ok(None));

    // vCPU 0's step ends: re-armed, then the others resume.
    assert_eq!(
        e.on_single_step(t.as_ref(), &mut v0),
        Ok(Some(HookDecision::Continue))
    );
    assert_eq!(
        t.take_log(),
        [
            write(SITE_GPA, 0xcc),
            set_debug(0, false),
            Call::ResumeOthers(0)
        ]
    );

    // vCPU 1 re-executes the int3 and now gets through.
    e.on_breakpoint(t.as_ref(), &mut v1, SITE).unwrap();
    e.on_single_step(t.as_ref(), &mut v1).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .map(|s| (s.vcpu, s.hit_count))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 2)]
    );
}

#[test]
fn a_reentrant_hit_is_missed_but_still_stepped() {
    let (t, e) = setup(1);
    let (ha, seen_a) = recorder(HookDecision::Continue);
    let (hb, seen_b) = recorder(HookDecision::Continue);
    let pa = e.register(Gva(SITE), ha);
    let pb = e.register(Gva(MOV_RIP), hb);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    e.arm(t.as_ref(), Gva(MOV_RIP)).unwrap();
    t.take_log();

    let mut v = at(&t, 0, SITE);
    e.on_breakpoint(t.as_ref(), &mut v, SITE).unwrap();
    // Before its step exit, the same vCPU reaches the other probe.
    v.regs.rip = MOV_RIP;
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, MOV_RIP),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!(seen_b.lock().unwrap().len(), 0);
    assert_eq!(
        e.stats(pb),
        Some(ProbeStats {
            hits: 0,
            nmissed: 1,
            emulated: 0,
        })
    );
    assert_eq!(byte_at(&t, gpa_of(MOV_RIP)), 0x48, "restored for the step");
    t.take_log();
    e.on_single_step(t.as_ref(), &mut v).unwrap();
    // Both re-armed, the last restored first.
    assert_eq!(
        t.take_log(),
        [
            write(gpa_of(MOV_RIP), 0xcc),
            write(SITE_GPA, 0xcc),
            set_debug(0, false)
        ]
    );
    assert_eq!(
        e.stats(pa),
        Some(ProbeStats {
            hits: 1,
            nmissed: 0,
            emulated: 0,
        })
    );
    assert_eq!(seen_a.lock().unwrap().len(), 1);
}

#[test]
fn a_handler_can_stop_the_guest() {
    let (t, e) = setup(1);
    let (h1, _) = recorder(HookDecision::Continue);
    let (h2, _) = recorder(HookDecision::StopGuest);
    e.register(Gva(SITE), h1);
    e.register(Gva(SITE), h2);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    let mut v = at(&t, 0, SITE);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, SITE),
        Ok(BreakpointOutcome::Handled(HookDecision::StopGuest))
    );
    // The step is set up: continuing the guest completes the hit.
    assert!(v.debug.single_step);
    assert_eq!(
        e.on_single_step(t.as_ref(), &mut v),
        Ok(Some(HookDecision::Continue))
    );
}

#[test]
fn the_guests_own_int3_is_handed_back() {
    let (t, e) = setup(1);
    let (h, seen) = recorder(HookDecision::Continue);
    e.register(Gva(SITE), h);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    // The guest's own breakpoint in another function.
    t.poke(gpa_of(EXC_INT3 + 1), &[0xcc]);
    t.take_log();
    let rip = EXC_INT3 + 1;
    let mut v = at(&t, 0, rip);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, rip),
        Ok(BreakpointOutcome::GuestInt3)
    );
    assert_eq!(t.take_log(), []);
    e.hand_back_int3(&mut v).unwrap();
    assert_eq!(v.regs.rip, rip + 1);
    assert_eq!(v.injected, 1);
    let mut regs = v.regs;
    regs.rip = rip + 1;
    assert_eq!(
        t.take_log(),
        [
            Call::SetRegs { vcpu: 0, regs },
            Call::InjectBreakpoint { vcpu: 0 }
        ]
    );
    assert!(seen.lock().unwrap().is_empty());
    // No int3 at RIP and never ours: a real emulation failure for the caller to report.
    let mut v = at(&t, 0, FUNC_A + 4);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, FUNC_A + 4),
        Ok(BreakpointOutcome::NotOurs)
    );
    // An address that does not translate.
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, 0x1234_5000),
        Ok(BreakpointOutcome::NotOurs)
    );
}

#[test]
fn refusals_are_typed_and_say_why() {
    let (t, e) = setup(1);
    let ctx = t.paging();
    let check = |expr: &str| e.check(t.as_ref(), &ctx, e.resolve(expr)?);

    assert_eq!(
        e.resolve("no_such_function+4"),
        Err(ProbeError::Resolve(ResolveError::UnknownSymbol(
            "no_such_function".into()
        )))
    );

    // Inside `mov rax, [rip+...]` (7 bytes at func_a+4).
    let err = check("func_a+5").unwrap_err();
    let ProbeError::CannotProbe { reason, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(matches!(
        reason,
        disasm::CannotProbe::NotOnBoundary {
            insn_ip: MOV_RIP,
            insn_len: 7,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "Cannot probe func_a+0x5/0x40: {:#x}: inside `mov rax, [rip+0x",
            FUNC_A + 5
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with(&format!("at {MOV_RIP:#x} (7 bytes)")),
        "{msg}"
    );
    assert_eq!(check("func_a+4").unwrap().len, 7);

    // Past the function's known size.
    assert!(matches!(
        check("func_a+0x40"),
        Err(ProbeError::NotInFunction { size: 0x40, .. })
    ));

    // The int3 path: by name, by prefix (with a compiler suffix), by section.
    for expr in [
        "exc_int3",
        "exc_int3+1",
        "text_poke_bp_batch.constprop.0+1",
        "entry_SYSCALL_64+1",
    ] {
        let err = check(expr).unwrap_err();
        assert!(matches!(err, ProbeError::Denied { .. }), "{expr}: {err:?}");
    }
    assert_eq!(
        check("entry_SYSCALL_64").unwrap_err().to_string(),
        format!(
            "Refusing to probe {ENTRY:#x} (entry_SYSCALL_64+0x0): it is in \
             __entry_text_start..__entry_text_end: entry code, which runs before the kernel \
             can take an int3"
        )
    );

    // Data: by symbol type, and on a non-executable page.
    assert_eq!(
        check("some_table+1"),
        Err(ProbeError::Data {
            addr: Gva(TABLE_IN_TEXT + 1),
            symbol: "some_table+0x1".into(),
            kind: 'D'
        })
    );
    assert_eq!(
        check("jiffies"),
        Err(ProbeError::NotExecutable { addr: Gva(DATA) })
    );

    // Arming a refused address writes nothing; add_probe leaves no probe behind.
    let (h, _) = counter();
    e.register(Gva(EXC_INT3), h);
    assert!(matches!(
        e.arm(t.as_ref(), Gva(EXC_INT3)),
        Err(ProbeError::Denied { .. })
    ));
    let (h, _) = counter();
    assert!(matches!(
        e.add_probe(t.as_ref(), "func_a+2", h),
        Err(ProbeError::CannotProbe { .. })
    ));
    assert_eq!(t.take_log(), []);
    assert_eq!(e.probes().len(), 1);

    // The guest's own int3 is not ours to replace.
    t.poke(gpa_of(SPIN + 1), &[0xcc]);
    assert!(matches!(
        check("spin+1"),
        Err(ProbeError::CannotProbe {
            reason: disasm::CannotProbe::AlreadyInt3 { .. },
            ..
        })
    ));
}

#[test]
fn without_types_text_is_stext_to_etext() {
    let (t, _) = setup(1);
    let untyped = SymbolTable::new(vec![
        Symbol::new("_stext", KERNEL, '?'),
        Symbol::new("func_a", FUNC_A, '?'),
        Symbol::new("_etext", KERNEL + 0x80, '?'),
        Symbol::new("after", KERNEL + 0x80, '?'),
    ]);
    let e = ProbeEngine::new().with_symbols(Arc::new(untyped));
    e.check(t.as_ref(), &t.paging(), Gva(SITE)).unwrap();
    assert_eq!(
        e.check(t.as_ref(), &t.paging(), Gva(SPIN)),
        Err(ProbeError::OutsideText {
            addr: Gva(SPIN),
            stext: KERNEL,
            etext: KERNEL + 0x80
        })
    );
}

#[test]
fn add_probe_resolves_checks_registers_and_arms() {
    let (t, e) = setup(1);
    let (h, _) = counter();
    let id = e.add_probe(t.as_ref(), "func_a+1", h).unwrap();
    assert_eq!(e.with_registry(|r| r.site_of(id)), Some(Gva(SITE)));
    assert!(e.is_armed(Gva(SITE)));
    assert_eq!(byte_at(&t, SITE_GPA), 0xcc);
    // With symbols, an address below every symbol has no function to check against.
    let (h, _) = counter();
    assert_eq!(
        e.add_probe(t.as_ref(), &format!("{:#x}", ALIAS + 1), h),
        Err(ProbeError::NoFunction {
            addr: Gva(ALIAS + 1)
        })
    );
    assert_eq!(e.probes().len(), 1);
}

#[test]
fn without_symbols_only_the_instruction_is_checked_and_aliases_are_refused() {
    let t = MockTarget::new(4 << 20, 1);
    t.map(Gva(KERNEL), Gpa(TEXT_GPA), TEXT_LEN, true);
    t.map(Gva(ALIAS), Gpa(TEXT_GPA), TEXT_LEN, true);
    load_text(&t);
    let e = ProbeEngine::new();
    e.set_paging(t.paging());
    assert_eq!(e.resolve(&format!("{SITE:#x}")), Ok(Gva(SITE)));
    assert!(matches!(
        e.resolve("func_a"),
        Err(ProbeError::Resolve(ResolveError::UnknownSymbol(_)))
    ));
    let (h, _) = counter();
    e.register(Gva(SITE), h);
    e.arm(&t, Gva(SITE)).unwrap();
    let (h, _) = counter();
    e.register(Gva(ALIAS + 1), h);
    assert_eq!(
        e.arm(&t, Gva(ALIAS + 1)),
        Err(ProbeError::Alias {
            addr: Gva(ALIAS + 1),
            other: Gva(SITE),
            gpa: SITE_GPA
        })
    );
    assert_eq!(
        e.arm(&t, Gva(0x5000)),
        Err(ProbeError::NoProbeAt(Gva(0x5000)))
    );
}

/// Plays vCPU `me` running SPIN's straight-line code in a loop until `stop`: executes the
/// bytes in guest memory (what the guest sees), exits to the engine on an int3 and after a
/// single-stepped instruction. Returns how often it executed the instruction at SPIN_SITE.
fn run_spin(t: &MockTarget, e: &ProbeEngine, me: usize, stop: &AtomicBool) -> u64 {
    let mut v = at(t, me, SPIN);
    let mut executed = 0;
    loop {
        t.loop_top(me);
        if stop.load(Ordering::Relaxed) && !v.debug.single_step {
            break;
        }
        let rip = v.regs.rip;
        let bytes = t.peek(gpa_of(rip), 15);
        if bytes[0] == 0xcc {
            let out = e.on_breakpoint(t, &mut v, rip).unwrap();
            assert!(matches!(out, BreakpointOutcome::Handled(_)), "{out:?}");
            continue;
        }
        let insn = disasm::decode(&bytes, rip).unwrap();
        if rip == SPIN_SITE {
            executed += 1;
        }
        v.regs.rip = if insn.next_ip() >= SPIN_END {
            SPIN
        } else {
            insn.next_ip()
        };
        if v.debug.single_step {
            assert_eq!(
                e.on_single_step(t, &mut v).unwrap(),
                Some(HookDecision::Continue)
            );
        }
    }
    t.vcpu_exit(me);
    executed
}

#[test]
fn disarm_while_the_guest_runs_through_the_probe() {
    let (t, e) = setup(1);
    let (h, hits) = counter();
    e.register(Gva(SPIN_SITE), h);
    e.arm(t.as_ref(), Gva(SPIN_SITE)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (t, e, stop) = (t.clone(), e.clone(), stop.clone());
        thread::spawn(move || run_spin(&t, &e, 0, &stop))
    };
    let mut armed_hits = Vec::new();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(2));
        e.disarm(t.as_ref(), Gva(SPIN_SITE)).unwrap();
        assert_eq!(byte_at(&t, gpa_of(SPIN_SITE)), 0x48);
        let frozen = hits.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(2));
        // Disarmed: the guest runs the original instruction, no handler runs.
        assert_eq!(hits.load(Ordering::Relaxed), frozen);
        armed_hits.push(frozen);
        e.arm(t.as_ref(), Gva(SPIN_SITE)).unwrap();
    }
    e.disarm(t.as_ref(), Gva(SPIN_SITE)).unwrap();
    stop.store(true, Ordering::Relaxed);
    let executed = runner.join().unwrap();
    let hits = hits.load(Ordering::Relaxed);
    assert!(hits > 0, "the guest never hit the probe");
    assert!(executed > hits, "{executed} passes, {hits} hits");
    assert_eq!(byte_at(&t, gpa_of(SPIN_SITE)), 0x48);
    // Nothing left half-done: the step lock is free, no vCPU is paused.
    let mut v = t.vcpu(0);
    assert_eq!(e.on_single_step(t.as_ref(), &mut v), Ok(None));
}

#[test]
fn two_vcpus_run_through_one_probe() {
    let (t, e) = setup(2);
    let (h, hits) = counter();
    let id = e.register(Gva(SPIN_SITE), h);
    e.arm(t.as_ref(), Gva(SPIN_SITE)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runners: Vec<_> = (0..2)
        .map(|me| {
            let (t, e, stop) = (t.clone(), e.clone(), stop.clone());
            thread::spawn(move || run_spin(&t, &e, me, &stop))
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    // Stop with the probe armed: every pass through the site was a hit.
    t.pause_all().unwrap();
    stop.store(true, Ordering::Relaxed);
    t.resume_all().unwrap();
    let executed: Vec<u64> = runners.into_iter().map(|r| r.join().unwrap()).collect();
    let hits = hits.load(Ordering::Relaxed);
    assert!(executed.iter().all(|&n| n > 0), "{executed:?}");
    assert_eq!(executed.iter().sum::<u64>(), hits);
    assert_eq!(
        e.stats(id),
        Some(ProbeStats {
            hits,
            nmissed: 0,
            emulated: 0
        })
    );
    assert_eq!(byte_at(&t, gpa_of(SPIN_SITE)), 0xcc);
}

// ---- Hits completed on the host (emulated instructions) ----

/// `emul`: endbr64; push rbp; mov rbp, top; nop5 (ftrace); nop10; nop; push r12; push top;
/// mov rdi, r8; add rbp, top; ret. Offsets in [`EMUL_SITES`].
const EMUL_CODE: &[u8] = &[
    0xf3, 0x0f, 0x1e, 0xfa, // 0: endbr64
    0x55, // 4: push rbp
    0x48, 0x89, 0xe5, // 5: mov rbp, top
    0x0f, 0x1f, 0x44, 0x00, 0x00, // 8: nop5
    0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, // 13: cs nopw [rax+rax]
    0x90, // 23: nop
    0x41, 0x54, // 24: push r12
    0x54, // 26: push top
    0x4c, 0x89, 0xc7, // 27: mov rdi, r8
    0x48, 0x01, 0xe5, // 30: add rbp, top (not emulated)
    0xc3, // 33: ret
];
const E_ENDBR: u64 = EMUL;
const E_PUSH_RBP: u64 = EMUL + 4;
const E_MOV: u64 = EMUL + 5;
const E_NOP5: u64 = EMUL + 8;
const E_NOP10: u64 = EMUL + 13;
const E_NOP: u64 = EMUL + 23;
const E_PUSH_R12: u64 = EMUL + 24;
const E_PUSH_RSP: u64 = EMUL + 26;
const E_MOV_R8: u64 = EMUL + 27;

/// Two stack pages, mapped to non-adjacent frames (the upper page below the lower one).
const STACK: u64 = 0xffff_c900_0010_0000;
const STACK_LO_GPA: u64 = 0x30_2000;
const STACK_HI_GPA: u64 = 0x30_0000;

fn setup_stack(t: &MockTarget) {
    t.map(Gva(STACK), Gpa(STACK_LO_GPA), 0x1000, false);
    t.map(Gva(STACK + 0x1000), Gpa(STACK_HI_GPA), 0x1000, false);
}

/// A vCPU at `rip` with distinct values in every register.
fn busy_vcpu(t: &MockTarget, rip: u64, top: u64) -> MockVcpu {
    let mut v = at(t, 0, rip);
    let r = &mut v.regs;
    (r.rax, r.rbx, r.rcx, r.rdx) = (0xa0, 0xb0, 0xc0, 0xd0);
    (r.rsi, r.rdi, r.rbp, r.rsp) = (0x51, 0xd1, 0xbbbb_0000, top);
    (r.r8, r.r9, r.r10, r.r11) = (0x8888, 0x9, 0x10, 0x11);
    (r.r12, r.r13, r.r14, r.r15) = (0x1212_1212_3434_3434, 0x13, 0x14, 0x15);
    r.rflags = 0x246;
    v
}

/// Probes `site`, hits it once with `v`, and checks it completed in the exit: the handler
/// ran once with the registers at the hit, exactly one set_regs (with `want`) and the
/// `writes` (gpa, bytes) in the log, no debug state, no byte restored, the int3 armed.
fn emulated_hit(
    t: &MockTarget,
    e: &ProbeEngine,
    mut v: MockVcpu,
    want: Regs,
    writes: &[(u64, Vec<u8>)],
) {
    let site = v.regs.rip;
    let (h, seen) = recorder(HookDecision::Continue);
    let id = e.register(Gva(site), h);
    e.arm(t, Gva(site)).unwrap();
    t.take_log();
    assert_eq!(
        e.on_breakpoint(t, &mut v, site),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    let mut expect: Vec<Call> = writes
        .iter()
        .map(|(gpa, bytes)| Call::WritePhys {
            gpa: Gpa(*gpa),
            bytes: bytes.clone(),
        })
        .collect();
    expect.push(Call::SetRegs {
        vcpu: 0,
        regs: want,
    });
    assert_eq!(t.take_log(), expect, "{site:#x}");
    assert_eq!(v.regs, want);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].rip, site);
    assert_eq!(byte_at(t, gpa_of(site)), 0xcc, "the int3 stays armed");
    assert_eq!(e.stepping_vcpu(), None);
    assert_eq!(
        e.stats(id),
        Some(ProbeStats {
            hits: 1,
            nmissed: 0,
            emulated: 1
        })
    );
}

#[test]
fn nops_and_endbr64_complete_in_the_exit() {
    let (t, e) = setup(1);
    for (site, len) in [(E_ENDBR, 4), (E_NOP5, 5), (E_NOP10, 10), (E_NOP, 1)] {
        let v = busy_vcpu(&t, site, 0);
        let want = Regs {
            rip: site + len,
            ..v.regs
        };
        emulated_hit(&t, &e, v, want, &[]);
    }
}

#[test]
fn mov_between_registers_completes_in_the_exit() {
    let (t, e) = setup(1);
    let v = busy_vcpu(&t, E_MOV, STACK + 0x800);
    let want = Regs {
        rip: E_MOV + 3,
        rbp: STACK + 0x800,
        ..v.regs
    };
    emulated_hit(&t, &e, v, want, &[]);
    let v = busy_vcpu(&t, E_MOV_R8, STACK + 0x800);
    let want = Regs {
        rip: E_MOV_R8 + 3,
        rdi: 0x8888,
        ..v.regs
    };
    emulated_hit(&t, &e, v, want, &[]);
}

#[test]
fn push_writes_the_stack_through_the_vcpus_page_tables() {
    let (t, e) = setup(1);
    setup_stack(&t);
    let top = STACK + 0x800;
    let v = busy_vcpu(&t, E_PUSH_RBP, top);
    let want = Regs {
        rip: E_PUSH_RBP + 1,
        rsp: top - 8,
        ..v.regs
    };
    let slot = STACK_LO_GPA + 0x7f8;
    emulated_hit(
        &t,
        &e,
        v,
        want,
        &[(slot, 0xbbbb_0000u64.to_le_bytes().to_vec())],
    );
    assert_eq!(t.peek(Gpa(slot), 8), 0xbbbb_0000u64.to_le_bytes());
    // REX.B push.
    let v = busy_vcpu(&t, E_PUSH_R12, top);
    let want = Regs {
        rip: E_PUSH_R12 + 2,
        rsp: top - 8,
        ..v.regs
    };
    let r12v = 0x1212_1212_3434_3434u64.to_le_bytes().to_vec();
    emulated_hit(&t, &e, v, want, &[(slot, r12v)]);
    // `push top` stores RSP as it was before the push.
    let v = busy_vcpu(&t, E_PUSH_RSP, top);
    let want = Regs {
        rip: E_PUSH_RSP + 1,
        rsp: top - 8,
        ..v.regs
    };
    emulated_hit(&t, &e, v, want, &[(slot, top.to_le_bytes().to_vec())]);
}

#[test]
fn a_push_across_a_page_boundary_writes_both_frames() {
    let (t, e) = setup(1);
    setup_stack(&t);
    // [top-8, top) = the last 5 bytes of the lower page and the first 3 of the upper one.
    let top = STACK + 0x1003;
    let v = busy_vcpu(&t, E_PUSH_R12, top);
    let want = Regs {
        rip: E_PUSH_R12 + 2,
        rsp: top - 8,
        ..v.regs
    };
    let bytes = 0x1212_1212_3434_3434u64.to_le_bytes();
    emulated_hit(
        &t,
        &e,
        v,
        want,
        &[
            (STACK_LO_GPA + 0xffb, bytes[..5].to_vec()),
            (STACK_HI_GPA, bytes[5..].to_vec()),
        ],
    );
}

/// Expects a hit on `site` with `v` to take the single-step path: byte restored, step on,
/// no set_regs, nothing counted as emulated.
fn stepped_hit(t: &MockTarget, e: &ProbeEngine, mut v: MockVcpu) {
    let site = v.regs.rip;
    let (h, _) = counter();
    let id = e.register(Gva(site), h);
    e.arm(t, Gva(site)).unwrap();
    let orig = EMUL_CODE[usize::try_from(site - EMUL).unwrap()];
    t.take_log();
    assert_eq!(
        e.on_breakpoint(t, &mut v, site),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!(
        t.take_log(),
        [write(gpa_of(site), orig), set_debug(0, true)],
        "{site:#x}"
    );
    assert_eq!(
        e.on_single_step(t, &mut v),
        Ok(Some(HookDecision::Continue))
    );
    assert_eq!(
        t.take_log(),
        [write(gpa_of(site), 0xcc), set_debug(0, false)]
    );
    assert_eq!(
        e.stats(id),
        Some(ProbeStats {
            hits: 1,
            nmissed: 0,
            emulated: 0
        })
    );
}

#[test]
fn a_push_onto_an_unmapped_stack_falls_back_to_the_step() {
    let (t, e) = setup(1);
    // No stack mapped at all.
    stepped_hit(&t, &e, busy_vcpu(&t, E_PUSH_RBP, STACK + 0x800));
    // The lower page is mapped, the upper is not: the crossing push writes nothing.
    let (t, e) = setup(1);
    t.map(Gva(STACK), Gpa(STACK_LO_GPA), 0x1000, false);
    let before = t.peek(Gpa(STACK_LO_GPA), 0x1000);
    stepped_hit(&t, &e, busy_vcpu(&t, E_PUSH_RBP, STACK + 0x1004));
    assert_eq!(t.peek(Gpa(STACK_LO_GPA), 0x1000), before);
}

#[test]
fn guest_single_step_and_data_watchpoints_keep_the_step_path() {
    // The guest's own TF: its #DB must come after the instruction.
    let (t, e) = setup(1);
    let mut v = busy_vcpu(&t, E_NOP5, 0);
    v.regs.rflags |= crate::target::RFLAGS_TF;
    stepped_hit(&t, &e, v);
    // A write watchpoint (DR7: slot 0 enabled, R/W = 01) must see the push's store; a nop
    // is still emulated.
    let (t, e) = setup(1);
    setup_stack(&t);
    let base = GuestDebug {
        hw_breakpoints: true,
        dr: [STACK + 0x7f8, 0, 0, 0],
        dr7: 0b01 | (0b01 << 16) | (0b11 << 18),
        ..GuestDebug::default()
    };
    e.set_debug_base(base);
    let site = E_PUSH_RBP;
    let mut v = busy_vcpu(&t, site, STACK + 0x800);
    e.register(Gva(site), counter().0);
    e.arm(t.as_ref(), Gva(site)).unwrap();
    t.take_log();
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, site),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert!(v.debug.single_step);
    e.on_single_step(t.as_ref(), &mut v).unwrap();
    let v = busy_vcpu(&t, E_NOP, 0);
    let want = Regs {
        rip: E_NOP + 1,
        ..v.regs
    };
    emulated_hit(&t, &e, v, want, &[]);
}

#[test]
fn a_handler_can_stop_the_guest_on_an_emulated_hit() {
    let (t, e) = setup(1);
    let (h, seen) = recorder(HookDecision::StopGuest);
    e.register(Gva(E_NOP5), h);
    e.arm(t.as_ref(), Gva(E_NOP5)).unwrap();
    let mut v = busy_vcpu(&t, E_NOP5, 0);
    let before = v.regs;
    t.take_log();
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v, E_NOP5),
        Ok(BreakpointOutcome::Handled(HookDecision::StopGuest))
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Complete already: the vCPU stops just past the instruction, nothing left to step.
    let after = Regs {
        rip: E_NOP5 + 5,
        ..before
    };
    assert_eq!(
        t.take_log(),
        [Call::SetRegs {
            vcpu: 0,
            regs: after
        }]
    );
    assert_eq!(e.stepping_vcpu(), None);
    assert_eq!(e.on_single_step(t.as_ref(), &mut v), Ok(None));
}

#[test]
fn an_emulated_hit_needs_no_step_lock() {
    // vCPU 1 holds the step lock (stepping SITE); vCPU 0 hits an emulated site meanwhile:
    // completed at once, not retried, nothing paused.
    let (t, e) = setup(2);
    e.register(Gva(SITE), counter().0);
    e.arm(t.as_ref(), Gva(SITE)).unwrap();
    let (h, n) = counter();
    e.register(Gva(E_NOP), h);
    e.arm(t.as_ref(), Gva(E_NOP)).unwrap();
    let mut v1 = at(&t, 1, SITE);
    e.on_breakpoint(t.as_ref(), &mut v1, SITE).unwrap();
    assert_eq!(e.stepping_vcpu(), Some(1));
    t.take_log();
    let mut v0 = busy_vcpu(&t, E_NOP, 0);
    assert_eq!(
        e.on_breakpoint(t.as_ref(), &mut v0, E_NOP),
        Ok(BreakpointOutcome::Handled(HookDecision::Continue))
    );
    assert_eq!(n.load(Ordering::Relaxed), 1);
    assert_eq!(v0.regs.rip, E_NOP + 1);
    assert!(matches!(
        t.take_log().as_slice(),
        [Call::SetRegs { vcpu: 0, .. }]
    ));
    e.on_single_step(t.as_ref(), &mut v1).unwrap();
}

mod optimize;
