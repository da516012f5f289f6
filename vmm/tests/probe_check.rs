//! `probe-check` on real code: entry-point statistics on Debian's stock kernel, and the
//! `hvprobe probe-check` command on the bundled test kernel.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use hvprobe_tests::{debian_kernel, skip};
use vmm::outcome::EXIT_BAD_INPUT;
use vmm::probe_check::ProbeChecker;

/// Every `SAMPLE`-th text function is checked (1: all; about 5 s in a debug build).
const SAMPLE: usize = 1;

#[test]
fn debian_kernel_entry_points_probe_and_optimize_statistic() {
    let Some(kernel) = debian_kernel() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the Debian kernel first (scripts/fetch-debian-kernel.sh)"
        );
        skip(
            "probe-check statistic on Debian's kernel",
            "Debian kernel not fetched; run scripts/fetch-debian-kernel.sh",
        );
        return;
    };
    let started = Instant::now();
    let image = std::fs::read(&kernel).unwrap();
    let checker = ProbeChecker::new(&image).expect("Debian's bzImage reads");
    let stats = checker.entry_stats(SAMPLE);
    let pct = |n: usize| 100.0 * n as f64 / stats.checked.max(1) as f64;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "probe-check on {}: {} text functions, {} checked (1 in {SAMPLE}): entry probe-able \
         {} ({:.1}%), optimizable {} ({:.1}%) [{:.1} s]",
        kernel.display(),
        stats.functions,
        stats.checked,
        stats.probeable,
        pct(stats.probeable),
        stats.optimizable,
        pct(stats.optimizable),
        started.elapsed().as_secs_f64(),
    );
    let _ = writeln!(
        err,
        "  {} entries start with `call __fentry__`; with it nopped as at boot, {} ({:.1}%) \
         are optimizable",
        stats.fentry_calls,
        stats.optimizable_fentry_nopped,
        pct(stats.optimizable_fentry_nopped),
    );
    for (reason, n) in stats.refusals.iter().take(6) {
        let _ = writeln!(err, "  not optimizable: {reason}: {n} ({:.1}%)", pct(*n));
    }
    assert!(stats.functions > 20_000, "{stats:?}");
    assert!(stats.checked * SAMPLE >= stats.functions, "{stats:?}");
    assert!(pct(stats.probeable) >= 99.0, "{stats:?}");
    assert!(stats.optimizable <= stats.probeable, "{stats:?}");
    // Most entries start with ftrace's `call __fentry__`, which cannot run out of line; the
    // rest (notrace functions) mostly can.
    assert!(pct(stats.optimizable) >= 10.0, "{stats:?}");
    assert!(pct(stats.fentry_calls) >= 50.0, "{stats:?}");
    assert!(
        stats.optimizable_fentry_nopped * 10 >= stats.fentry_calls * 9,
        "{stats:?}"
    );
    // Linux's exception table: every probe-able faulting instruction refuses a jump (run out
    // of line, its fault would find no fixup), with the typed reason.
    let fixups = checker.fixups();
    let mut refused = 0;
    let mut probeable = 0;
    for &at in fixups.iter().step_by(5) {
        let r = checker.check_addr(at);
        if r.probe.is_err() {
            continue;
        }
        probeable += 1;
        let shown = r.to_string();
        assert!(
            r.optimize.is_err(),
            "a jump over a faulting instruction was allowed: {shown}"
        );
        if shown.contains("exception-table fixup") {
            refused += 1;
        }
    }
    let _ = writeln!(
        err,
        "  exception table: {} entries; of {} sampled faulting instructions that take a probe, \
         all refuse a jump, {refused} for their fixup (the rest for another reason first)",
        fixups.len(),
        probeable
    );
    assert!(fixups.len() > 100, "{}", fixups.len());
    assert!(refused > 10, "{refused}");
}

fn hvprobe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn probe_check_command_on_the_test_kernel() {
    let out = hvprobe(&["probe-check", "tk_probe_target", "tk_probe_target+1"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("tk_probe_target+0x0  0x"), "{stdout}");
    assert!(lines[0].contains("  probe: yes  optimize: "), "{stdout}");
    assert!(lines[1].starts_with("tk_probe_target+0x1  0x"), "{stdout}");
    assert!(lines[1].contains("  probe: "), "{stdout}");

    let out = hvprobe(&["probe-check", "tk_probe_target", "nonexistent", "x+zz"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_BAD_INPUT)),
        "{stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors[0].contains("Unknown symbol 'nonexistent'"),
        "{stderr}"
    );
    assert!(errors[1].contains("Bad offset 'zz'"), "{stderr}");
}
