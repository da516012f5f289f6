//! int3 probes, hardware breakpoints and watchpoints end to end on the real /dev/kvm: the
//! test kernel (symbols from its ELF) and tiny guests (addresses from iced labels).
//!
//! Design note checked here: probes patch real guest memory, so a guest reading its own
//! probed text sees the 0xCC (as with kprobes); every read through hvprobe's introspection
//! sees the original bytes.

use std::sync::Arc;
use std::time::Duration;

use hvprobe_tests::code_asm::*;
use hvprobe_tests::{Program, assemble, emit_exit, emit_point, skip};
use introspect::events::{self, Event, EventKind, EventReceiver, Sources};
use introspect::session::{Introspector, ProbeRequest, SessionSpec, WatchRequest};
use introspect::target::Target;
use introspect::{Gva, PhysMem};
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::instrument::IntrospectHook;
use vmm::outcome::Outcome;
use vmm::vm::Vm;

/// A VM with a session attached, paused before its first instruction.
struct Session {
    vm: Vm,
    intro: Arc<Introspector>,
    sources: Arc<Sources>,
    events: EventReceiver,
}

impl Session {
    fn new(kernel: KernelSource, cmdline: &str, cpus: u8, spec: &SessionSpec) -> Session {
        let config = VmConfig {
            kernel,
            cmdline: Some(cmdline.to_string()),
            cpus,
            mem_size: 64 << 20,
            serial: SerialOutput::Sink,
            quiet: true,
            ..VmConfig::default()
        };
        let symbols = vmm::instrument::load_symbols(&config).unwrap();
        let sources = Arc::new(Sources::new());
        let (sink, events) = events::channel(sources.clone(), 1 << 16);
        let intro = Arc::new(Introspector::new(symbols, usize::from(cpus), sink));
        let hook = Arc::new(IntrospectHook::new(intro.clone()));
        let mut vm = Vm::new(&config, Some(hook.clone())).unwrap();
        vm.start_paused().unwrap();
        hook.attach(vm.target(), vm.ram_control());
        intro.setup(&vm.target(), spec).unwrap();
        Session {
            vm,
            intro,
            sources,
            events,
        }
    }

    fn run(&mut self) -> Outcome {
        self.vm.resume_all().unwrap();
        self.vm.wait(Some(Duration::from_secs(60))).unwrap()
    }

    fn events(&self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv()).collect()
    }

    fn hits(&self, name: &str) -> u64 {
        self.sources
            .iter()
            .find(|(_, s)| s.name() == name)
            .unwrap_or_else(|| panic!("no source {name}"))
            .1
            .hits()
    }
}

fn spec(probes: &[&str], hbreaks: &[&str]) -> SessionSpec {
    SessionSpec {
        probes: probes.iter().map(|p| ProbeRequest::int3(*p)).collect(),
        hbreaks: hbreaks.iter().map(ToString::to_string).collect(),
        watches: Vec::new(),
    }
}

fn reg(e: &Event, name: &str) -> u64 {
    e.regs.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn probe_hits_carry_registers_symbols_and_counts() {
    let mut s = Session::new(
        KernelSource::Embedded,
        "",
        1,
        &spec(&["tk_probe_target", "tk_loop_body"], &[]),
    );
    assert_eq!(
        s.run(),
        Outcome::GuestExit { code: 0 },
        "the probed kernel still passes its own checks"
    );
    let events = s.events();
    let target: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.symbol
                .as_deref()
                .is_some_and(|n| n.starts_with("tk_probe_target+0x0"))
        })
        .collect();
    assert_eq!(target.len(), 1);
    assert_eq!(
        (reg(target[0], "rdi"), reg(target[0], "rsi")),
        (6, 7),
        "tk_probe_target(6, 7)"
    );
    assert_eq!(target[0].kind, EventKind::Probe);
    let body: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.symbol
                .as_deref()
                .is_some_and(|n| n.starts_with("tk_loop_body+0x0"))
        })
        .collect();
    assert_eq!(body.len(), 100);
    for (i, e) in body.iter().enumerate() {
        assert_eq!(reg(e, "rdi"), i as u64, "tk_loop_body(i) in order");
        assert_eq!(e.hit, i as u64 + 1);
        assert_eq!(reg(e, "rip"), e.addr);
    }
    assert_eq!(s.hits("probe tk_loop_body"), 100);
}

