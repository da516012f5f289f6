//! Jump-optimized probes end to end on real /dev/kvm, with the test kernel's `optloop`
//! workload (tests/test-kernel/src/opt.rs): its probe targets have known first bytes (plain
//! arithmetic, a RIP-relative load, a short jcc out of the window, a loop back into the
//! window), it checks its own checksum (so relocated instructions must behave exactly as the
//! originals), and it runs in ring 0 (emulated here) or ring 3 (native here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use introspect::events::{self, Event, EventReceiver, Sources};
use introspect::probes::{ArmedAs, JumpHandler, JumpKind};
use introspect::session::{DEFAULT_FETCHES, Introspector, ProbeRequest, SessionSpec};
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::devices::test_device::REG_SCRATCH;
use vmm::instrument::{IntrospectHook, Ticker};
use vmm::layout::TEST_DEVICE_MMIO_BASE;
use vmm::outcome::Outcome;
use vmm::test_kernel::TEST_KERNEL;
use vmm::vm::Vm;

/// A VM running `optloop` under an introspection session, with the ring drain ticking.
struct Session {
    vm: Vm,
    intro: Arc<Introspector>,
    sources: Arc<Sources>,
    events: EventReceiver,
    ticker: Option<Ticker>,
}

fn in_guest() -> JumpHandler {
    JumpHandler::InGuest(DEFAULT_FETCHES.to_vec())
}

impl Session {
    fn start(cmdline: &str, probes: Vec<ProbeRequest>) -> Session {
        Session::start_with(cmdline, 1, None, probes)
    }

    /// With `cpus` vCPUs and, if given, the in-guest handlers' way of finding their ring.
    fn start_with(
        cmdline: &str,
        cpus: u8,
        cpu_source: Option<introspect::probes::CpuSource>,
        probes: Vec<ProbeRequest>,
    ) -> Session {
        let config = VmConfig::quiet_test_kernel(cmdline, cpus);
        let symbols = vmm::instrument::load_symbols(&config).unwrap();
        let sources = Arc::new(Sources::new());
        let (sink, events) = events::channel(sources.clone(), 1 << 20);
        let intro = Arc::new(Introspector::new(symbols, usize::from(cpus), sink));
        vmm::instrument::set_platform_cpu_source(&intro);
        if let Some(c) = cpu_source {
            intro.engine().set_cpu_source(c);
        }
        let hook = Arc::new(IntrospectHook::new(intro.clone()));
        let mut vm = Vm::new(&config, Some(hook.clone())).unwrap();
        vm.start_paused().unwrap();
        hook.attach(vm.target(), vm.ram_control());
        let spec = SessionSpec {
            probes,
            ..SessionSpec::default()
        };
        intro.setup(&vm.target(), &spec).unwrap();
        let ticker = Some(Ticker::spawn(intro.clone(), vm.target()));
        vm.resume_all().unwrap();
        Session {
            vm,
            intro,
            sources,
            events,
            ticker,
        }
    }

    fn wait(&mut self) -> Outcome {
        let outcome = self.vm.wait(Some(Duration::from_secs(120))).unwrap();
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
        self.intro.finish(Some(&self.vm.target()));
        outcome
    }

    fn source(&self, at: &str) -> (u64, u64, String) {
        let name = format!("probe {at}");
        let (_, s) = self
            .sources
            .iter()
            .find(|(_, s)| s.name() == name)
            .unwrap_or_else(|| panic!("no source {name}"));
        (s.hits(), s.lost(), s.how())
    }

    fn hits(&self, at: &str) -> u64 {
        self.source(at).0
    }

    fn events(&self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv()).collect()
    }

    fn scratch(&self) -> u64 {
        let mut b = [0u8; 8];
        assert!(
            self.vm
                .io()
                .mmio
                .read(TEST_DEVICE_MMIO_BASE + REG_SCRATCH, &mut b)
        );
        u64::from_le_bytes(b)
    }

    fn armed_as(&self, at: &str) -> ArmedAs {
        self.intro.armed_as(at).unwrap()
    }

    /// Waits (up to 60 s) until `at` has more than `n` hits.
    fn wait_for_hits(&self, at: &str, n: u64) {
        let t = Instant::now();
        while self.hits(at) <= n {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{at}: stuck at {n} hits"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn reg(e: &Event, name: &str) -> u64 {
    e.regs
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name} in {e:?}"))
        .1
}

