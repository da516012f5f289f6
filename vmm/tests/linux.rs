//! Debian's stock kernel (fetched by `scripts/fetch-debian-kernel.sh`, never this machine's
//! /boot) under hvprobe: the bzImage is decompressed on the host and booted at its 64-bit
//! entry.
//!
//! - Early boot: the banner and `setup_arch` (which finds hvprobe's MP table and prints
//!   hvprobe's e820 map) on the serial console; probes and breakpoints before user space.
//! - The full boot to a busybox shell built with the guest kit (`scripts/mkinitramfs.sh`),
//!   instrumented and traced, and Linux loading the `edu` driver under `--mmiotrace edu`.
//!   On our software KVM (all of Linux's ring-0 code emulated, ~2 MIPS) each takes a few
//!   minutes and needs hvprobe's platform accommodation (`vmm::platform`): steering, the
//!   syscall relay and host-side instructions, all automatic.

use std::time::{Duration, Instant};

use hvprobe_tests::{debian_kernel, skip};
use vmm::config::{KernelSource, SerialOutput, VmConfig};
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

/// Files the shell test opens, with their contents (each a distinct line).
const OPENED: [&str; 5] = ["f1", "f2", "f3", "f4", "f5"];

/// The kit's run script for the shell test. `sync`s bracket each window of opens, on one
/// script line so that the kit's own work between lines (it reads `/proc/uptime` for its
/// markers) stays outside: the `--hbreak __x64_sys_sync` hits split the event stream into
/// windows, and the probe hits in a window are exactly that window's opens (nothing else in
/// this guest opens files).
fn shell_script() -> String {
    let files: Vec<String> = OPENED
        .iter()
        .map(|f| format!("/etc/hvprobe-test/{f}"))
        .collect();
    format!(
        "uname -r\n\
         nproc\n\
         sync; cat {}; sync\n\
         sync; taskset -c 1 cat /etc/hvprobe-test/f1; sync\n\
         echo shell-ok\n",
        files.join(" ")
    )
}

fn hex(v: &serde_json::Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The number after `label` in hvprobe's accommodation summary line.
fn summary_count(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("software KVM accommodation:"))
        .unwrap_or_else(|| panic!("no accommodation summary:\n{stderr}"));
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no \"{label}\" in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count before \"{label}\" in {line}"))
}

