//! Tiny guests on the real /dev/kvm, one per exit path: port I/O, MMIO, single-step, hardware
//! execute breakpoints, triple fault, and pause-all / resume-all while a guest runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvprobe_tests::code_asm::*;
use hvprobe_tests::{MMIO_TEST_DEVICE, PORT_SCRATCH, Program, assemble, emit_exit, emit_point};
use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, kvm_guest_debug,
};
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::outcome::Outcome;
use vmm::vcpu::exit::{DebugExit, StopReason};
use vmm::vcpu::{DebugHook, HookAction, VcpuCtx};
use vmm::vm::Vm;

fn config(p: &Program, cpus: u8) -> VmConfig {
    VmConfig {
        kernel: KernelSource::Raw {
            image: p.code.clone(),
            load_addr: p.base,
            entry: p.base,
        },
        cpus,
        mem_size: 64 << 20,
        serial: SerialOutput::Sink,
        quiet: true,
        timeout: Some(Duration::from_secs(20)),
        ..VmConfig::default()
    }
}

/// Turns single-stepping on for vCPU 0 before the guest starts.
fn single_step_on(vm: &mut Vm) {
    vm.with_vcpu(0, |v| {
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
            ..Default::default()
        };
        v.set_guest_debug(&dbg).unwrap();
    })
    .unwrap();
}

fn run(
    p: &Program,
    hook: Option<Arc<dyn DebugHook>>,
    setup: impl FnOnce(&mut Vm),
) -> (Outcome, Vm) {
    let mut vm = Vm::new(&config(p, 1), hook).expect("VM builds");
    setup(&mut vm);
    vm.start().expect("VM starts");
    let outcome = vm.wait(Some(Duration::from_secs(20))).expect("VM runs");
    (outcome, vm)
}

#[test]
fn pio_point_and_exit_code() {
    let p = assemble(|a, _| {
        emit_point(a, 41)?;
        emit_point(a, 42)?;
        emit_exit(a, 17)
    });
    let (outcome, vm) = run(&p, None, |_| {});
    assert_eq!(outcome, Outcome::GuestExit { code: 17 });
    assert_eq!(
        vm.points().iter().map(|p| p.n).collect::<Vec<_>>(),
        [41, 42]
    );
}

#[test]
fn pio_reads_come_back_from_the_device() {
    // write SCRATCH over PIO, read it back, exit with what was read
    let p = assemble(|a, _| {
        a.mov(dx, u32::from(PORT_SCRATCH))?;
        a.mov(eax, 0x2au32)?;
        a.out(dx, eax)?;
        a.xor(eax, eax)?;
        a.in_(eax, dx)?;
        a.mov(dx, 0x604u32)?;
        a.out(dx, eax)
    });
    let (outcome, _) = run(&p, None, |_| {});
    assert_eq!(outcome, Outcome::GuestExit { code: 0x2a });
}

#[test]
fn mmio_write_then_read_of_every_width() {
    // For widths 1, 2, 4, 8: write SCRATCH through MMIO, read it back, add to a sum.
    let p = assemble(|a, _| {
        a.mov(rbx, MMIO_TEST_DEVICE + 0xc)?;
        a.xor(r8, r8)?;
        a.mov(byte_ptr(rbx), 0x11u32)?;
        a.movzx(rax, byte_ptr(rbx))?;
        a.add(r8, rax)?;
        a.mov(word_ptr(rbx), 0x2222u32)?;
        a.movzx(rax, word_ptr(rbx))?;
        a.add(r8, rax)?;
        a.mov(dword_ptr(rbx), 0x3333_3333u32)?;
        a.mov(eax, dword_ptr(rbx))?;
        a.add(r8, rax)?;
        a.mov(rax, 0x4444_4444_4444_4444u64)?;
        a.mov(qword_ptr(rbx), rax)?;
        a.mov(rax, qword_ptr(rbx))?;
        a.shr(rax, 32)?;
        a.add(r8, rax)?;
        // exit code: low 6 bits of the sum, and a POINT with the low 32 bits for the test
        a.mov(eax, r8d)?;
        a.mov(dx, 0x600u32)?;
        a.out(dx, eax)?;
        emit_exit(a, 0)
    });
    let (outcome, vm) = run(&p, None, |_| {});
    assert_eq!(outcome, Outcome::GuestExit { code: 0 });
    let expect = 0x11u64 + 0x2222 + 0x3333_3333 + 0x4444_4444;
    assert_eq!(vm.points()[0].n, u32::try_from(expect).unwrap());
}

#[test]
fn triple_fault_ends_the_vm_as_a_crash() {
    let p = assemble(|a, l| {
        a.lidt(ptr(0x7ff0u64))?; // zero limit IDT (memory there is zero)
        l.here(a, "ud2")?;
        a.ud2()
    });
    let (outcome, _) = run(&p, None, |_| {});
    assert_eq!(
        outcome,
        Outcome::TripleFault {
            vcpu: 0,
            rip: p.label("ud2")
        }
    );
    assert_eq!(outcome.exit_code(), vmm::outcome::EXIT_GUEST_CRASH);
}