fn symbol(name: &str) -> u64 {
    let (symbols, _) = vmm::kernel_symbols::kernel_symbols(TEST_KERNEL).unwrap();
    symbols.addr_of(name).unwrap()
}

fn assert_guest_ok(s: &Session, outcome: &Outcome) -> u64 {
    let console = s.vm.console().text();
    assert_eq!(*outcome, Outcome::GuestExit { code: 0 }, "{console}");
    assert!(
        console.contains("checksum") && console.contains(" ok"),
        "{console}"
    );
    s.scratch()
}

#[test]
fn both_handler_kinds_fire_with_the_probed_registers_and_relocated_code_behaves() {
    let iters = 300;
    let mut s = Session::start(
        &format!("hvtest=optloop hviters={iters}"),
        vec![
            ProbeRequest::jump("tk_opt_plain", JumpHandler::Exit, true),
            ProbeRequest::jump("tk_opt_riprel", in_guest(), true),
            ProbeRequest::jump("tk_opt_shortjmp", in_guest(), true),
        ],
    );
    let outcome = s.wait();
    let n = assert_guest_ok(&s, &outcome);
    assert_eq!(n, iters);
    // Every probe became a jump and took every call.
    for (at, kind, len) in [
        ("tk_opt_plain", JumpKind::Exit, 7),
        ("tk_opt_riprel", JumpKind::InGuest, 7),
        ("tk_opt_shortjmp", JumpKind::InGuest, 5),
    ] {
        match s.armed_as(at) {
            ArmedAs::Jump {
                kind: k, len: l, ..
            } => assert_eq!((k, l), (kind, len), "{at}"),
            other => panic!("{at}: {other}"),
        }
        let (hits, lost, how) = s.source(at);
        assert_eq!((hits, lost), (iters, 0), "{at}: {how}");
        assert!(how.starts_with("jump ("), "{at}: {how}");
    }
    // The exit handler sees the probed context: args(i) = (i, i ^ 0x5555) in order.
    let events = s.events();
    let plain = symbol("tk_opt_plain");
    let exits: Vec<&Event> = events.iter().filter(|e| e.addr == plain).collect();
    assert_eq!(exits.len(), 300);
    for (i, e) in exits.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            (reg(e, "rip"), reg(e, "rdi"), reg(e, "rsi")),
            (plain, i, i ^ 0x5555)
        );
    }
    // The in-guest records carry the chosen registers too: rdi = i, and for shortjmp
    // rdi = 0 on every fourth call (the short jcc's taken path ran in the trampoline).
    let riprel = symbol("tk_opt_riprel");
    let rec: Vec<&Event> = events.iter().filter(|e| e.addr == riprel).collect();
    assert_eq!(rec.len(), 300);
    for (i, e) in rec.iter().enumerate() {
        assert_eq!(reg(e, "rdi"), i as u64);
        assert!(reg(e, "tsc") > 0);
    }
    let rsp0 = reg(rec[0], "rsp");
    assert!(
        rec.iter().all(|e| reg(e, "rsp") == rsp0),
        "same frame each call"
    );
    let short = symbol("tk_opt_shortjmp");
    let zeros = events
        .iter()
        .filter(|e| e.addr == short && reg(e, "rdi") == 0)
        .count();
    assert_eq!(zeros, 75);
}

