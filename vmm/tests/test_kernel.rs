//! The embedded test kernel end to end: through the library API and through the `hvprobe`
//! binary (exit statuses, console, serial log, config file).

use std::process::Command;
use std::time::Duration;

use vmm::config::VmConfig;
use vmm::outcome::{EXIT_GUEST_CRASH, EXIT_GUEST_RESET, EXIT_TIMEOUT, Outcome};
use vmm::vm::Vm;

fn scenario(cmdline: &str, cpus: u8) -> (Outcome, Vm) {
    let config = VmConfig::quiet_test_kernel(cmdline, cpus);
    let mut vm = Vm::new(&config, None).expect("VM builds");
    vm.start().expect("VM starts");
    let outcome = vm.wait(Some(Duration::from_secs(30))).expect("VM runs");
    (outcome, vm)
}

#[test]
fn hello_runs_every_check_and_exits_cleanly() {
    let (outcome, vm) = scenario("", 1);
    let console = vm.console().text();
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 0 },
        "console:\n{console}"
    );
    assert!(console.contains("scenario hello"), "{console}");
    assert!(console.contains("hello: done"), "{console}");
    // the test kernel saw the e820 map hvprobe built
    assert!(
        console.contains("e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "{console}"
    );
    assert_eq!(
        vm.points().iter().map(|p| p.n).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(vm.points().windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn hello_on_four_vcpus() {
    let (outcome, _) = scenario("", 4);
    assert_eq!(outcome, Outcome::GuestExit { code: 0 });
}

#[test]
fn scenarios_end_as_they_should() {
    type Check = fn(&Outcome) -> bool;
    let cases: &[(&str, Check)] = &[
        ("hvtest=exit code=33", |o| {
            *o == Outcome::GuestExit { code: 33 }
        }),
        ("hvtest=points", |o| *o == Outcome::GuestExit { code: 0 }),
        ("hvtest=mmio", |o| *o == Outcome::GuestExit { code: 0 }),
        ("hvtest=pio", |o| *o == Outcome::GuestExit { code: 0 }),
        ("hvtest=reset", |o| *o == Outcome::Reset),
        ("hvtest=triple-fault", |o| {
            matches!(o, Outcome::TripleFault { vcpu: 0, .. })
        }),
        ("hvtest=panic", |o| *o == Outcome::GuestExit { code: 101 }),
        ("hvtest=no-such-scenario", |o| {
            *o == Outcome::GuestExit { code: 2 }
        }),
    ];
    for (cmdline, ok) in cases {
        let (outcome, vm) = scenario(cmdline, 1);
        assert!(
            ok(&outcome),
            "{cmdline}: {outcome:?}\n{}",
            vm.console().text()
        );
    }
}

#[test]
fn points_and_marks_reach_the_vmm() {
    let (_, vm) = scenario("hvtest=points", 1);
    assert_eq!(
        vm.points().iter().map(|p| p.n).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let (_, vm) = scenario("hvtest=mark", 1);
    assert_eq!(vm.marks(), ["hello from the test kernel"]);
}

fn hvprobe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(args)
        .output()
        .expect("hvprobe runs")
}

#[test]
fn cli_run_with_no_arguments_boots_the_embedded_kernel() {
    let out = hvprobe(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stdout.contains("hello: done"),
        "the console goes to stdout:\n{stdout}"
    );
    assert!(
        stderr.contains("guest: reached point 3"),
        "phases on stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("hvprobe: guest exited with code 0"),
        "{stderr}"
    );
}

#[test]
fn cli_exit_statuses() {
    let code = |args: &[&str]| hvprobe(args).status.code();
    assert_eq!(
        code(&["run", "-q", "--cmdline", "hvtest=exit code=12"]),
        Some(12)
    );
    assert_eq!(
        code(&["run", "-q", "--cmdline", "hvtest=exit code=200"]),
        Some(63)
    );
    assert_eq!(
        code(&["run", "-q", "--cmdline", "hvtest=reset"]),
        Some(i32::from(EXIT_GUEST_RESET))
    );
    assert_eq!(
        code(&["run", "-q", "--cmdline", "hvtest=triple-fault"]),
        Some(i32::from(EXIT_GUEST_CRASH))
    );
    assert_eq!(
        code(&["run", "-q", "--cmdline", "hvtest=spin", "--timeout", "0.5"]),
        Some(i32::from(EXIT_TIMEOUT))
    );
}

#[test]
fn cli_quiet_and_serial_log() {
    let log = std::env::temp_dir().join(format!("hvprobe-serial-{}.log", std::process::id()));
    let out = hvprobe(&["run", "--quiet", "--serial-log", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "--quiet prints nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the console went to the log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello: done"), "{text}");
    let _ = std::fs::remove_file(log);
}

#[test]
fn cli_config_file_and_flags_override() {
    let dir = std::env::temp_dir().join(format!("hvprobe-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        "cmdline = \"hvtest=exit code=21\"\ncpus = 2\nquiet = true\n",
    )
    .unwrap();
    assert_eq!(
        hvprobe(&["run", "--config", cfg.to_str().unwrap()])
            .status
            .code(),
        Some(21)
    );
    let out = hvprobe(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--cmdline",
        "hvtest=exit code=22",
    ]);
    assert_eq!(out.status.code(), Some(22), "the flag wins over the file");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_kvm_device_is_a_vmm_failure_with_advice() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["run", "--quiet"])
        .env("HVPROBE_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(vmm::outcome::EXIT_VMM_FAILURE)),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("Cannot open /nonexistent/kvm: no such device: load the kvm module"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_no_kernel_gives_one_line() {
    let f = std::env::temp_dir().join(format!("hvprobe-notakernel-{}", std::process::id()));
    std::fs::write(&f, b"#!/bin/sh\necho this is not a kernel\n").unwrap();
    let out = hvprobe(&["run", "--kernel", f.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].starts_with("hvprobe: "), "{stderr}");
    assert_eq!(
        lines[0].matches("Not a kernel image").count(),
        1,
        "said once: {stderr}"
    );
    assert!(!stderr.contains("panicked"));
    let _ = std::fs::remove_file(f);
}