/// Records every debug exit and continues. Over an execute breakpoint it steps the way that
/// works on every KVM: disable that slot, single-step one instruction, re-arm. (Setting RF in
/// RFLAGS is what hardware KVM honours; this platform's ring-0 emulator ignores RF and would
/// hit the same breakpoint forever.)
#[derive(Default)]
struct Recorder {
    exits: Mutex<Vec<DebugExit>>,
    armed: Mutex<Option<kvm_guest_debug>>,
}

impl Recorder {
    fn arm(&self, vcpu: &VcpuCtx<'_>, dbg: kvm_guest_debug) {
        vcpu.set_guest_debug(&dbg).unwrap();
        *self.armed.lock().unwrap() = Some(dbg);
    }
}

impl DebugHook for Recorder {
    fn on_debug(&self, vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction {
        let armed = *self.armed.lock().unwrap();
        match (exit.breakpoint_slot(), armed) {
            (Some(slot), Some(mut dbg)) => {
                self.exits.lock().unwrap().push(*exit);
                dbg.arch.debugreg[7] &= !(3 << (2 * slot));
                dbg.control |= KVM_GUESTDBG_SINGLESTEP;
                vcpu.set_guest_debug(&dbg).unwrap();
            }
            (None, Some(dbg)) if dbg.control & KVM_GUESTDBG_USE_HW_BP != 0 => {
                // the step over the breakpoint is done: re-arm every slot
                vcpu.set_guest_debug(&dbg).unwrap();
            }
            _ => self.exits.lock().unwrap().push(*exit),
        }
        HookAction::Continue
    }
}

#[test]
fn single_step_reports_every_instruction() {
    let p = assemble(|a, l| {
        l.here(a, "i0")?;
        a.mov(eax, 1u32)?;
        l.here(a, "i1")?;
        a.add(eax, 2u32)?;
        l.here(a, "i2")?;
        a.nop()?;
        l.here(a, "i3")?;
        emit_exit(a, 5)
    });
    let rec = Arc::new(Recorder::default());
    let (outcome, _) = run(&p, Some(rec.clone()), single_step_on);
    assert_eq!(outcome, Outcome::GuestExit { code: 5 });
    let exits = rec.exits.lock().unwrap();
    assert!(
        exits.iter().all(|e| e.exception == 1 && e.is_single_step()),
        "{exits:x?}"
    );
    // after each instruction the pc is the next one
    let pcs: Vec<u64> = exits.iter().map(|e| e.pc).collect();
    assert_eq!(&pcs[..3], &[p.label("i1"), p.label("i2"), p.label("i3")]);
}

#[test]
fn hardware_execute_breakpoints_on_all_four_slots() {
    // a loop calls four functions 3 times; DR0-DR3 sit on the four
    let p = assemble(|a, l| {
        let mut funcs = [
            a.create_label(),
            a.create_label(),
            a.create_label(),
            a.create_label(),
        ];
        let mut top = a.create_label();
        a.mov(ecx, 3u32)?;
        a.set_label(&mut top)?;
        for f in &funcs {
            a.call(*f)?;
        }
        a.dec(ecx)?;
        a.jnz(top)?;
        emit_exit(a, 0)?;
        for (i, f) in funcs.iter_mut().enumerate() {
            a.set_label(f)?;
            l.name(&format!("f{i}"), *f);
            a.inc(r9)?;
            a.ret()?;
        }
        Ok(())
    });
    let rec = Arc::new(Recorder::default());
    let addrs: Vec<u64> = (0..4).map(|i| p.label(&format!("f{i}"))).collect();
    let dr = addrs.clone();
    let r = rec.clone();
    let (outcome, _) = run(&p, Some(rec.clone()), move |vm| {
        vm.with_vcpu(0, move |v| {
            let mut dbg = kvm_guest_debug {
                control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
                ..Default::default()
            };
            let mut ctl = 0u64;
            for (i, a) in dr.iter().enumerate() {
                dbg.arch.debugreg[i] = *a;
                ctl |= 1 << (2 * i); // L0-L3 enable, R/W = 00 (execute), LEN = 00
            }
            dbg.arch.debugreg[7] = ctl;
            r.arm(v, dbg);
        })
        .unwrap();
    });
    let exits = rec.exits.lock().unwrap();
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 0 },
        "{} exits, first: {:x?}",
        exits.len(),
        &exits[..exits.len().min(6)]
    );
    assert_eq!(exits.len(), 12, "{exits:x?}");
    for (n, e) in exits.iter().enumerate() {
        let slot = usize::from(e.breakpoint_slot().expect("a slot fired"));
        assert_eq!(slot, n % 4);
        assert_eq!(e.pc, addrs[slot]);
        assert_eq!(e.exception, 1);
    }
}