#[test]
fn several_probes_at_one_address_share_one_int3() {
    let mut s = Session::new(
        KernelSource::Embedded,
        "",
        1,
        &spec(&["tk_loop_body", "tk_loop_body+0", "tk_loop_body+4"], &[]),
    );
    let probes = s.intro.engine().probes();
    assert_eq!(probes.len(), 3);
    assert_eq!(probes[0].site, probes[1].site, "aggregated");
    // the site holds one int3; hvprobe's reads see the original byte
    let site = probes[0].site;
    let symbols = vmm::kernel_symbols::kernel_symbols(vmm::test_kernel::TEST_KERNEL)
        .unwrap()
        .0;
    assert_eq!(site.raw(), symbols.addr_of("tk_loop_body").unwrap());
    let mut raw = [0u8; 1];
    s.vm.memory()
        .read_phys(introspect::Gpa(site.raw()), &mut raw)
        .unwrap();
    assert_eq!(raw[0], 0xcc, "the int3 is in guest memory");
    let mut seen = [0u8; 1];
    s.intro
        .engine()
        .read_phys(s.vm.memory(), introspect::Gpa(site.raw()), &mut seen)
        .unwrap();
    assert_eq!(
        seen[0], 0x55,
        "recover_probed_instruction gives back `push rbp`"
    );
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(s.hits("probe tk_loop_body"), 100);
    assert_eq!(s.hits("probe tk_loop_body+0"), 100);
    assert_eq!(s.hits("probe tk_loop_body+4"), 100);
}

#[test]
fn hardware_breakpoint_and_probe_on_the_same_instruction() {
    let mut s = Session::new(
        KernelSource::Embedded,
        "",
        1,
        &spec(&["tk_loop_body"], &["tk_loop_body"]),
    );
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(s.hits("probe tk_loop_body"), 100);
    assert_eq!(s.hits("hbreak tk_loop_body"), 100);
}

#[test]
fn hardware_breakpoints_on_four_slots() {
    let mut s = Session::new(
        KernelSource::Embedded,
        "",
        1,
        &spec(
            &[],
            &[
                "tk_probe_target",
                "tk_loop_body",
                "tk_leaf",
                "tk_loop_body+4",
            ],
        ),
    );
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(s.hits("hbreak tk_probe_target"), 1);
    assert_eq!(s.hits("hbreak tk_loop_body"), 100);
    assert_eq!(s.hits("hbreak tk_loop_body+4"), 100);
    assert!(s.hits("hbreak tk_leaf") >= 1);
    assert!(s.events().iter().all(|e| e.kind == EventKind::HwBreak));
}

#[test]
fn a_fifth_pinned_hardware_breakpoint_is_refused_by_the_cli() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["run", "--quiet"])
        .args([
            "--hbreak",
            "tk_probe_target",
            "--hbreak",
            "tk_loop_body",
            "--hbreak",
            "tk_leaf",
        ])
        .args(["--hbreak", "tk_main", "--hbreak", "tk_loop_body+4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("No debug register slot free: held by --hbreak tk_probe_target"),
        "{stderr}"
    );
}

