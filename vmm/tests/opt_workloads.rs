//! The test kernel's workloads for jump-optimized probes, without probes: `optloop` and
//! `optbench` in ring 0 and ring 3, the trampoline arena report, ring-3 I/O (`ring3`) and
//! IA32_TSC_AUX (`tscaux`), on the real /dev/kvm.
//!
//! Ring-0 code is emulated on our CI's software KVM (about 2 MIPS), so ring-0 runs stay small;
//! ring-3 code runs natively there.

use std::time::{Duration, Instant};

use vmm::config::VmConfig;
use vmm::devices::test_device::REG_SCRATCH;
use vmm::layout::TEST_DEVICE_MMIO_BASE;
use vmm::memory::Gpa;
use vmm::outcome::Outcome;
use vmm::test_kernel::TEST_KERNEL;
use vmm::vm::Vm;

/// The arena the test kernel reserves (linker.ld).
const ARENA_LEN: u64 = 20 << 20;

fn config(cmdline: &str, cpus: u8) -> VmConfig {
    VmConfig::quiet_test_kernel(cmdline, cpus)
}

/// Boots the test kernel with `cmdline` and runs it to the end; prints how long it took.
fn scenario(cmdline: &str) -> (Outcome, Vm) {
    let started = Instant::now();
    let mut vm = Vm::new(&config(cmdline, 1), None).expect("VM builds");
    vm.start().expect("VM starts");
    let outcome = vm.wait(Some(Duration::from_secs(60))).expect("VM runs");
    eprintln!("{cmdline}: {outcome:?} in {:?}", started.elapsed());
    (outcome, vm)
}

/// The value of the test kernel's symbol `name`.
fn symbol(name: &str) -> u64 {
    let (symbols, _) = vmm::kernel_symbols::kernel_symbols(TEST_KERNEL).expect("symbols");
    symbols
        .addr_of(name)
        .unwrap_or_else(|| panic!("no symbol {name} in the test kernel"))
}

/// SCRATCH, read as 8 bytes through the MMIO bus.
fn scratch(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    assert!(
        vm.io()
            .mmio
            .read(TEST_DEVICE_MMIO_BASE + REG_SCRATCH, &mut b)
    );
    u64::from_le_bytes(b)
}

fn point_numbers(vm: &Vm) -> Vec<u32> {
    vm.points().iter().map(|p| p.n).collect()
}

/// Checks a finished `optloop` run of `iters` iterations.
fn assert_optloop_ok(cmdline: &str, outcome: &Outcome, vm: &Vm, iters: u64) {
    let console = vm.console().text();
    assert_eq!(
        *outcome,
        Outcome::GuestExit { code: 0 },
        "{cmdline}:\n{console}"
    );
    assert_eq!(scratch(vm), iters, "{cmdline}: SCRATCH = iterations");
    let marks = vm.marks();
    assert_eq!(marks.len(), 1, "{marks:?}");
    let prefix = format!("optloop: iterations {iters} checksum 0x");
    assert!(
        marks[0].starts_with(&prefix) && marks[0].ends_with(" ok"),
        "{cmdline}: {marks:?}"
    );
    assert!(console.contains(&marks[0]), "{console}");
    assert_eq!(point_numbers(vm), [1, 2], "{cmdline}");
}

#[test]
fn optloop_checksums_match_in_ring_0_and_ring_3() {
    for cmdline in [
        "hvtest=optloop hviters=2000",
        "hvtest=optloop hviters=2000 hvring=0",
        "hvtest=optloop hviters=2000 hvring=3",
    ] {
        let (outcome, vm) = scenario(cmdline);
        assert_optloop_ok(cmdline, &outcome, &vm, 2000);
    }
}

