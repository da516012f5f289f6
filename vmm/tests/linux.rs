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

/// One Debian boot at a time: each emulated boot keeps a core busy, and two at once on a
/// 2-core machine would blur the timings these tests rely on.
static ONE_BOOT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    let _one = serialize();
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

/// Debian's stock kernel instrumented from outside, with symbols from the image's own
/// kallsyms: a hardware breakpoint on `start_kernel`, an int3 probe on `memblock_add_range`
/// (which `setup_arch` runs many times), and `linux_banner` read through the guest's own page
/// tables and compared with the image.
#[test]
fn debian_kernel_breakpoint_probe_and_banner_through_page_tables() {
    use introspect::events::{self, Sources};
    use introspect::paging::PageWalker;
    use introspect::session::{Introspector, SessionSpec};
    use introspect::{Gva, elf::ElfFile};
    use std::sync::Arc;
    use vmm::instrument::IntrospectHook;

    let Some(kernel) = kernel_or_skip("Debian kernel introspection") else {
        return;
    };
    let _one = serialize();
    let image = std::fs::read(&kernel).unwrap();
    let elf_bytes = vmm::kernel_symbols::kernel_elf(&image)
        .unwrap()
        .into_owned();
    let (symbols, _) = vmm::kernel_symbols::kernel_symbols(&image).unwrap();
    let banner_va = symbols
        .addr_of("linux_banner")
        .expect("linux_banner from kallsyms");
    let start_kernel = symbols.addr_of("start_kernel").unwrap();

    let config = linux_config(kernel);
    let sources = Arc::new(Sources::new());
    let (sink, receiver) = events::channel(sources.clone(), 1 << 16);
    let intro = Arc::new(Introspector::new(Some(Arc::new(symbols)), 1, sink));
    let hook = Arc::new(IntrospectHook::new(intro.clone()));
    let mut vm = Vm::new(&config, Some(hook.clone())).unwrap();
    vm.start_paused().unwrap();
    hook.attach(vm.target(), vm.ram_control());
    let spec = SessionSpec {
        probes: vec![introspect::session::ProbeRequest::int3(
            "memblock_add_range",
        )],
        hbreaks: vec!["start_kernel".into()],
        watches: Vec::new(),
    };
    intro
        .setup(&vm.target(), &spec)
        .expect("both resolve and arm before the first instruction");
    let t = Instant::now();
    vm.resume_all().unwrap();
    let needle = "found SMP MP-table";
    let r = vm
        .wait_until(Duration::from_secs(150), |vm| vm.console().contains(needle))
        .unwrap();
    assert!(r.is_none(), "{r:?}\n{}", vm.console().text());
    eprintln!(
        "debian instrumented boot reached setup_arch in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    vm.pause_all().unwrap();

    let hits = |name: &str| {
        sources
            .iter()
            .find(|(_, s)| s.name() == name)
            .unwrap()
            .1
            .hits()
    };
    assert_eq!(hits("hbreak start_kernel"), 1, "start_kernel runs once");
    let probe_hits = hits("probe memblock_add_range");
    assert!(
        probe_hits >= 3,
        "memblock_add_range ran {probe_hits} times by setup_arch's MP table scan"
    );
    let events: Vec<_> = std::iter::from_fn(|| receiver.try_recv()).collect();
    let sk = events
        .iter()
        .find(|e| e.addr == start_kernel)
        .expect("a start_kernel event");
    assert_eq!(sk.symbol.as_deref(), Some("start_kernel+0x0"));

    // linux_banner through the guest's page tables (Linux's own by now)
    let (tx, rx) = std::sync::mpsc::channel();
    use introspect::target::Target;
    vm.target()
        .with_vcpu(
            0,
            Box::new(move |v| {
                let _ = tx.send(v.paging());
            }),
        )
        .unwrap();
    let ctx = rx.recv().unwrap().unwrap();
    assert_ne!(
        ctx.cr3 & !0xfff,
        0x9000,
        "Linux switched to its own page tables"
    );
    let mut walker = PageWalker::new();
    let mut live = [0u8; 64];
    walker
        .read_virt(vm.memory(), &ctx, Gva(banner_va), &mut live)
        .expect("linux_banner is mapped");
    let elf = ElfFile::parse(&elf_bytes).unwrap();
    let seg = elf
        .load_segments()
        .find(|s| banner_va >= s.vaddr && banner_va < s.vaddr + s.filesz)
        .unwrap();
    let off = usize::try_from(seg.offset + (banner_va - seg.vaddr)).unwrap();
    assert_eq!(
        &live[..],
        &elf_bytes[off..off + 64],
        "guest memory matches the image"
    );
    assert!(live.starts_with(b"Linux version 6.1"));
    // the KASLR slide, from the kallsyms tables in guest memory: 0, hvprobe boots at the link address
    let slide = vmm::instrument::guest_kaslr_slide(vm.memory(), vm.kernel())
        .expect("kallsyms in guest memory");
    assert_eq!(slide, 0);
    vm.stop();
}

/// The same through the command line: `hvprobe run --kernel <Debian bzImage> --hbreak
/// start_kernel --probe memblock_add_range --events F --format jsonl --timeout 60`.
#[test]
fn debian_kernel_cli_probe_and_hbreak_to_jsonl() {
    let Some(kernel) = kernel_or_skip("Debian kernel probes through the CLI") else {
        return;
    };
    let _one = serialize();
    let events = std::env::temp_dir().join(format!(
        "hvprobe-debian-events-{}.jsonl",
        std::process::id()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--timeout",
            "60",
        ])
        .args(["--hbreak", "start_kernel", "--probe", "memblock_add_range"])
        .args([
            "--events",
            events.to_str().unwrap(),
            "--format",
            "jsonl",
            "--serial-log",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(vmm::outcome::EXIT_TIMEOUT)),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let _ = std::fs::remove_file(&events);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"kind\":\"hbreak\"")
                && l.contains("\"symbol\":\"start_kernel+0x0\"")),
        "{text}"
    );
    let probes = lines
        .iter()
        .filter(|l| l.contains("memblock_add_range+0x0"))
        .count();
    assert!(probes >= 3, "{probes} probe hits in 60 s:\n{text}");
    // the per-source table at exit
    assert!(stderr.contains("hbreak start_kernel"), "{stderr}");
    assert!(stderr.contains("probe memblock_add_range"), "{stderr}");
}

