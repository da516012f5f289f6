//! Exit round-trip benchmark: hvprobe's VM and vCPU loop against a bare kvm-ioctls loop running
//! the same guest code from the same boot state.
//!
//! Measured in one run, variants interleaved (hvprobe and raw alternate, their order flips
//! every round) because the machine is noisy; the median of each variant is printed with the
//! ratio hvprobe / raw:
//! 1. VM creation -> first guest instruction: the guest's first instruction is a POINT write;
//!    hvprobe's point timestamp is measured from the start of `Vm::new` (its `Phases` clock
//!    starts on the first line of `Vm::new`), the raw side is timed from `Kvm::new` to the
//!    return of the first KVM_RUN.
//! 2. PIO exit round trip: N `out dx, eax` to the SCRATCH port, between two POINTs.
//! 3. MMIO exit round trip: N `mov [rbx], eax` to the SCRATCH register at 0xd000_000c.
//!
//! Per exit, both sides also pay for the guest's loop instructions (`dec ecx; jnz`): on a
//! software KVM (our dev/CI machines, see PLATFORM.md) ring-0 guest code is emulated at about
//! 0.5 us per instruction, so about 1 us of every iteration is guest time, equally on both
//! sides. On hardware KVM it is about 1 ns.
//!
//! Run: `cargo bench -p vmm --bench exits` (`HVPROBE_BENCH_N`, `HVPROBE_BENCH_ROUNDS` override
//! N and the number of rounds).

mod common;
use common::{env_u32, median};

use std::hint::black_box;
use std::time::{Duration, Instant};

use hvprobe_tests::code_asm::*;
use hvprobe_tests::{
    MMIO_TEST_DEVICE, PORT_EXIT, PORT_POINT, PORT_SCRATCH, Program, assemble, emit_exit, emit_point,
};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm::boot;
use vmm::boot::cpu::CpuidMask;
use vmm::config::VmConfig;
use vmm::memory::{Gpa, GuestMem};
use vmm::outcome::Outcome;
use vmm::vm::Vm;

/// Guest RAM of every VM here (the default `hvprobe run` size).
const MEM_SIZE: u64 = 256 << 20;
/// Same as `vm.rs`.
const TSS_ADDRESS: usize = 0xfffb_d000;
/// Point numbers around the measured loop.
const BEFORE: u32 = 1;
const AFTER: u32 = 2;
const GOAL: f64 = 1.10;

/// Which exit the loop makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pio,
    Mmio,
}

/// First instruction: POINT 0, then EXIT.
fn first_program() -> Program {
    assemble(|a, _| {
        emit_point(a, 0)?;
        emit_exit(a, 0)
    })
}

/// POINT 1, `n` exits of `kind` writing the loop counter to SCRATCH, POINT 2, EXIT.
fn loop_program(kind: Kind, n: u32) -> Program {
    assemble(|a, _| {
        emit_point(a, BEFORE)?;
        a.mov(ecx, n)?;
        a.mov(dx, u32::from(PORT_SCRATCH))?;
        a.mov(rbx, MMIO_TEST_DEVICE + 0xc)?;
        a.mov(eax, 0x5a5a_5a5au32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        match kind {
            Kind::Pio => a.out(dx, eax)?,
            Kind::Mmio => a.mov(dword_ptr(rbx), eax)?,
        }
        a.dec(ecx)?;
        a.jnz(top)?;
        emit_point(a, AFTER)?;
        emit_exit(a, 0)
    })
}

fn config(p: &Program) -> VmConfig {
    common::raw_config(p, MEM_SIZE)
}

/// hvprobe: runs `p` to its end; returns the points' timestamps (from the start of `Vm::new`).
fn hvprobe_points(p: &Program) -> Vec<(u32, Duration)> {
    let cfg = config(p);
    let mut vm = Vm::new(&cfg, None).expect("hvprobe VM builds");
    vm.start().expect("hvprobe VM starts");
    let outcome = vm.wait(cfg.timeout).expect("hvprobe VM runs");
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 0 },
        "hvprobe guest ended badly"
    );
    vm.points().iter().map(|p| (p.n, p.at)).collect()
}

fn point_at(points: &[(u32, Duration)], n: u32) -> Duration {
    points
        .iter()
        .find(|p| p.0 == n)
        .unwrap_or_else(|| panic!("no point {n} in {points:?}"))
        .1
}

/// The raw setup: the KVM objects hvprobe creates for a test guest (VM, memory, TSS,
/// irqchip, PIT, one vCPU) and the same boot state through `vmm::boot`; no devices, no
/// boot_params / MP table, no thread.
struct RawVm {
    vcpu: VcpuFd,
    _vm: VmFd,
    _mem: GuestMem,
    _kvm: Kvm,
}

fn raw_vm(p: &Program) -> RawVm {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = GuestMem::new(MEM_SIZE).expect("guest RAM");
    for (slot, (start, len, host)) in mem.regions().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).expect("slot"),
            flags: 0,
            guest_phys_addr: start.raw(),
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping is owned by `mem`, which RawVm keeps alive, and is dropped after
        // the VM fd (fields drop in declaration order: vcpu, vm, then mem).
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    vm.set_tss_address(TSS_ADDRESS).expect("KVM_SET_TSS_ADDR");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .expect("KVM_CREATE_PIT2");
    mem.write(Gpa(p.base), &p.code).expect("program fits");
    boot::gdt::write_gdt(&mem).expect("GDT");
    let page_tables = boot::paging::write_identity_map(&mem).expect("page tables");
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    boot::cpu::patch_cpuid(&mut cpuid, 0, 1, CpuidMask::default());
    boot::cpu::setup_common(&vcpu, 0, &cpuid).expect("vCPU setup");
    boot::cpu::setup_boot_vcpu(
        &vcpu,
        Gpa(p.base),
        page_tables,
        Gpa(vmm::layout::BOOT_PARAMS_START),
    )
    .expect("boot vCPU");
    RawVm {
        vcpu,
        _vm: vm,
        _mem: mem,
        _kvm: kvm,
    }
}

