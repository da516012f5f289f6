//! Debian's stock kernel (fetched by `scripts/fetch-debian-kernel.sh`, never this machine's
//! /boot) under hvprobe: the bzImage is decompressed on the host and booted at its 64-bit
//! entry.
//!
//! - Early boot runs everywhere: the banner and `setup_arch` (which finds hvprobe's MP table
//!   and prints hvprobe's e820 map) on the serial console.
//! - The full boot to a busybox `/init` needs hardware KVM (on our software KVM all of
//!   Linux's ring-0 code is emulated); elsewhere it prints one loud SKIPPED line.

use std::time::{Duration, Instant};

use hvprobe_tests::{debian_kernel, skip};
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::outcome::Outcome;
use vmm::vm::Vm;

fn kernel_or_skip(what: &str) -> Option<std::path::PathBuf> {
    let k = debian_kernel();
    if k.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the Debian kernel first (scripts/fetch-debian-kernel.sh)"
        );
        skip(
            what,
            "Debian kernel not fetched; run scripts/fetch-debian-kernel.sh",
        );
    }
    k
}

fn linux_config(kernel: std::path::PathBuf) -> VmConfig {
    VmConfig {
        kernel: KernelSource::File(kernel),
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    }
}

#[test]
fn debian_kernel_early_boot_reaches_setup_arch() {
    let Some(kernel) = kernel_or_skip("Debian kernel early boot") else {
        return;
    };
    let mut vm = Vm::new(&linux_config(kernel), None).expect("Debian's bzImage loads");
    assert_eq!(vm.kernel().entry.raw(), 0x100_0000);
    let t = Instant::now();
    vm.start().unwrap();
    let mut step = |needle: &'static str, budget: u64| {
        let r = vm
            .wait_until(Duration::from_secs(budget), |vm| {
                vm.console().contains(needle)
            })
            .unwrap();
        assert!(
            r.is_none(),
            "no \"{needle}\" on the console ({r:?}); console so far:\n{}",
            vm.console().text()
        );
        eprintln!(
            "debian early boot: \"{needle}\" after {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };
    step("Linux version 6.1", 120);
    // setup_arch: the e820 map hvprobe built, then hvprobe's MP table found in the EBDA
    step(
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        60,
    );
    step("found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]", 60);
    let console = vm.console().text();
    assert!(console.contains("Command line: console=ttyS0"), "{console}");
    assert!(console.contains("Hypervisor detected: KVM"), "{console}");
    vm.stop();
}

/// A `newc` cpio archive (what the kernel unpacks as an initramfs).
fn cpio(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(name, *mode, data, u32::try_from(i + 1).unwrap());
    }
    entry("TRAILER!!!", 0, &[], 0);
    out
}

#[test]
fn cpio_archive_layout() {
    let a = cpio(&[("init", 0o100755, b"#!x\n")]);
    assert!(a.starts_with(b"070701"));
    assert_eq!(a.len() % 4, 0);
    assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
}

#[test]
fn debian_kernel_full_boot_to_busybox_init() {
    let Some(kernel) = kernel_or_skip("Debian kernel full boot") else {
        return;
    };
    if !vmm::platform::is_fast_kvm() {
        skip(
            "Debian kernel full boot to a busybox /init",
            "this KVM emulates guest ring-0 code (~2 MIPS); needs hardware KVM",
        );
        return;
    }
    let busybox = hvprobe_tests::workspace_root().join(".cache/busybox/root/bin/busybox");
    let bb = std::fs::read(&busybox).expect("run scripts/fetch-busybox.sh first");
    let init =
        b"#!/bin/busybox sh\n/bin/busybox echo HVPROBE-INIT-REACHED\n/bin/busybox reboot -f\n";
    let initrd = cpio(&[
        ("bin", 0o040755, b""),
        ("bin/busybox", 0o100755, &bb),
        ("init", 0o100755, init),
    ]);
    let path = std::env::temp_dir().join(format!("hvprobe-initrd-{}.cpio", std::process::id()));
    std::fs::write(&path, initrd).unwrap();
    let mut config = linux_config(kernel);
    config.initrd = Some(path.clone());
    let t = Instant::now();
    let mut vm = Vm::new(&config, None).unwrap();
    vm.start().unwrap();
    let outcome = vm.wait(Some(Duration::from_secs(120))).unwrap();
    let console = vm.console().text();
    let _ = std::fs::remove_file(path);
    assert!(
        console.contains("HVPROBE-INIT-REACHED"),
        "{outcome:?}\n{console}"
    );
    assert_eq!(
        outcome,
        Outcome::Reset,
        "reboot -f with reboot=k resets through the i8042"
    );
    eprintln!(
        "debian full boot to /init and reboot: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
