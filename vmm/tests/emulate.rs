//! The host-side instruction emulator (`vmm::platform::emulate`) on the real /dev/kvm: tiny
//! ring-0 guests execute the instructions hvprobe can emulate, a `DebugHook` hands every
//! emulation failure to the `Emulator`, and the guest's own view of the results (written to
//! its memory) is checked. On hardware KVM nothing surfaces and the same checks hold natively.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hvprobe_tests::code_asm::*;
use hvprobe_tests::{Program, assemble, emit_exit};
use iced_x86::IcedError;
use iced_x86::code_asm::CodeLabel;
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::memory::{Gpa, GuestMem};
use vmm::outcome::Outcome;
use vmm::platform::emulate::{Emulated, Emulator, VcpuCpu};
use vmm::target::VmTarget;
use vmm::vcpu::exit::{DebugExit, InternalError, StopReason};
use vmm::vcpu::{DebugHook, HookAction, VcpuCtx};
use vmm::vm::Vm;

/// Where the guests keep their data (identity-mapped RAM).
const DATA: u64 = 0x20_0000;

/// Runs every emulation failure through the emulator and records what it did.
#[derive(Default)]
struct EmuHook {
    emu: Emulator,
    mem: OnceLock<GuestMem>,
    target: OnceLock<VmTarget>,
    /// (mnemonic, RIP, how it ended) per emulation failure.
    seen: Mutex<Vec<(String, u64, String)>>,
}

impl DebugHook for EmuHook {
    fn on_debug(&self, _vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction {
        HookAction::Stop(StopReason::Crash(format!(
            "unexpected debug exit {exit:x?}"
        )))
    }

    fn on_internal_error(&self, vcpu: &mut VcpuCtx<'_>, err: &InternalError) -> Option<HookAction> {
        if err.suberror != 1 {
            return None;
        }
        let mem = self.mem.get()?;
        let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
        let mut cpu = VcpuCpu::new(vcpu, self.target.get());
        let result = self.emu.run(&mut cpu, mem);
        let (name, how, action) = match result {
            Emulated::Done { mnemonic } => {
                (mnemonic.to_string(), "done".into(), HookAction::Continue)
            }
            Emulated::Faulted {
                mnemonic,
                exception,
            } => (
                mnemonic.to_string(),
                format!("{exception}"),
                HookAction::Continue,
            ),
            Emulated::Retry { mnemonic, reason } => (
                mnemonic.to_string(),
                format!("retry: {reason}"),
                HookAction::Continue,
            ),
            Emulated::Refused {
                mnemonic,
                rip,
                bytes,
                reason,
            } => {
                let msg = format!("refused {mnemonic} at {rip:#x} {bytes:02x?}: {reason}");
                (
                    mnemonic,
                    msg.clone(),
                    HookAction::Stop(StopReason::Crash(msg)),
                )
            }
        };
        self.seen.lock().unwrap().push((name, rip, how));
        Some(action)
    }
}

fn run(p: &Program) -> (Outcome, Arc<EmuHook>, Vm) {
    let config = VmConfig {
        kernel: KernelSource::Raw {
            image: p.code.clone(),
            load_addr: p.base,
            entry: p.base,
        },
        cpus: 1,
        mem_size: 64 << 20,
        serial: SerialOutput::Sink,
        quiet: true,
        timeout: Some(Duration::from_secs(60)),
        ..VmConfig::default()
    };
    let hook = Arc::new(EmuHook::default());
    let mut vm = Vm::new(&config, Some(hook.clone())).expect("VM builds");
    hook.mem.set(vm.memory().clone()).ok().unwrap();
    vm.start_paused().expect("VM starts");
    hook.target.set(vm.target()).ok().unwrap();
    vm.resume_all().unwrap();
    let outcome = vm.wait(Some(Duration::from_secs(60))).expect("VM runs");
    (outcome, hook, vm)
}

fn report(what: &str, hook: &EmuHook) {
    let seen = hook.seen.lock().unwrap();
    let names: Vec<String> = seen
        .iter()
        .map(|(m, rip, how)| format!("{m}@{rip:#x}({how})"))
        .collect();
    // Straight to stderr so it shows without --nocapture.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{what}: emulation failures on this KVM ({}): {}",
        if vmm::platform::is_software_kvm() {
            "kvm_pvm"
        } else {
            "not kvm_pvm"
        },
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    );
    let _ = writeln!(
        std::io::stderr(),
        "{what}: emulator counts {:?}",
        hook.emu.counts()
    );
}