#[test]
fn optloop_stops_when_the_host_sets_tk_opt_stop() {
    let stop = symbol("TK_OPT_STOP");
    let cmdline = "hvtest=optloop hvring=3";
    let started = Instant::now();
    let mut vm = Vm::new(&config(cmdline, 1), None).unwrap();
    vm.start().unwrap();
    let early = vm
        .wait_until(Duration::from_secs(30), |vm| !vm.points().is_empty())
        .unwrap();
    assert_eq!(early, None, "{}", vm.console().text());
    // Let it loop a little, then stop it through guest memory (identity-mapped: GPA = VA).
    std::thread::sleep(Duration::from_millis(50));
    vm.memory().write_u64(Gpa(stop), 1).unwrap();
    let outcome = vm.wait(Some(Duration::from_secs(30))).unwrap();
    let iters = scratch(&vm);
    eprintln!(
        "{cmdline}: stopped by the host after {iters} iterations, {outcome:?} in {:?}",
        started.elapsed()
    );
    assert!(iters > 0);
    assert_optloop_ok(cmdline, &outcome, &vm, iters);
}

/// Checks a finished `optbench` run: 5 rounds of points 100, 101, 102 and one MARK line each.
fn assert_optbench_ok(cmdline: &str, outcome: &Outcome, vm: &Vm, iters: u64) {
    assert_eq!(
        *outcome,
        Outcome::GuestExit { code: 0 },
        "{cmdline}:\n{}",
        vm.console().text()
    );
    assert_eq!(point_numbers(vm), [100, 101, 102].repeat(5), "{cmdline}");
    assert!(vm.points().windows(2).all(|w| w[0].at <= w[1].at));
    let marks = vm.marks();
    assert_eq!(marks.len(), 5, "{marks:?}");
    for (round, line) in marks.iter().enumerate() {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 9, "{line}");
        assert_eq!(
            (words[0], words[1], words[2], words[3], words[5], words[7]),
            (
                "optbench:",
                "round",
                round.to_string().as_str(),
                "plain_cycles",
                "target_cycles",
                "iters"
            ),
            "{line}"
        );
        for cycles in [words[4], words[6]] {
            assert!(cycles.parse::<u64>().is_ok_and(|c| c > 0), "{line}");
        }
        assert_eq!(words[8], iters.to_string(), "{line}");
    }
    for (round, p) in vm.points().chunks(3).enumerate() {
        eprintln!(
            "{cmdline}: round {round}: plain loop {:?}, target loop {:?} (host time, points)",
            p[1].at - p[0].at,
            p[2].at - p[1].at
        );
    }
}

#[test]
fn optbench_runs_five_rounds_in_ring_3_and_ring_0() {
    for (cmdline, iters) in [
        ("hvtest=optbench hviters=5000 hvring=3", 5000),
        ("hvtest=optbench hviters=100", 100),
    ] {
        let (outcome, vm) = scenario(cmdline);
        assert_optbench_ok(cmdline, &outcome, &vm, iters);
    }
}

#[test]
fn bad_workload_parameters_exit_2() {
    for cmdline in [
        "hvtest=optloop hvring=1",
        "hvtest=optloop hviters=lots",
        "hvtest=optbench hviters=-1",
        "hvtest=tscaux hvring=ring3",
    ] {
        let (outcome, vm) = scenario(cmdline);
        assert_eq!(
            outcome,
            Outcome::GuestExit { code: 2 },
            "{cmdline}: {}",
            vm.console().text()
        );
    }
}

#[test]
fn the_arena_is_reported_before_every_scenario() {
    let start = symbol("__hvprobe_arena_start");
    assert_eq!(symbol("__hvprobe_arena_end") - start, ARENA_LEN);
    assert_eq!(start % 4096, 0, "page-aligned: {start:#x}");
    for cmdline in ["hvtest=points", "hvtest=optloop hviters=1 hvring=3"] {
        let (outcome, vm) = scenario(cmdline);
        assert_eq!(outcome, Outcome::GuestExit { code: 0 }, "{cmdline}");
        assert_eq!(vm.arena_report(), Some((start, ARENA_LEN)), "{cmdline}");
        // The loader placed the arena (NOLOAD, in the data segment) in guest RAM.
        assert!(vm.kernel().load_end.raw() >= start + ARENA_LEN);
        let mut page = [0xffu8; 4096];
        vm.memory().read(Gpa(start), &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0), "nothing wrote the arena");
    }
}