#[test]
fn a_jump_into_the_window_is_refused_and_auto_falls_back_to_int3_with_the_reason() {
    // :jump is refused before anything runs, with the typed reason.
    let config = VmConfig {
        kernel: KernelSource::Embedded,
        cmdline: Some("hvtest=optloop hviters=20".into()),
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    let mut config = config;
    config.instrument.probes = vec!["tk_opt_jump_into:jump".parse().unwrap()];
    let err = match vmm::instrument::run_instrumented(&config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a jump into the window was accepted"),
    };
    assert!(
        err.contains("cannot be jump-optimized") && err.contains("inside the window"),
        "{err}"
    );
    // :auto keeps an int3 there, says why, and the probe still takes every call.
    let mut s = Session::start(
        "hvtest=optloop hviters=20",
        vec![ProbeRequest::jump("tk_opt_jump_into", in_guest(), false)],
    );
    let outcome = s.wait();
    assert_eq!(assert_guest_ok(&s, &outcome), 20);
    match s.armed_as("tk_opt_jump_into") {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("inside the window"), "{r}"),
        other => panic!("{other}"),
    }
    let (hits, _, how) = s.source("tk_opt_jump_into");
    assert_eq!(hits, 20);
    assert!(how.starts_with("int3 (no jump:"), "{how}");
}

#[test]
fn unoptimize_while_the_guest_runs_the_probed_code() {
    // Ring 0: the int3 the probe falls back to works there on this machine.
    let mut s = Session::start(
        "hvtest=optloop",
        vec![ProbeRequest::jump("tk_opt_plain", JumpHandler::Exit, true)],
    );
    s.wait_for_hits("tk_opt_plain", 20);
    assert!(matches!(s.armed_as("tk_opt_plain"), ArmedAs::Jump { .. }));
    let site = introspect::addr::Gva(symbol("tk_opt_plain"));
    let target = s.vm.target();
    assert!(
        s.intro
            .engine()
            .unoptimize(&target, site, "asked by the test")
            .unwrap()
    );
    assert_eq!(
        s.armed_as("tk_opt_plain"),
        ArmedAs::Int3 {
            reason: Some("asked by the test".into())
        }
    );
    let at_switch = s.hits("tk_opt_plain");
    s.wait_for_hits("tk_opt_plain", at_switch + 20);
    // Stop the loop through guest memory; the guest checks its sums.
    let stop = vm_memory::GuestAddress(symbol("TK_OPT_STOP"));
    use vm_memory::Bytes;
    s.vm.memory().inner().write_obj(1u64, stop).unwrap();
    let outcome = s.wait();
    let n = assert_guest_ok(&s, &outcome);
    assert_eq!(s.hits("tk_opt_plain"), n, "every call hit, jump or int3");
    assert!(s.intro.engine().optimized_sites().is_empty());
}

#[test]
fn a_probe_inside_an_optimized_window_unoptimizes_it() {
    let mut s = Session::start(
        "hvtest=optloop",
        vec![ProbeRequest::jump("tk_opt_plain", JumpHandler::Exit, true)],
    );
    s.wait_for_hits("tk_opt_plain", 10);
    // tk_opt_plain+3 is the imul, inside the 7-byte window.
    let target = s.vm.target();
    s.intro
        .add_probe_as(&target, &ProbeRequest::int3("tk_opt_plain+3"))
        .unwrap();
    match s.armed_as("tk_opt_plain") {
        ArmedAs::Int3 { reason: Some(r) } => assert!(r.contains("inside its window"), "{r}"),
        other => panic!("{other}"),
    }
    s.wait_for_hits("tk_opt_plain+3", 10);
    let stop = vm_memory::GuestAddress(symbol("TK_OPT_STOP"));
    use vm_memory::Bytes;
    s.vm.memory().inner().write_obj(1u64, stop).unwrap();
    let outcome = s.wait();
    let n = assert_guest_ok(&s, &outcome);
    let (first, second) = (s.hits("tk_opt_plain"), s.hits("tk_opt_plain+3"));
    assert_eq!(first, n);
    assert!(second > 0 && second <= n, "{second} of {n}");
}