fn read_u32(mem: &GuestMem, at: u64) -> u32 {
    let mut b = [0u8; 4];
    mem.read(Gpa(at), &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn read_u64(mem: &GuestMem, at: u64) -> u64 {
    mem.read_u64(Gpa(at)).unwrap()
}

#[test]
fn guest_sees_the_results_of_emulated_instructions() {
    let p = assemble(|a, _| {
        a.mov(rdi, DATA)?;
        // fwait: nothing pending.
        a.wait()?;
        // ldmxcsr / stmxcsr: round down (RC=01), read back.
        a.mov(dword_ptr(rdi), 0x3f80u32)?;
        a.ldmxcsr(dword_ptr(rdi))?;
        a.stmxcsr(dword_ptr(rdi + 4))?;
        // popcnt: register source, memory source, and zero (ZF) with the flags saved.
        a.mov(rbx, 0xf0f0_0000_0000_0001u64)?;
        a.popcnt(rax, rbx)?;
        a.mov(qword_ptr(rdi + 8), rax)?;
        a.mov(rax, 0x0101_0101_0101_0101u64)?;
        a.mov(qword_ptr(rdi + 0x10), rax)?;
        a.popcnt(rcx, qword_ptr(rdi + 0x10))?;
        a.mov(qword_ptr(rdi + 0x18), rcx)?;
        a.xor(edx, edx)?;
        a.popcnt(r8, rdx)?;
        a.pushfq()?;
        a.pop(rax)?;
        a.mov(qword_ptr(rdi + 0x20), rax)?;
        a.mov(qword_ptr(rdi + 0x28), r8)?;
        // fnclex, fninit, then fxsave64 / fxrstor64 round trip (the image keeps MXCSR).
        a.fnclex()?;
        a.fninit()?;
        a.fxsave64(ptr(rdi + 0x200))?;
        a.fxrstor64(ptr(rdi + 0x200))?;
        a.stmxcsr(dword_ptr(rdi + 0x30))?;
        // cmpxchg16b: succeeds once (memory 1:2 -> 3:4), then fails (loads 3:4).
        a.mov(qword_ptr(rdi + 0x40), 1i32)?;
        a.mov(qword_ptr(rdi + 0x48), 2i32)?;
        a.mov(eax, 1u32)?;
        a.mov(edx, 2u32)?;
        a.mov(ebx, 3u32)?;
        a.mov(ecx, 4u32)?;
        a.lock().cmpxchg16b(xmmword_ptr(rdi + 0x40))?;
        a.setz(byte_ptr(rdi + 0x50))?;
        a.mov(eax, 9u32)?;
        a.mov(edx, 9u32)?;
        a.lock().cmpxchg16b(xmmword_ptr(rdi + 0x40))?;
        a.setz(byte_ptr(rdi + 0x51))?;
        a.mov(qword_ptr(rdi + 0x58), rax)?;
        a.mov(qword_ptr(rdi + 0x60), rdx)?;
        emit_exit(a, 0)
    });
    let (outcome, hook, vm) = run(&p);
    report("core program", &hook);
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 0 },
        "{:?}",
        hook.seen.lock().unwrap()
    );
    let m = vm.memory();
    assert_eq!(read_u32(m, DATA + 4), 0x3f80, "stmxcsr after ldmxcsr");
    assert_eq!(read_u64(m, DATA + 8), 9, "popcnt rax, rbx");
    assert_eq!(read_u64(m, DATA + 0x18), 8, "popcnt rcx, [mem]");
    let flags = read_u64(m, DATA + 0x20);
    assert_eq!(read_u64(m, DATA + 0x28), 0, "popcnt of zero");
    assert_eq!(flags & 0x8d5, 0x40, "popcnt of zero: ZF only ({flags:#x})");
    assert_eq!(
        read_u32(m, DATA + 0x30),
        0x3f80,
        "MXCSR through fxsave/fxrstor"
    );
    // The fxsave image: FCW 0x37f after fninit, MXCSR 0x3f80, MXCSR_MASK nonzero.
    let mut img = [0u8; 32];
    m.read(Gpa(DATA + 0x200), &mut img).unwrap();
    assert_eq!(
        u16::from_le_bytes([img[0], img[1]]),
        0x37f,
        "FCW after fninit"
    );
    assert_eq!(u16::from_le_bytes([img[2], img[3]]), 0, "FSW after fninit");
    assert_eq!(u32::from_le_bytes(img[24..28].try_into().unwrap()), 0x3f80);
    assert_ne!(u32::from_le_bytes(img[28..32].try_into().unwrap()), 0);
    assert_eq!(read_u64(m, DATA + 0x40), 3, "cmpxchg16b stored RCX:RBX");
    assert_eq!(read_u64(m, DATA + 0x48), 4);
    let mut z = [0u8; 2];
    m.read(Gpa(DATA + 0x50), &mut z).unwrap();
    assert_eq!(z, [1, 0], "ZF: success then failure");
    assert_eq!(
        (read_u64(m, DATA + 0x58), read_u64(m, DATA + 0x60)),
        (3, 4),
        "failed cmpxchg16b loads RDX:RAX"
    );
    if vmm::platform::is_software_kvm() {
        let seen = hook.seen.lock().unwrap();
        assert!(
            seen.iter().all(|(_, _, how)| how == "done"),
            "every surfaced instruction completed: {seen:?}"
        );
    }
}