#[test]
fn ring_3_reaches_the_test_device_over_pio_and_mmio() {
    let (outcome, vm) = scenario("hvtest=ring3");
    let console = vm.console().text();
    assert_eq!(outcome, Outcome::GuestExit { code: 0 }, "{console}");
    assert_eq!(point_numbers(&vm), [1, 2]);
    let marks = vm.marks();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(
        marks[0].starts_with("ring3: cpl 3 pio 0x54505648 mmio 0x54505648 tsc_aux ")
            && marks[0].ends_with(" ok"),
        "{marks:?}"
    );
    // The console line went through COM1's ports from ring 3.
    assert!(console.contains(&marks[0]), "{console}");
    // SCRATCH holds the last value ring 3 wrote over MMIO.
    assert_eq!(scratch(&vm), 0x3333_0002);
}

#[test]
fn tsc_aux_is_the_vcpu_index() {
    use kvm_bindings::{Msrs, kvm_msr_entry};
    const MSR_TSC_AUX: u32 = 0xc000_0103;

    // What KVM holds for each vCPU (before the guest runs), if it offers rdtscp at all.
    let kvm = vmm::vm::open_kvm().unwrap();
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let mut vm = Vm::new(&config("hvtest=tscaux", 4), None).unwrap();
    for index in 0..4u8 {
        if !vmm::boot::cpu::has_rdtscp(&cpuid) {
            hvprobe_tests::skip(
                "hvprobe sets IA32_TSC_AUX to the vCPU index",
                "this KVM does not offer rdtscp (CPUID 8000_0001h:EDX bit 27), so hvprobe \
                 leaves IA32_TSC_AUX alone (kvm_pvm: not in its MSR list either)",
            );
            break;
        }
        let aux = vm
            .with_vcpu(index, |ctx| {
                let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                    index: MSR_TSC_AUX,
                    ..Default::default()
                }])
                .unwrap();
                let n = ctx.fd().get_msrs(&mut msrs).unwrap();
                (n == 1).then(|| msrs.as_slice()[0].data)
            })
            .unwrap();
        assert_eq!(aux, Some(u64::from(index)), "vCPU {index}");
    }
    drop(vm);

    // What the guest's rdtscp sees on vCPU 0.
    let (outcome, vm) = scenario("hvtest=tscaux hvring=3");
    assert_eq!(outcome, Outcome::GuestExit { code: 0 });
    let marks = vm.marks();
    assert_eq!(marks.len(), 1, "{marks:?}");
    let seen = scratch(&vm);
    assert_eq!(
        marks[0],
        format!("tscaux: ring 3 cpl 3 aux {seen} tsc_nonzero true")
    );
    if vmm::platform::is_software_kvm() {
        hvprobe_tests::skip(
            "rdtscp returns IA32_TSC_AUX = 0 on vCPU 0",
            &format!(
                "software KVM (kvm_pvm): native ring 3 sees the host's TSC_AUX (here {seen}, \
                 the host CPU), and rdtscp in emulated ring 0 is an emulation failure"
            ),
        );
        return;
    }
    assert_eq!(seen, 0, "ring 3: {marks:?}");
    let (outcome, vm) = scenario("hvtest=tscaux");
    assert_eq!(outcome, Outcome::GuestExit { code: 0 });
    assert_eq!(scratch(&vm), 0, "ring 0: {:?}", vm.marks());
    assert_eq!(vm.marks(), ["tscaux: ring 0 cpl 0 aux 0 tsc_nonzero true"]);
}