/// Debian's stock kernel to a busybox shell under `hvprobe run`, with no flag but the kernel
/// and the kit's initramfs on this machine (steering, the syscall relay and the host-side
/// instructions are automatic), on two vCPUs, instrumented and traced in the same boot:
///
/// - the run script's commands run, and `/init` ends the VM with their status (0);
/// - an int3 probe on `do_sys_openat2` (reached from the `openat` syscall, relayed to ring 0
///   by hvprobe here): its hits between two `sync`s are exactly the files `cat` opened, and
///   the open run with `taskset -c 1` hits on vCPU 1 (the relay works on every vCPU);
/// - a hardware breakpoint on `__x64_sys_sync` (a syscall path) hits once per `sync`;
/// - a hardware breakpoint on `exc_page_fault`, the page-fault path the relay sits on: it
///   hits once for every page fault the relay passed on;
/// - the UART's port I/O traced at the bus equals the console byte for byte.
///
/// Prints the wall time to the banner, `Memory:`, `/init`, and each command.
#[test]
fn debian_kernel_boots_to_a_shell_instrumented_and_traced() {
    let what = "Debian kernel to a busybox shell";
    let Some(kernel) = kernel_or_skip(what) else {
        return;
    };
    let _one = serialize();
    let dir = std::env::temp_dir().join(format!("hvprobe-linux-shell-{}", std::process::id()));
    let files_dir = dir.join("files");
    std::fs::create_dir_all(&files_dir).unwrap();
    let mut adds = Vec::new();
    for f in OPENED {
        let p = files_dir.join(f);
        std::fs::write(&p, format!("contents of {f}\n")).unwrap();
        adds.push(p);
    }
    let guest_paths: Vec<String> = OPENED
        .iter()
        .map(|f| format!("/etc/hvprobe-test/{f}"))
        .collect();
    let add_refs: Vec<(&std::path::Path, &str)> = adds
        .iter()
        .zip(&guest_paths)
        .map(|(h, g)| (h.as_path(), g.as_str()))
        .collect();
    let initrd = hvprobe_tests::linux::initramfs(&dir, &shell_script(), &add_refs);
    let (events, trace) = (dir.join("events.jsonl"), dir.join("uart.jsonl"));
    let run = hvprobe_tests::linux::run_linux(
        std::path::Path::new(env!("CARGO_BIN_EXE_hvprobe")),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "128M",
            "--cpus",
            "2",
            "--probe",
            "do_sys_openat2:int3",
            "--hbreak",
            "__x64_sys_sync",
            "--hbreak",
            "exc_page_fault",
            "--events",
            events.to_str().unwrap(),
            "--format",
            "jsonl",
            "--mmiotrace",
            "uart",
            "--trace",
            trace.to_str().unwrap(),
            "--trace-format",
            "jsonl",
        ],
        &dir,
        &[
            "Linux version 6.1",
            "Memory:",
            "Run /init as init process",
            "HVPROBE-INIT-START",
            "HVPROBE-RUN-END status=0",
        ],
        Duration::from_secs(900),
    );
    eprintln!("{}", run.report(what));
    assert_eq!(
        run.status,
        Some(0),
        "the run script's status through the test device\nstderr:\n{}\nconsole:\n{}",
        run.stderr,
        run.console
    );
    run.stage("HVPROBE-RUN-END status=0");
    for f in OPENED {
        assert!(
            run.console.contains(&format!("contents of {f}")),
            "cat printed {f}:\n{}",
            run.console
        );
    }
    assert!(run.console.contains("shell-ok"), "{}", run.console);
    assert!(
        run.console.lines().any(|l| l.trim() == "2"),
        "nproc says 2:\n{}",
        run.console
    );
    let relayed = summary_count(&run.stderr, "syscalls relayed");
    let passed = summary_count(&run.stderr, "page faults passed through");
    assert!(relayed > 100, "{relayed} syscalls relayed:\n{}", run.stderr);
    eprintln!("{what}: {relayed} syscalls relayed, {passed} page faults passed through");
    if let Some(l) = run.stderr.lines().find(|l| l.contains("run on the host")) {
        eprintln!("{what}: {}", l.trim());
    }

    // The event stream, in time order.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut evs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    evs.sort_by_key(|e| e["time_ns"].as_u64().unwrap_or(0));
    // By source: a symbol field names the first alias at an address (`__x64_sys_sync`
    // shares its address with `__ia32_sys_sync`).
    let is = |e: &serde_json::Value, source: &str| e["source"].as_str() == Some(source);
    let syncs: Vec<usize> = (0..evs.len())
        .filter(|&i| is(&evs[i], "hbreak __x64_sys_sync"))
        .collect();
    assert_eq!(syncs.len(), 4, "one breakpoint hit per sync: {syncs:?}");
    let opens = |from: usize, to: usize| -> Vec<&serde_json::Value> {
        evs[from..to]
            .iter()
            .filter(|e| is(e, "probe do_sys_openat2"))
            .collect()
    };
    let first = opens(syncs[0], syncs[1]);
    assert_eq!(
        first.len(),
        OPENED.len(),
        "do_sys_openat2 hits while cat opened {} files: {first:?}",
        OPENED.len()
    );
    let second = opens(syncs[2], syncs[3]);
    assert_eq!(second.len(), 1, "one open under taskset: {second:?}");
    assert_eq!(
        second[0]["vcpu"], 1,
        "taskset -c 1: the open ran on vCPU 1, its syscall relayed there"
    );
    let faults = evs
        .iter()
        .filter(|e| is(e, "hbreak exc_page_fault"))
        .count() as u64;
    assert_eq!(
        faults, passed,
        "every page fault the relay passed on reached exc_page_fault's breakpoint"
    );
    for (name, n) in [
        ("probe do_sys_openat2", None),
        ("hbreak __x64_sys_sync", Some(4)),
    ] {
        let row = run
            .stderr
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in the table:\n{}", run.stderr));
        if let Some(n) = n {
            assert!(row.split_whitespace().any(|w| w == n.to_string()), "{row}");
        }
    }

    // The UART trace: the bytes written to the transmit register are the console.
    let trace = std::fs::read_to_string(&trace).unwrap();
    let mut dlab = false;
    let mut sent = Vec::new();
    for line in trace.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["space"] != "pio" {
            continue;
        }
        let (port, value) = (hex(&v["addr"]), hex(&v["value"]));
        match (v["kind"].as_str().unwrap(), port) {
            ("write", 0x3fb) => dlab = value & 0x80 != 0,
            ("write", 0x3f8) if !dlab => sent.push(u8::try_from(value).unwrap()),
            _ => {}
        }
    }
    assert!(
        run.stderr.contains(", 0 lost"),
        "no trace record lost: {}",
        run.stderr
    );
    assert_eq!(
        String::from_utf8_lossy(&sent),
        run.console,
        "the UART trace and the console agree byte for byte"
    );
    let _ = std::fs::remove_dir_all(&dir);
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
    assert!(
        sk.symbol
            .as_deref()
            .is_some_and(|s| s.starts_with("start_kernel+0x0")),
        "{:?}",
        sk.symbol
    );

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
/// built with the guest kit (`insmod`, the driver's lines from `dmesg`, `rmmod`) under
/// `hvprobe run --mmiotrace edu --trace F --trace-format mmiotrace`. The console says every
/// check passed, and the trace holds the MAP of edu's BAR0 where Linux put it and exactly the
/// driver's accesses to it, in order, with their values; the trace passes the kernel
/// documentation's gawk filter and the demmio-rules check.
#[test]
fn debian_kernel_loads_edu_driver_and_its_mmio_is_traced() {
    let what = "Debian kernel loading hvprobe_edu.ko under --mmiotrace edu";
    let Some(kernel) = kernel_or_skip(what) else {
        return;
    };
    let Some(ko) = linux_edu_module(&kernel, what) else {
        return;
    };
    let _one = serialize();
    let dir = std::env::temp_dir().join(format!("hvprobe-linux-edu-{}", std::process::id()));
    let script = "insmod /lib/hvprobe_edu.ko\n\
        dmesg | grep 'hvprobe_edu: ' | sed 's/^/DMESG /'\n\
        rmmod hvprobe_edu\n\
        echo HVPROBE-EDU-DONE\n";
    let initrd =
        hvprobe_tests::linux::initramfs(&dir, script, &[(ko.as_path(), "/lib/hvprobe_edu.ko")]);
    let trace_path = dir.join("edu.mmiotrace");
    let run = hvprobe_tests::linux::run_linux(
        std::path::Path::new(env!("CARGO_BIN_EXE_hvprobe")),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "128M",
            "--mmiotrace",
            "edu",
            "--trace",
            trace_path.to_str().unwrap(),
            "--trace-format",
            "mmiotrace",
        ],
        &dir,
        &[
            "Run /init as init process",
            "HVPROBE-INIT-START",
            "HVPROBE-EDU-DONE",
        ],
        Duration::from_secs(900),
    );
    eprintln!("{}", run.report(what));
    let (stderr, console) = (&run.stderr, &run.console);
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        run.status,
        Some(0),
        "the run script ends the VM with status 0\n{stderr}\n{console}"
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
    hvprobe_tests::trace_check("bash", "mmiotrace-gawk.sh", &trace);
    hvprobe_tests::trace_check("python3", "demmio_check.py", &trace);
}