#[test]
fn probe_refusals_are_one_clear_line() {
    for (args, needle) in [
        (&["--probe", "no_such_function"][..], "no_such_function"),
        (&["--probe", "tk_probe_target+2"][..], "inside"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
            .args(["run", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

fn raw(p: &Program) -> KernelSource {
    KernelSource::Raw {
        image: p.code.clone(),
        load_addr: p.base,
        entry: p.base,
    }
}

/// Probed instructions that cannot simply run anywhere else (call, jmp, jcc, ret,
/// RIP-relative load) still do exactly what they did unprobed.
#[test]
fn probes_on_branches_calls_returns_and_rip_relative_loads() {
    let p = assemble(|a, l| {
        let mut func = a.create_label();
        let mut data = a.create_label();
        let mut skip_over = a.create_label();
        let mut back = a.create_label();
        a.xor(r8, r8)?;
        a.mov(ecx, 10u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        l.name("call", top);
        a.call(func)?;
        l.here(a, "riprel")?;
        a.mov(rax, qword_ptr(data))?;
        a.add(r8, rax)?;
        l.here(a, "jmp")?;
        a.jmp(skip_over)?;
        a.add(r8, 1000i32)?; // skipped
        a.set_label(&mut skip_over)?;
        a.dec(ecx)?;
        l.here(a, "jcc")?;
        a.jnz(top)?;
        a.jmp(back)?;
        a.set_label(&mut func)?;
        a.add(r8, 1i32)?;
        l.here(a, "ret")?;
        a.ret()?;
        a.set_label(&mut back)?;
        a.mov(eax, r8d)?;
        a.mov(dx, 0x600u32)?;
        a.out(dx, eax)?;
        emit_exit(a, 0)?;
        a.set_label(&mut data)?;
        a.db(&100u64.to_le_bytes())
    });
    let sites: Vec<String> = ["call", "riprel", "jmp", "jcc", "ret"]
        .iter()
        .map(|n| format!("{:#x}", p.label(n)))
        .collect();
    let probes: Vec<&str> = sites.iter().map(String::as_str).collect();
    let mut s = Session::new(raw(&p), "", 1, &spec(&probes, &[]));
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(
        s.vm.points()[0].n,
        10 * (100 + 1),
        "same result as unprobed"
    );
    for site in &sites {
        assert_eq!(s.hits(&format!("probe {site}")), 10, "{site}");
    }
}

#[test]
fn two_vcpus_run_through_one_probe() {
    // Both vCPUs call `f` 50 times; vCPU 1 then sets a flag and halts; vCPU 0 waits for the
    // flag and exits with both sums checked.
    let flag = 0x30_0000u64;
    let p = assemble(|a, l| {
        let mut f = a.create_label();
        let mut wait = a.create_label();
        let mut cpu1_done = a.create_label();
        a.mov(ecx, 50u32)?;
        a.xor(r8, r8)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.test(rdi, rdi)?;
        a.jnz(cpu1_done)?;
        a.mov(rbx, flag)?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(qword_ptr(rbx), 1i32)?;
        a.jne(wait)?;
        a.mov(eax, r8d)?;
        a.mov(dx, 0x600u32)?;
        a.out(dx, eax)?;
        emit_exit(a, 0)?;
        a.set_label(&mut cpu1_done)?;
        a.mov(rbx, flag)?;
        a.mov(qword_ptr(rbx), 1i32)?;
        let mut halt = a.create_label();
        a.set_label(&mut halt)?;
        a.hlt()?;
        a.jmp(halt)?;
        a.set_label(&mut f)?;
        l.name("f", f);
        a.add(r8, 2i32)?;
        a.ret()
    });
    let site = format!("{:#x}", p.label("f"));
    let mut s = Session::new(raw(&p), "", 2, &spec(&[&site], &[]));
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(s.vm.points()[0].n, 100, "vCPU 0's calls all ran");
    let events = s.events();
    let per_vcpu = |v: u32| {
        events
            .iter()
            .filter(|e| e.vcpu == v && e.kind == EventKind::Probe)
            .count()
    };
    assert_eq!((per_vcpu(0), per_vcpu(1)), (50, 50));
    assert_eq!(s.hits(&format!("probe {site}")), 100);
}

#[test]
fn disarm_while_the_guest_runs_through_the_probe() {
    let counter = 0x30_0000u64;
    let p = assemble(|a, l| {
        let mut f = a.create_label();
        let mut top = a.create_label();
        a.mov(rbx, counter)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.jmp(top)?;
        a.set_label(&mut f)?;
        l.name("f", f);
        a.inc(qword_ptr(rbx))?;
        a.ret()
    });
    let site = format!("{:#x}", p.label("f"));
    let mut s = Session::new(raw(&p), "", 1, &spec(&[&site], &[]));
    s.vm.resume_all().unwrap();
    let name = format!("probe {site}");
    let sources = s.sources.clone();
    let hits = |sources: &Sources| {
        sources
            .iter()
            .find(|(_, x)| x.name() == name)
            .unwrap()
            .1
            .hits()
    };
    assert!(
        s.vm.wait_until(Duration::from_secs(20), |_| hits(&sources) >= 20)
            .unwrap()
            .is_none()
    );
    let target = s.vm.target();
    s.intro.engine().disarm(&target, Gva(p.label("f"))).unwrap();
    let after = hits(&sources);
    let mut byte = [0u8; 1];
    s.vm.memory()
        .read_phys(introspect::Gpa(p.label("f")), &mut byte)
        .unwrap();
    assert_ne!(byte[0], 0xcc, "original byte back");
    let read = |vm: &Vm| vm.memory().read_u64(vmm::memory::Gpa(counter)).unwrap();
    let c0 = read(&s.vm);
    assert!(
        s.vm.wait_until(Duration::from_secs(20), |vm| read(vm) > c0 + 1000)
            .unwrap()
            .is_none(),
        "guest runs on"
    );
    assert!(
        hits(&sources) <= after + 1,
        "no hits after disarm (one may have been in flight)"
    );
    assert!(target.vcpu_count() == 1);
}

#[test]
fn a_guest_reading_its_probed_text_sees_the_int3() {
    let p = assemble(|a, l| {
        let mut f = a.create_label();
        a.call(f)?;
        a.movzx(eax, byte_ptr(f))?;
        a.mov(dx, 0x600u32)?;
        a.out(dx, eax)?;
        emit_exit(a, 0)?;
        a.set_label(&mut f)?;
        l.name("f", f);
        a.nop()?;
        a.ret()
    });
    let site = format!("{:#x}", p.label("f"));
    let mut s = Session::new(raw(&p), "", 1, &spec(&[&site], &[]));
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    assert_eq!(s.vm.points()[0].n, 0xcc);
    assert_eq!(s.hits(&format!("probe {site}")), 1);
}

#[test]
fn data_watchpoint_fires_on_hardware_kvm() {
    let var = 0x30_0000u64;
    let p = assemble(|a, _| {
        a.mov(rbx, var)?;
        a.mov(ecx, 5u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(qword_ptr(rbx))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        emit_point(a, 1)?;
        emit_exit(a, 0)
    });
    let spec = SessionSpec {
        watches: vec![WatchRequest {
            at: format!("{var:#x}"),
            len: 8,
            write_only: true,
        }],
        ..SessionSpec::default()
    };
    let mut s = Session::new(raw(&p), "", 1, &spec);
    assert_eq!(
        s.run(),
        Outcome::GuestExit { code: 0 },
        "a watchpoint never breaks the guest"
    );
    if !vmm::kvm_probe::is_fast_kvm() {
        skip(
            "data watchpoint hits",
            "this KVM never fires data watchpoints (shared/PLATFORM.md); needs hardware KVM",
        );
        return;
    }
    let events = s.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Watch { write: true })
            .count(),
        5
    );
}

/// Probes on the instructions a function entry starts with (`endbr64; push rbp;
/// mov rbp, rsp; nop5`) complete in the hit's own exit: the host emulates them (no
/// single-step, the int3 stays armed), and the guest computes what it computes unprobed.
#[test]
fn probes_on_function_entry_instructions_take_one_exit() {
    const CALLS: u64 = 10;
    let p = assemble(|a, l| {
        let mut f = a.create_label();
        let mut done = a.create_label();
        a.xor(r8, r8)?;
        a.xor(r9, r9)?;
        a.xor(edi, edi)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        // rbp = 0x1000 + i going in; f(i) must hand it back unchanged.
        a.lea(rbp, qword_ptr(rdi + 0x1000))?;
        a.call(f)?;
        a.add(r9, rbp)?;
        a.inc(rdi)?;
        a.cmp(rdi, i32::try_from(CALLS).unwrap())?;
        a.jne(top)?;
        a.jmp(done)?;
        // f(i): r8 += saved rbp (read back through the frame) + i.
        a.set_label(&mut f)?;
        l.name("endbr", f);
        a.db(&[0xf3, 0x0f, 0x1e, 0xfa])?;
        l.here(a, "push")?;
        a.push(rbp)?;
        l.here(a, "mov")?;
        a.db(&[0x48, 0x89, 0xe5])?;
        l.here(a, "nop5")?;
        a.db(&[0x0f, 0x1f, 0x44, 0x00, 0x00])?;
        a.mov(rax, qword_ptr(rbp))?;
        a.add(r8, rax)?;
        a.add(r8, rdi)?;
        a.mov(rbp, 0xdead_u64)?;
        a.pop(rbp)?;
        a.ret()?;
        a.set_label(&mut done)?;
        // Both sums into one number: r8 (= sum of 0x1000 + 2i) + 0x10000 * (r9 == sum).
        let mut bad = a.create_label();
        a.cmp(
            r9,
            i32::try_from(CALLS * 0x1000 + CALLS * (CALLS - 1) / 2).unwrap(),
        )?;
        a.jne(bad)?;
        a.add(r8, 0x10000)?;
        a.set_label(&mut bad)?;
        a.mov(eax, r8d)?;
        a.mov(dx, 0x600u32)?;
        a.out(dx, eax)?;
        emit_exit(a, 0)
    });
    let names = ["endbr", "push", "mov", "nop5"];
    let sites: Vec<String> = names.iter().map(|n| format!("{:#x}", p.label(n))).collect();
    let probes: Vec<&str> = sites.iter().map(String::as_str).collect();
    let mut s = Session::new(raw(&p), "", 1, &spec(&probes, &[]));
    assert_eq!(s.run(), Outcome::GuestExit { code: 0 });
    let want = 0x10000 + CALLS * 0x1000 + CALLS * (CALLS - 1);
    assert_eq!(
        u64::from(s.vm.points()[0].n),
        want,
        "same result as unprobed, rbp handed back"
    );
    for site in &sites {
        assert_eq!(s.hits(&format!("probe {site}")), CALLS, "{site}");
    }
    let probes = s.intro.engine().probes();
    assert_eq!(probes.len(), names.len());
    for info in &probes {
        assert_eq!(info.stats.hits, CALLS, "{info:?}");
        assert_eq!(
            info.stats.emulated, CALLS,
            "every hit completed in its own exit (no single-step): {info:?}"
        );
        assert!(info.armed, "the int3 never left: {info:?}");
    }
    let events = s.events();
    let probe_events = events.iter().filter(|e| e.kind == EventKind::Probe).count();
    assert_eq!(probe_events as u64, CALLS * names.len() as u64);
}