/// Where the guests' IDT and IDTR live.
const IDT: u64 = DATA + 0x1000;
const IDTR: u64 = DATA + 0x2000;
/// Where exception handlers store the error code and the faulting RIP.
const FAULT_INFO: u64 = DATA + 0x300;

/// Emits code that installs a 64-bit interrupt gate for `vector` pointing at `handler`
/// (code selector 0x10, hvprobe's boot CS) and loads an IDT of 32 entries.
fn emit_gate(a: &mut CodeAssembler, vector: u64, handler: CodeLabel) -> Result<(), IcedError> {
    let e = IDT + vector * 16;
    a.lea(rax, ptr(handler))?;
    a.mov(rdi, e)?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), 0x10u32)?;
    a.mov(word_ptr(rdi + 4), 0x8e00u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0u32)?;
    a.mov(rdi, IDTR)?;
    a.mov(word_ptr(rdi), 16u32 * 32 - 1)?;
    a.mov(rax, IDT)?;
    a.mov(qword_ptr(rdi + 2), rax)?;
    a.lidt(ptr(rdi))
}

/// Emits a handler that stores the error code (if `with_code`) and the faulting RIP at
/// [`FAULT_INFO`] and exits with `code`.
fn emit_handler(a: &mut CodeAssembler, with_code: bool, code: u32) -> Result<(), IcedError> {
    a.mov(rdi, FAULT_INFO)?;
    if with_code {
        a.pop(rax)?;
    } else {
        a.mov(rax, u64::MAX)?;
    }
    a.mov(qword_ptr(rdi), rax)?;
    a.pop(rax)?;
    a.mov(qword_ptr(rdi + 8), rax)?;
    emit_exit(a, code)
}