fn le(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// The bare loop on the current thread: runs until EXIT; returns every POINT with the time
/// its exit came back (taken right after KVM_RUN returned).
fn raw_run(vcpu: &mut VcpuFd) -> Vec<(u32, Instant)> {
    let mut points = Vec::new();
    let mut scratch = 0u64;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(PORT_SCRATCH, data) => scratch = le(data),
            VcpuExit::MmioWrite(addr, data) if addr == MMIO_TEST_DEVICE + 0xc => scratch = le(data),
            VcpuExit::IoOut(PORT_POINT, data) => {
                let now = Instant::now();
                points.push((
                    u32::try_from(le(data) & 0xffff_ffff).unwrap_or(u32::MAX),
                    now,
                ));
            }
            VcpuExit::IoOut(PORT_EXIT, _) => break,
            other => panic!("raw loop: unexpected exit {other:?}"),
        }
    }
    black_box(scratch);
    points
}

/// VM creation -> first guest instruction (its POINT exit back in userspace).
fn first_hvprobe(p: &Program) -> Duration {
    point_at(&hvprobe_points(p), 0)
}

fn first_raw(p: &Program) -> Duration {
    let t0 = Instant::now();
    let mut raw = raw_vm(p);
    let exit = raw.vcpu.run().expect("KVM_RUN");
    let t = t0.elapsed();
    assert!(
        matches!(exit, VcpuExit::IoOut(PORT_POINT, _)),
        "first exit: {exit:?}"
    );
    t
}

/// Time per exit of the loop, POINT 1 to POINT 2.
fn loop_hvprobe(p: &Program, n: u32) -> Duration {
    let pts = hvprobe_points(p);
    (point_at(&pts, AFTER) - point_at(&pts, BEFORE)) / n
}

fn loop_raw(p: &Program, n: u32) -> Duration {
    let mut raw = raw_vm(p);
    let pts = raw_run(&mut raw.vcpu);
    let at = |n: u32| pts.iter().find(|p| p.0 == n).expect("raw point").1;
    (at(AFTER) - at(BEFORE)) / n
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` from other harnesses is ignored.
    let n = env_u32("HVPROBE_BENCH_N", 20_000);
    let rounds = env_u32("HVPROBE_BENCH_ROUNDS", 5);
    let first = first_program();
    let pio = loop_program(Kind::Pio, n);
    let mmio = loop_program(Kind::Mmio, n);

    // warm-up (page cache, lazy statics, kick handler), not counted
    first_hvprobe(&first);
    first_raw(&first);

    // [variant][side]: side 0 = hvprobe, 1 = raw
    let mut t: [[Vec<Duration>; 2]; 3] = Default::default();
    for round in 0..rounds {
        let sides: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in sides {
            t[0][side].push(if side == 0 {
                first_hvprobe(&first)
            } else {
                first_raw(&first)
            });
        }
        for (v, p) in [(1, &pio), (2, &mmio)] {
            for side in sides {
                t[v][side].push(if side == 0 {
                    loop_hvprobe(p, n)
                } else {
                    loop_raw(p, n)
                });
            }
        }
        eprintln!(
            "round {}: first {:.2?}/{:.2?}  pio {:.2?}/{:.2?}  mmio {:.2?}/{:.2?} (hvprobe/raw)",
            round + 1,
            t[0][0][round as usize],
            t[0][1][round as usize],
            t[1][0][round as usize],
            t[1][1][round as usize],
            t[2][0][round as usize],
            t[2][1][round as usize],
        );
    }

    let title = format!(
        "exits benchmark (median of {rounds} rounds, N={n} exits, {} MiB, 1 vCPU)",
        MEM_SIZE >> 20
    );
    println!(
        "{title:<70}{:>10} {:>10}   {:>5}  goal",
        "hvprobe", "raw", "ratio"
    );
    let rows = [
        "VM creation -> first instruction",
        "PIO exit round trip",
        "MMIO exit round trip",
    ];
    for (v, name) in rows.iter().enumerate() {
        let h = median(&t[v][0]);
        let r = median(&t[v][1]);
        let ratio = h.as_secs_f64() / r.as_secs_f64();
        let (hs, rs, goal) = if v == 0 {
            (
                format!("{:.2}ms", h.as_secs_f64() * 1e3),
                format!("{:.2}ms", r.as_secs_f64() * 1e3),
                "(info)".to_string(),
            )
        } else {
            let ok = if ratio <= GOAL { "ok" } else { "MISSED" };
            (
                format!("{:.2}µs", h.as_secs_f64() * 1e6),
                format!("{:.2}µs", r.as_secs_f64() * 1e6),
                format!("<= {GOAL:.2} {ok}"),
            )
        };
        println!("{name:<70}{hs:>10} {rs:>10}   {ratio:>5.2}  {goal}");
    }
    println!(
        "(per exit includes ~1 µs of emulated guest loop code, `dec ecx; jnz`, on both sides on this software KVM)"
    );
}