/// A real driver's port I/O: Linux's 8250 driver printing the early boot log, traced at the
/// bus (`--mmiotrace uart`, JSON lines). The bytes written to the transmit register (DLAB
/// clear) are exactly what the serial console received.
#[test]
fn debian_kernel_uart_port_io_trace_matches_the_console() {
    let Some(kernel) = kernel_or_skip("Debian kernel UART trace") else {
        return;
    };
    let _one = serialize();
    let dir = std::env::temp_dir().join(format!("hvprobe-uart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (trace, console) = (dir.join("uart.jsonl"), dir.join("console.txt"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--timeout",
            "35",
        ])
        .args([
            "--mmiotrace",
            "uart",
            "--trace",
            trace.to_str().unwrap(),
            "--trace-format",
            "jsonl",
        ])
        .args(["--serial-log", console.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(vmm::outcome::EXIT_TIMEOUT)),
        "{stderr}"
    );
    assert!(
        stderr.contains(", 0 lost"),
        "no trace record lost: {stderr}"
    );
    let trace = std::fs::read_to_string(&trace).unwrap();
    let console = std::fs::read(&console).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut dlab = false;
    let mut sent = Vec::new();
    let mut reads = 0;
    for line in trace.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["space"] != "pio" {
            continue;
        }
        let port =
            u64::from_str_radix(v["addr"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        let value =
            u64::from_str_radix(v["value"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        match (v["kind"].as_str().unwrap(), port) {
            ("write", 0x3fb) => dlab = value & 0x80 != 0,
            ("write", 0x3f8) if !dlab => sent.push(u8::try_from(value).unwrap()),
            ("read", _) => reads += 1,
            _ => {}
        }
        assert!(
            v["symbol"].as_str().is_some(),
            "RIPs symbolized from kallsyms: {line}"
        );
    }
    assert!(sent.len() > 1000, "{} bytes", sent.len());
    assert!(reads > 0, "the driver polls LSR");
    assert_eq!(
        String::from_utf8_lossy(&sent),
        String::from_utf8_lossy(&console),
        "trace and console agree byte for byte"
    );
}

/// `tests/linux-edu/hvprobe_edu.ko`, an in-tree-style Linux driver for the `edu` device,
/// built by `scripts/build-linux-edu.sh` against the headers of the Debian kernel the tests
/// boot and checked with `modinfo` (alias and vermagic). `None` (after the loud line) when
/// the headers or `modinfo` are missing outside CI; in CI that is a failure.
fn linux_edu_module(kernel: &std::path::Path, what: &str) -> Option<std::path::PathBuf> {
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("the kernel is a vmlinuz-<version>");
    let headers = std::path::PathBuf::from(format!("/usr/src/linux-headers-{version}"));
    let modinfo = std::process::Command::new("modinfo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !headers.join("Makefile").exists() || !modinfo {
        let why = format!(
            "{} missing; scripts/test.sh installs linux-headers-{version} and kmod",
            if modinfo {
                headers.display().to_string()
            } else {
                "modinfo".to_string()
            }
        );
        assert!(std::env::var_os("CI").is_none(), "CI: {why}");
        skip(what, &why);
        return None;
    }
    let out = std::process::Command::new(
        hvprobe_tests::workspace_root().join("scripts/build-linux-edu.sh"),
    )
    .arg(version)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "scripts/build-linux-edu.sh {version}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ko = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(ko.is_file(), "{} was built", ko.display());
    let field = |name: &str| {
        let out = std::process::Command::new("modinfo")
            .args(["-F", name])
            .arg(&ko)
            .output()
            .unwrap();
        assert!(out.status.success(), "modinfo -F {name} {}", ko.display());
        String::from_utf8(out.stdout).unwrap()
    };
    let alias = field("alias");
    assert!(
        alias
            .lines()
            .any(|l| l.starts_with("pci:v00001234d000011E8sv")),
        "the module matches edu (1234:11e8): {alias}"
    );
    let vermagic = field("vermagic");
    assert!(
        vermagic.starts_with(&format!("{version} ")),
        "built for {version}: {vermagic}"
    );
    assert_eq!(field("license").trim(), "GPL");
    Some(ko)
}

/// The end-to-end `edu` case: Debian's kernel loads `hvprobe_edu.ko` from a busybox initrd
/// (`insmod`, the driver's lines from `dmesg`, `rmmod`, `reboot -f`) under
/// `hvprobe run --mmiotrace edu --trace F --trace-format mmiotrace`. The console says every
/// check passed, and the trace holds the MAP of edu's BAR0 where Linux put it and exactly the
/// driver's accesses to it, in order, with their values. The module is built and checked
/// everywhere; the boot needs hardware KVM.
#[test]
fn debian_kernel_loads_edu_driver_and_its_mmio_is_traced() {
    let what = "Debian kernel loading hvprobe_edu.ko under --mmiotrace edu";
    let Some(kernel) = kernel_or_skip(what) else {
        return;
    };
    let Some(ko) = linux_edu_module(&kernel, what) else {
        return;
    };
    if !vmm::platform::is_fast_kvm() {
        skip(
            &format!("{what} (hvprobe_edu.ko was built and checked)"),
            "this KVM emulates guest ring-0 code (~2 MIPS); needs hardware KVM",
        );
        return;
    }
    let _one = serialize();
    let busybox = hvprobe_tests::workspace_root().join(".cache/busybox/root/bin/busybox");
    let bb = std::fs::read(&busybox).expect("run scripts/fetch-busybox.sh first");
    let module = std::fs::read(&ko).unwrap();
    let init = b"#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox mount -t sysfs sysfs /sys\n\
        /bin/busybox insmod /hvprobe_edu.ko\n\
        /bin/busybox dmesg | /bin/busybox grep 'hvprobe_edu: ' | /bin/busybox sed 's/^/DMESG /'\n\
        /bin/busybox rmmod hvprobe_edu\n\
        /bin/busybox echo HVPROBE-EDU-DONE\n\
        /bin/busybox reboot -f\n";
    let initrd = cpio(&[
        ("bin", 0o040755, b""),
        ("bin/busybox", 0o100755, &bb),
        ("proc", 0o040755, b""),
        ("sys", 0o040755, b""),
        ("hvprobe_edu.ko", 0o100644, &module),
        ("init", 0o100755, init),
    ]);
    let dir = std::env::temp_dir().join(format!("hvprobe-linux-edu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (initrd_path, trace, console) = (
        dir.join("initrd.cpio"),
        dir.join("edu.mmiotrace"),
        dir.join("console.txt"),
    );
    std::fs::write(&initrd_path, initrd).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args([
            "--initrd",
            initrd_path.to_str().unwrap(),
            "--timeout",
            "120",
        ])
        .args(["--mmiotrace", "edu", "--trace", trace.to_str().unwrap()])
        .args(["--trace-format", "mmiotrace"])
        .args(["--serial-log", console.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let trace = std::fs::read_to_string(&trace).unwrap();
    let console = std::fs::read_to_string(&console).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out.status.code(),
        Some(i32::from(vmm::outcome::EXIT_GUEST_RESET)),
        "reboot -f resets\n{stderr}\n{console}"
    );
    assert!(
        console.contains("DMESG") && console.contains("hvprobe_edu: all checks passed"),
        "{console}"
    );
    assert!(console.contains("HVPROBE-EDU-DONE"), "{console}");
    assert!(
        stderr.contains(", 0 lost"),
        "no trace record lost: {stderr}"
    );
    assert!(!trace.contains(" Lost "), "{trace}");

    // where Linux put BAR0 ("BAR0 [mem 0x...-0x...]") and the DMA buffer ("via 0x...")
    let hex_after = |needle: &str| {
        let at = console
            .find(needle)
            .unwrap_or_else(|| panic!("\"{needle}\" on the console:\n{console}"));
        let digits: String = console[at + needle.len()..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        u64::from_str_radix(&digits, 16).unwrap()
    };
    let bar = hex_after("BAR0 [mem 0x");
    let dma = hex_after("DMA of 16 bytes via 0x");

    // MAP of BAR0 (1 MiB); every UNMAP ends an earlier MAP; the driver's accesses are in
    // the map that was live when it ran, and are exactly these, in order.
    let mut live: Option<String> = None;
    let mut mapped = Vec::new();
    let mut accesses = Vec::new();
    for line in trace.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("MAP") if f[3] == format!("{bar:#x}") => {
                assert_eq!(f[5], "0x100000", "BAR0 is 1 MiB: {line}");
                live = Some(f[2].to_string());
                mapped.push(f[2].to_string());
            }
            Some("UNMAP") => {
                assert!(mapped.iter().any(|m| m == f[2]), "UNMAP of a MAP: {line}");
                if live.as_deref() == Some(f[2]) {
                    live = None;
                }
            }
            Some(kind @ ("R" | "W")) => {
                assert_eq!(live.as_deref(), Some(f[3]), "in the live BAR0 map: {line}");
                let addr = u64::from_str_radix(f[4].trim_start_matches("0x"), 16).unwrap();
                let value = u64::from_str_radix(f[5].trim_start_matches("0x"), 16).unwrap();
                accesses.push((
                    kind.to_string(),
                    f[1].parse::<u8>().unwrap(),
                    addr - bar,
                    value,
                ));
            }
            _ => {}
        }
    }
    assert!(
        !mapped.is_empty(),
        "a MAP of edu's BAR0 at {bar:#x}:\n{trace}"
    );
    let want: Vec<(String, u8, u64, u64)> = [
        ("R", 4, 0x00, 0x0100_00ed), // id
        ("W", 4, 0x04, 0x1234_5678), // liveness
        ("R", 4, 0x04, 0xedcb_a987),
        ("W", 4, 0x08, 5), // factorial
        ("R", 4, 0x20, 0x1),
        ("R", 4, 0x20, 0x0),
        ("R", 4, 0x08, 120),
        ("W", 4, 0x60, 0x1), // interrupt: raise, read and ack (handler or poll), check
        ("R", 4, 0x24, 0x1),
        ("W", 4, 0x64, 0x1),
        ("R", 4, 0x24, 0x0),
        ("W", 8, 0x80, dma), // DMA RAM -> device
        ("W", 8, 0x88, 0x4_0000),
        ("W", 8, 0x90, 16),
        ("W", 8, 0x98, 0x1),
        ("R", 8, 0x98, 0x0),
        ("W", 8, 0x80, 0x4_0000), // DMA device -> RAM
        ("W", 8, 0x88, dma + 2048),
        ("W", 8, 0x90, 16),
        ("W", 8, 0x98, 0x3),
        ("R", 8, 0x98, 0x2),
    ]
    .into_iter()
    .map(|(k, w, o, v)| (k.to_string(), w, o, v))
    .collect();
    assert_eq!(accesses, want, "the driver's accesses, in order:\n{trace}");
}