#[test]
fn an_emulated_fault_reaches_the_guest_handler() {
    // ldmxcsr with a reserved MXCSR bit: #GP(0) at the ldmxcsr, delivered through the
    // guest's IDT (injected by the emulator on kvm_pvm, raised natively on hardware).
    let p = assemble(|a, l| {
        let mut gp = a.create_label();
        emit_gate(a, 13, gp)?;
        a.mov(rdi, DATA)?;
        a.mov(dword_ptr(rdi), 0x1_1f80u32)?;
        l.here(a, "bad")?;
        a.ldmxcsr(dword_ptr(rdi))?;
        emit_exit(a, 1)?;
        a.set_label(&mut gp)?;
        emit_handler(a, true, 13)
    });
    let (outcome, hook, vm) = run(&p);
    report("#GP program", &hook);
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 13 },
        "{:?}",
        hook.seen.lock().unwrap()
    );
    let m = vm.memory();
    assert_eq!(read_u64(m, FAULT_INFO), 0, "#GP error code 0");
    assert_eq!(
        read_u64(m, FAULT_INFO + 8),
        p.label("bad"),
        "RIP of the ldmxcsr"
    );
    if vmm::platform::is_software_kvm() {
        let seen = hook.seen.lock().unwrap();
        assert!(
            seen.iter()
                .any(|(m, _, how)| m == "ldmxcsr" && how == "#GP(0)"),
            "{seen:?}"
        );
    }
}

#[test]
fn rdrand_rdseed_stac_clac_where_offered() {
    // Each may be absent from this guest's CPU: then it raises #UD, which exits with 6 and
    // the RIP says which. Otherwise the results are checked.
    let p = assemble(|a, l| {
        let mut ud = a.create_label();
        emit_gate(a, 6, ud)?;
        a.mov(rdi, DATA)?;
        l.here(a, "rdrand")?;
        a.rdrand(rax)?;
        a.setc(byte_ptr(rdi + 0x70))?;
        l.here(a, "rdseed")?;
        a.rdseed(rax)?;
        a.setc(byte_ptr(rdi + 0x71))?;
        l.here(a, "stac")?;
        a.stac()?;
        a.pushfq()?;
        a.pop(qword_ptr(rdi + 0x78))?;
        l.here(a, "clac")?;
        a.clac()?;
        a.pushfq()?;
        a.pop(qword_ptr(rdi + 0x80))?;
        emit_exit(a, 0)?;
        a.set_label(&mut ud)?;
        emit_handler(a, false, 6)
    });
    let (outcome, hook, vm) = run(&p);
    report("rdrand/rdseed/stac/clac program", &hook);
    let m = vm.memory();
    let mut cf = [0u8; 2];
    m.read(Gpa(DATA + 0x70), &mut cf).unwrap();
    let reached = match outcome {
        Outcome::GuestExit { code: 0 } => p.label("clac") + 100,
        Outcome::GuestExit { code: 6 } => {
            let rip = read_u64(m, FAULT_INFO + 8);
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "#UD at {rip:#x}: not offered to this guest"
            );
            rip
        }
        other => panic!("{other:?} {:?}", hook.seen.lock().unwrap()),
    };
    if reached > p.label("rdseed") {
        assert_eq!(cf[0], 1, "rdrand sets CF");
    }
    if reached > p.label("stac") {
        assert_eq!(cf[1], 1, "rdseed sets CF");
    }
    if reached > p.label("clac") {
        assert_ne!(read_u64(m, DATA + 0x78) & (1 << 18), 0, "stac sets AC");
        assert_eq!(read_u64(m, DATA + 0x80) & (1 << 18), 0, "clac clears AC");
    }
    let seen = hook.seen.lock().unwrap();
    assert!(seen.iter().all(|(_, _, how)| how == "done"), "{seen:?}");
}

/// Hands emulation failures to the software-KVM accommodation, as the vCPU loop does for
/// Linux guests.
struct AccHook {
    acc: vmm::platform::accommodation::Accommodation,
}