#[test]
fn ring_3_in_guest_probes_run_natively_and_a_full_ring_counts_lost_records() {
    // Native ring 3: 200,000 calls outrun a 1 ms drain of a 65,536-record ring, so records
    // are lost; every call is either a hit or a lost record.
    let iters = 200_000;
    let mut s = Session::start(
        &format!("hvtest=optloop hvring=3 hviters={iters}"),
        vec![
            ProbeRequest::jump("tk_opt_plain", in_guest(), true),
            ProbeRequest::jump("tk_opt_riprel", in_guest(), true),
            ProbeRequest::jump("tk_opt_shortjmp", in_guest(), true),
        ],
    );
    let outcome = s.wait();
    assert_eq!(assert_guest_ok(&s, &outcome), iters);
    let mut lost_total = 0;
    for at in ["tk_opt_plain", "tk_opt_riprel", "tk_opt_shortjmp"] {
        let (hits, lost, how) = s.source(at);
        assert_eq!(
            hits + lost,
            iters,
            "{at}: {hits} hits + {lost} lost ({how})"
        );
        lost_total += lost;
    }
    assert!(
        lost_total > 0,
        "the rings never filled: the test did not test overflow"
    );
    eprintln!("ring 3: {iters} calls x 3 probes, {lost_total} records lost to full rings");
}

#[test]
fn ring_3_exit_handler_probes_take_one_exit_per_call() {
    let iters = 2000;
    let mut s = Session::start(
        &format!("hvtest=optloop hvring=3 hviters={iters}"),
        vec![ProbeRequest::jump("tk_opt_riprel", JumpHandler::Exit, true)],
    );
    let outcome = s.wait();
    assert_eq!(assert_guest_ok(&s, &outcome), iters);
    assert_eq!(s.hits("tk_opt_riprel"), iters);
}

fn hvprobe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(args)
        .output()
        .expect("hvprobe runs")
}