#[test]
fn unexpected_debug_exit_without_a_hook_is_a_crash_with_the_payload() {
    let p = assemble(|a, _| {
        a.nop()?;
        emit_exit(a, 0)
    });
    let (outcome, _) = run(&p, None, single_step_on);
    match outcome {
        Outcome::Crash { reason, .. } => assert!(
            reason.contains("unexpected debug exit (exception 1"),
            "{reason}"
        ),
        o => panic!("expected a crash, got {o:?}"),
    }
}

/// A guest that counts in memory forever; returns (program, counter address).
fn counter_guest() -> (Program, u64) {
    let counter = 0x20_0000u64;
    let p = assemble(|a, _| {
        let mut top = a.create_label();
        a.mov(rbx, counter)?;
        a.set_label(&mut top)?;
        a.inc(qword_ptr(rbx))?;
        a.jmp(top)
    });
    (p, counter)
}

#[test]
fn pause_all_stops_every_vcpu_and_resume_all_restarts() {
    let (p, counter) = counter_guest();
    // 2 vCPUs: the second waits for a SIPI inside KVM_RUN and must pause too
    let mut vm = Vm::new(&config(&p, 2), None).unwrap();
    vm.start().unwrap();
    let read = |vm: &Vm| vm.memory().read_u64(vmm::memory::Gpa(counter)).unwrap();
    let progressed = AtomicU64::new(0);
    let first = vm
        .wait_until(Duration::from_secs(10), |vm| read(vm) > 1000)
        .unwrap();
    assert!(first.is_none(), "guest counts");
    for _ in 0..3 {
        vm.pause_all().unwrap();
        let a = read(&vm);
        std::thread::sleep(Duration::from_millis(100));
        let b = read(&vm);
        assert_eq!(a, b, "no vCPU runs while paused");
        // a paused vCPU answers register reads on its thread
        let rip = vm.with_vcpu(0, |v| v.regs().unwrap().rip).unwrap();
        assert!(rip >= p.base && rip < p.base + p.code.len() as u64);
        vm.resume_all().unwrap();
        let moved = vm
            .wait_until(Duration::from_secs(10), |vm| read(vm) > b + 1000)
            .unwrap();
        assert!(moved.is_none(), "guest counts again after resume");
        progressed.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(progressed.load(Ordering::Relaxed), 3);
    assert_eq!(
        vm.wait(Some(Duration::from_millis(50))).unwrap(),
        Outcome::Timeout
    );
}

#[test]
fn hook_can_stop_the_vm() {
    struct StopAtFirst;
    impl DebugHook for StopAtFirst {
        fn on_debug(&self, _v: &mut VcpuCtx<'_>, _e: &DebugExit) -> HookAction {
            HookAction::Stop(StopReason::GuestExit(9))
        }
    }
    let (p, _) = counter_guest();
    let (outcome, _) = run(&p, Some(Arc::new(StopAtFirst)), single_step_on);
    assert_eq!(outcome, Outcome::GuestExit { code: 9 });
}

/// A guest's own int3 (not a probe of ours) reaches the guest's #BP handler: on hardware KVM
/// it goes there directly; on our software KVM it is an emulation failure that hvprobe's
/// session hands back (RIP past the int3, #BP injected), as `hvprobe run` does.
#[test]
fn the_guests_own_int3_reaches_its_handler() {
    let idt = 0x4_0000u64;
    let idtr = 0x4_1000u64;
    let p = assemble(|a, _| {
        let mut handler = a.create_label();
        a.lea(rax, ptr(handler))?;
        a.mov(rbx, idt)?;
        // gate 3: offset[15:0] | selector 0x10 << 16 | present DPL0 interrupt gate 0x8e << 40 | offset[31:16] << 48
        a.mov(rcx, rax)?;
        a.and(ecx, 0xffff)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 16)?;
        a.and(edx, 0xffff)?;
        a.shl(rdx, 48)?;
        a.or(rcx, rdx)?;
        a.mov(rdx, 0x8e00_0010_0000u64)?;
        a.or(rcx, rdx)?;
        a.mov(qword_ptr(rbx + 3 * 16), rcx)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.mov(qword_ptr(rbx + 3 * 16 + 8), rdx)?;
        a.mov(rsi, idtr)?;
        a.mov(word_ptr(rsi), 0xfffu32)?;
        a.mov(qword_ptr(rsi + 2), rbx)?;
        a.lidt(ptr(rsi))?;
        a.int3()?;
        emit_point(a, 1)?;
        emit_exit(a, 0)?;
        a.set_label(&mut handler)?;
        emit_point(a, 0xb3)?;
        a.iretq()
    });
    let config = config(&p, 1);
    let report = vmm::session::run(&config).expect("VM runs");
    assert_eq!(report.outcome, Outcome::GuestExit { code: 0 });
    assert_eq!(
        report.points.iter().map(|p| p.n).collect::<Vec<_>>(),
        [0xb3, 1]
    );
}