impl DebugHook for AccHook {
    fn on_debug(&self, _vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction {
        HookAction::Stop(StopReason::Crash(format!(
            "unexpected debug exit {exit:x?}"
        )))
    }

    fn on_internal_error(&self, vcpu: &mut VcpuCtx<'_>, err: &InternalError) -> Option<HookAction> {
        if err.suberror != InternalError::EMULATION {
            return None;
        }
        let rip = vcpu.regs().ok()?.rip;
        self.acc.on_emulation_failure(vcpu, rip)
    }
}

/// An instruction neither this KVM's emulator nor hvprobe runs (SSE register code, which
/// Linux's crypto uses and the steering keeps Linux away from) ends the VM with a crash
/// report naming the mnemonic, RIP, symbol and bytes: exit status 66, never a silent skip.
/// An instruction hvprobe does run on the way there (`fwait`) is counted.
#[test]
fn an_instruction_nobody_runs_ends_the_vm_with_a_report() {
    let p = assemble(|a, l| {
        a.wait()?;
        a.mov(ecx, 7u32)?;
        l.here(a, "bad")?;
        a.movd(xmm15, ecx)?;
        emit_exit(a, 0)
    });
    let config = VmConfig {
        kernel: KernelSource::Raw {
            image: p.code.clone(),
            load_addr: p.base,
            entry: p.base,
        },
        mem_size: 64 << 20,
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    // The accommodation needs the guest's memory, which the VM makes: build the VM with a hook
    // that is filled in before the first instruction.
    struct Late(OnceLock<AccHook>);
    impl DebugHook for Late {
        fn on_debug(&self, vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction {
            self.0.get().expect("set before start").on_debug(vcpu, exit)
        }
        fn on_internal_error(
            &self,
            vcpu: &mut VcpuCtx<'_>,
            err: &InternalError,
        ) -> Option<HookAction> {
            self.0.get()?.on_internal_error(vcpu, err)
        }
    }
    let late = Arc::new(Late(OnceLock::new()));
    let mut vm = Vm::new(&config, Some(late.clone())).expect("VM builds");
    let symbols = introspect::symbols::SymbolTable::new(vec![introspect::symbols::Symbol::new(
        "tk_sse_code",
        p.label("bad") - 8,
        't',
    )]);
    let acc = vmm::platform::accommodation::Accommodation::for_linux(
        vm.memory(),
        Some(Arc::new(symbols)),
        1,
        &vmm::phases::Phases::new(true),
    );
    assert!(acc.relay_site().is_none(), "no asm_exc_page_fault here");
    let _ = late.0.set(AccHook { acc });
    vm.start().unwrap();
    let outcome = vm.wait(Some(Duration::from_secs(60))).unwrap();
    if !vmm::platform::is_software_kvm() && outcome == (Outcome::GuestExit { code: 0 }) {
        hvprobe_tests::skip(
            "the crash report for an instruction nobody runs",
            "this KVM runs `movd xmm15, ecx` itself (only kvm_pvm's emulator cannot)",
        );
        return;
    }
    let Outcome::Crash { rip, reason, .. } = &outcome else {
        panic!("a crash report, not {outcome:?}");
    };
    assert_eq!(*rip, p.label("bad"), "{reason}");
    assert_eq!(outcome.exit_code(), vmm::outcome::EXIT_GUEST_CRASH);
    for part in [
        "`movd`",
        &format!("{:#x} (tk_sse_code+0x8)", p.label("bad")),
        "bytes 66 44 0f 6e f9",
    ] {
        assert!(reason.contains(part), "\"{part}\" in: {reason}");
    }
    let acc = &late.0.get().unwrap().acc;
    assert_eq!(acc.emulated(), vec![("fwait".to_string(), 1)]);
    eprintln!("crash report: {reason}");
}