#[test]
fn the_cli_arms_jumps_says_how_in_its_table_and_refuses_impossible_ones() {
    let dir = std::env::temp_dir().join(format!("hvprobe-opt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.jsonl");
    let out = hvprobe(&[
        "run",
        "--probe",
        "tk_loop_body:jump",
        "--probe",
        "tk_probe_target:jump-exit",
        "--probe",
        "tk_leaf:int3",
        "--events",
        events.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let row = |name: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(&format!("probe {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {stderr}"))
            .to_string()
    };
    assert!(
        row("tk_loop_body").contains("jump (in-guest handler"),
        "{stderr}"
    );
    assert!(row("tk_loop_body").contains(" 100 "), "{stderr}");
    assert!(
        row("tk_probe_target").contains("jump (exit handler"),
        "{stderr}"
    );
    assert!(row("tk_leaf").contains("int3 "), "{stderr}");
    let text = std::fs::read_to_string(&events).unwrap();
    let in_guest: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["source"] == "probe tk_loop_body")
        .collect();
    assert_eq!(in_guest.len(), 100);
    for (i, v) in in_guest.iter().enumerate() {
        assert_eq!(v["hit"], i + 1);
        assert_eq!(v["regs"]["rdi"], format!("{i:#x}"), "{v}");
        assert!(v["regs"]["tsc"].is_string(), "{v}");
    }
    // A jump that cannot go there is refused before the guest runs, with the reason.
    let out = hvprobe(&["run", "--probe", "tk_opt_jump_into:jump"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("inside the window"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chosen_registers_and_memory_words_are_recorded_in_the_guest() {
    use introspect::probes::{Fetch, Gpr};
    let calls = symbol("TK_OPT_RIPREL_CALLS");
    let data = symbol("TK_OPT_DATA");
    let fetches = vec![
        Fetch::Mem(calls),
        Fetch::Reg(Gpr::Rdi),
        Fetch::Mem(data),
        Fetch::Rflags,
    ];
    let mut s = Session::start(
        "hvtest=optloop hvring=3 hviters=1000",
        vec![ProbeRequest::jump(
            "tk_opt_riprel",
            JumpHandler::InGuest(fetches),
            true,
        )],
    );
    let outcome = s.wait();
    assert_eq!(assert_guest_ok(&s, &outcome), 1000);
    let events = s.events();
    assert_eq!(events.len(), 1000);
    for (i, e) in events.iter().enumerate() {
        let i = i as u64;
        // The counter is read at entry, before this call's increment.
        assert_eq!(reg(e, "mem0"), i, "{e:?}");
        assert_eq!(reg(e, "rdi"), i);
        assert_eq!(reg(e, "mem2"), 0x1234_5678_9abc_def0);
        assert_eq!(reg(e, "rflags") & 0x2, 0x2, "bit 1 of RFLAGS is always set");
    }
    // A memory word that is not mapped is refused before the guest runs.
    let mut config = VmConfig {
        kernel: KernelSource::Embedded,
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    config.instrument.probes = vec!["tk_opt_riprel:jump:@0x7ffffffff000".parse().unwrap()];
    let err = vmm::instrument::run_instrumented(&config)
        .err()
        .expect("an unmapped memory word was accepted")
        .to_string();
    assert!(err.contains("Cannot translate 0x7ffffffff000"), "{err}");
}

#[test]
fn the_rdtscp_template_runs_natively_and_picks_a_ring_by_cpu_number() {
    // The default on hardware KVM: the ring is chosen by TSC_AUX. Ring-0 code here is
    // emulated without rdtscp, but native ring 3 runs it (and reads the *host* CPU's
    // TSC_AUX: 0 or 1 on this 2-CPU machine). With two vCPUs there are two rings, so every
    // record finds one; the records say which ring, not which vCPU, here.
    let iters = 3000;
    let mut s = Session::start_with(
        &format!("hvtest=optloop hvring=3 hviters={iters}"),
        2,
        Some(introspect::probes::CpuSource::Rdtscp),
        vec![ProbeRequest::jump("tk_opt_plain", in_guest(), true)],
    );
    let outcome = s.wait();
    assert_eq!(assert_guest_ok(&s, &outcome), iters);
    let (hits, lost, how) = s.source("tk_opt_plain");
    assert_eq!((hits, lost), (iters, 0), "{how}");
    let events = s.events();
    assert_eq!(events.len() as u64, iters);
    assert!(events.iter().all(|e| e.vcpu < 2), "a ring beyond the two");
    let mut rdi: Vec<u64> = events.iter().map(|e| reg(e, "rdi")).collect();
    rdi.sort_unstable();
    assert_eq!(
        rdi,
        (0..iters).collect::<Vec<_>>(),
        "every call once, from either ring"
    );
}

#[test]
fn optimize_and_unoptimize_over_and_over_while_the_guest_calls_the_site() {
    // Ring 0, two probes with windows the loop runs through constantly: every cycle pauses
    // the guest wherever it is (sometimes inside a window or a trampoline), so passes defer
    // and slots go dirty and come back. Every call must still be counted exactly once and
    // the guest's checksum must hold.
    let mut s = Session::start(
        "hvtest=optloop",
        vec![
            ProbeRequest::jump("tk_opt_plain", JumpHandler::Exit, true),
            ProbeRequest::jump("tk_opt_riprel", in_guest(), true),
        ],
    );
    s.wait_for_hits("tk_opt_plain", 5);
    let target = s.vm.target();
    let engine = s.intro.engine().clone();
    let mut jumps = 0;
    for cycle in 0..25 {
        for (at, handler) in [
            ("tk_opt_plain", JumpHandler::Exit),
            ("tk_opt_riprel", in_guest()),
        ] {
            let site = introspect::addr::Gva(symbol(at));
            if cycle % 2 == 0 {
                engine.unoptimize(&target, site, "cycle").unwrap();
            } else {
                engine.request_jump(site, handler);
            }
        }
        if cycle % 2 == 1 {
            jumps += engine
                .optimize_pending(&target, introspect::probes::Quiesce::Controller)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let stop = vm_memory::GuestAddress(symbol("TK_OPT_STOP"));
    use vm_memory::Bytes;
    s.vm.memory().inner().write_obj(1u64, stop).unwrap();
    let outcome = s.wait();
    let n = assert_guest_ok(&s, &outcome);
    eprintln!("{n} iterations, {jumps} re-optimizations of 24 tries (2 sites x 12)");
    assert!(jumps > 0, "no pass ever found the sites quiescent");
    assert_eq!(s.hits("tk_opt_plain"), n);
    let (hits, lost, _) = s.source("tk_opt_riprel");
    assert_eq!(hits + lost, n);
}
