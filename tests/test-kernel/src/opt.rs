//! Workloads for jump-optimized probes ("optprobes"): naked probe targets whose bytes are
//! exactly known, a checksummed loop (`optloop`), a benchmark (`optbench`), a paced ring-3
//! caller for capture benchmarks (`ring3pace`), and two checks of the ring-3 environment
//! (`ring3`, `tscaux`).
//!
//! Command-line parameters: `hvring=0|3` (default 0) runs the workload in ring 0 or, through
//! [`crate::user::run_in_ring3`], in ring 3 (where our CI's KVM runs code natively instead of
//! emulating it); `hviters=N` (decimal) bounds the number of iterations.

use core::arch::{asm, naked_asm};
use core::fmt::{self, Write as _};
use core::hint::black_box;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::bootparams::param;
use crate::scenarios::Context;
use crate::serial::{Bytes, Serial, kprintln};
use crate::testdev::{self, ID, Mark, PIO_BASE, mmio, reg};
use crate::{arena, port, user};

// ---------------------------------------------------------------------------------------
// Probe targets. Offsets are from the symbol; every listing is the exact encoding.
// ---------------------------------------------------------------------------------------

/// Plain register arithmetic, nothing RIP-relative and no branch in the first 14 bytes:
/// returns `((a * b) + 0x11) ^ a` (wrapping).
///
/// ```text
/// +0   48 89 f8       mov  rax, rdi
/// +3   48 0f af c6    imul rax, rsi
/// +7   48 83 c0 11    add  rax, 0x11
/// +11  48 31 f8       xor  rax, rdi
/// +14  c3             ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_opt_plain(a: u64, b: u64) -> u64 {
    naked_asm!(
        "mov rax, rdi",
        "imul rax, rsi",
        "add rax, 0x11",
        "xor rax, rdi",
        "ret",
    )
}

/// The arithmetic of [`tk_opt_plain`].
const fn plain_math(a: u64, b: u64) -> u64 {
    a.wrapping_mul(b).wrapping_add(0x11) ^ a
}

/// The value of [`TK_OPT_DATA`].
pub const OPT_DATA_VALUE: u64 = 0x1234_5678_9abc_def0;

/// What [`tk_opt_riprel`] loads RIP-relative (in .data: an atomic is never in .rodata).
#[unsafe(no_mangle)]
pub static TK_OPT_DATA: AtomicU64 = AtomicU64::new(OPT_DATA_VALUE);

/// How often [`tk_opt_riprel`] ran (it increments this RIP-relative itself).
#[unsafe(no_mangle)]
pub static TK_OPT_RIPREL_CALLS: AtomicU64 = AtomicU64::new(0);

/// A RIP-relative load first, then a RIP-relative read-modify-write: returns
/// `TK_OPT_DATA + a` (wrapping) and counts its calls in [`TK_OPT_RIPREL_CALLS`].
///
/// ```text
/// +0   48 8b 05 <rel32>   mov rax, qword ptr [rip + TK_OPT_DATA]
/// +7   48 ff 05 <rel32>   inc qword ptr [rip + TK_OPT_RIPREL_CALLS]
/// +14  48 01 f8           add rax, rdi
/// +17  c3                 ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_opt_riprel(a: u64) -> u64 {
    naked_asm!(
        "mov rax, qword ptr [rip + {data}]",
        "inc qword ptr [rip + {calls}]",
        "add rax, rdi",
        "ret",
        data = sym TK_OPT_DATA,
        calls = sym TK_OPT_RIPREL_CALLS,
    )
}

/// The arithmetic of [`tk_opt_riprel`].
const fn riprel_math(a: u64) -> u64 {
    OPT_DATA_VALUE.wrapping_add(a)
}

/// A short conditional jump at +3 whose target (+10) is outside the first 5 bytes: returns
/// 0x77 if `a == 0`, else `a + 3` (wrapping).
///
/// ```text
/// +0   48 85 ff         test rdi, rdi
/// +3   74 05            je   +10
/// +5   48 8d 47 03      lea  rax, [rdi + 3]
/// +9   c3               ret
/// +10  b8 77 00 00 00   mov  eax, 0x77
/// +15  c3               ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_opt_shortjmp(a: u64) -> u64 {
    naked_asm!(
        "test rdi, rdi",
        "je 2f",
        "lea rax, [rdi + 3]",
        "ret",
        "2:",
        "mov eax, 0x77",
        "ret",
    )
}

/// The arithmetic of [`tk_opt_shortjmp`].
const fn shortjmp_math(a: u64) -> u64 {
    if a == 0 { 0x77 } else { a.wrapping_add(3) }
}

/// A loop that jumps back to +2, inside the 5 bytes a `jmp rel32` would overwrite: a
/// jump-optimized probe must be refused here (an int3 is fine). Returns `a + (a-1) + ... + 1`
/// = `a * (a + 1) / 2`; `a` must not be 0 (the loop would run 2^64 times).
///
/// ```text
/// +0   31 c0            xor eax, eax
/// +2   48 01 f8         add rax, rdi      <- loop head, jumped to from +8
/// +5   48 ff cf         dec rdi
/// +8   75 f8            jnz +2
/// +10  c3               ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_opt_jump_into(a: u64) -> u64 {
    naked_asm!(
        "xor eax, eax",
        "2:",
        "add rax, rdi",
        "dec rdi",
        "jnz 2b",
        "ret",
    )
}

/// The arithmetic of [`tk_opt_jump_into`] (for `a >= 1`).
const fn jump_into_math(a: u64) -> u64 {
    a.wrapping_mul(a.wrapping_add(1)) / 2
}

/// The benchmark's probed function: 8 bytes of plain arithmetic before anything else.
/// Returns `((a + 0x55) * a) ^ 0x1234` (wrapping).
///
/// ```text
/// +0   48 8d 47 55         lea  rax, [rdi + 0x55]
/// +4   48 0f af c7         imul rax, rdi
/// +8   48 35 34 12 00 00   xor  rax, 0x1234
/// +14  c3                  ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_bench_target(a: u64) -> u64 {
    naked_asm!(
        "lea rax, [rdi + 0x55]",
        "imul rax, rdi",
        "xor rax, 0x1234",
        "ret",
    )
}

/// The benchmark's baseline: the same bytes as [`tk_bench_target`], never probed.
///
/// ```text
/// +0   48 8d 47 55         lea  rax, [rdi + 0x55]
/// +4   48 0f af c7         imul rax, rdi
/// +8   48 35 34 12 00 00   xor  rax, 0x1234
/// +14  c3                  ret
/// ```
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_bench_plain(a: u64) -> u64 {
    naked_asm!(
        "lea rax, [rdi + 0x55]",
        "imul rax, rdi",
        "xor rax, 0x1234",
        "ret",
    )
}

// ---------------------------------------------------------------------------------------
// Parameters and output.
// ---------------------------------------------------------------------------------------

/// Set to nonzero by the host (through guest memory, at this symbol) to stop `optloop`.
#[unsafe(no_mangle)]
pub static TK_OPT_STOP: AtomicU64 = AtomicU64::new(0);

/// The iteration bound of the running workload (`u64::MAX`: until [`TK_OPT_STOP`]).
static ITERS: AtomicU64 = AtomicU64::new(u64::MAX);
/// The ring the workload runs in (0 or 3), for its output.
static RING: AtomicU8 = AtomicU8::new(0);

/// `optbench`'s rounds.
const BENCH_ROUNDS: u32 = 5;
/// `optbench`'s default iterations per loop.
const BENCH_DEFAULT_ITERS: u64 = 20_000;

/// The decimal value of `key=N`, if given; EXIT 2 if it is not a number.
fn number(cx: &Context, scenario: &str, key: &str) -> Option<u64> {
    let text = param(cx.cmdline, key.as_bytes())?;
    match core::str::from_utf8(text).ok().and_then(|s| s.parse().ok()) {
        Some(n) => Some(n),
        None => {
            kprintln!("{scenario}: {key}={} is not a decimal number", Bytes(text));
            testdev::exit(2)
        }
    }
}

/// Runs `body` in the ring `hvring=` names (default 0); EXIT 2 for any other ring.
fn in_ring(cx: &Context, scenario: &str, body: extern "C" fn() -> !) -> ! {
    match number(cx, scenario, "hvring") {
        None | Some(0) => body(),
        Some(3) => {
            RING.store(3, Relaxed);
            user::run_in_ring3(body)
        }
        Some(other) => {
            kprintln!("{scenario}: hvring={other}: expected 0 or 3");
            testdev::exit(2)
        }
    }
}

/// Prints a line on the console and sends it as a MARK line.
fn say(args: fmt::Arguments<'_>) {
    // Neither sink ever fails.
    let _ = writeln!(Serial, "{args}");
    let _ = writeln!(Mark, "{args}");
}

/// The time-stamp counter (`lfence; rdtsc`).
fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `lfence; rdtsc` only reads the TSC (CR4.TSD is clear, so also in ring 3).
    unsafe {
        asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `rdtscp`: the time-stamp counter and IA32_TSC_AUX (which hvprobe sets to the vCPU index).
fn rdtscp() -> (u64, u32) {
    let (lo, hi, aux): (u32, u32, u32);
    // SAFETY: `rdtscp` only reads the TSC and TSC_AUX.
    unsafe {
        asm!("rdtscp", out("eax") lo, out("edx") hi, out("ecx") aux, options(nomem, nostack, preserves_flags))
    };
    ((u64::from(hi) << 32) | u64::from(lo), aux)
}

// ---------------------------------------------------------------------------------------
// optloop
// ---------------------------------------------------------------------------------------

/// Folds one result into the checksum.
const fn mix(sum: u64, x: u64) -> u64 {
    sum.wrapping_mul(31).wrapping_add(x)
}

/// The arguments of iteration `i`: (plain a, plain b, riprel, shortjmp, jump_into).
const fn args(i: u64) -> (u64, u64, u64, u64, u64) {
    let short = if i.is_multiple_of(4) { 0 } else { i };
    (i, i ^ 0x5555, i, short, i % 7 + 1)
}

/// The checksum of `n` iterations, computed without calling the probe targets.
#[inline(never)]
fn expected_checksum(n: u64) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while i < n {
        let (a, b, r, s, j) = args(i);
        sum = mix(sum, plain_math(a, b));
        sum = mix(sum, riprel_math(r));
        sum = mix(sum, shortjmp_math(s));
        sum = mix(sum, jump_into_math(j));
        i += 1;
    }
    sum
}

/// `optloop`: calls the four probe targets in a loop until [`TK_OPT_STOP`] or `hviters=N`.
pub fn optloop(cx: &Context) -> ! {
    if let Some(n) = number(cx, "optloop", "hviters") {
        ITERS.store(n, Relaxed);
    }
    in_ring(cx, "optloop", optloop_body)
}

extern "C" fn optloop_body() -> ! {
    let limit = ITERS.load(Relaxed);
    // Called through opaque pointers: every iteration really calls every target.
    let plain = black_box(tk_opt_plain as extern "C" fn(u64, u64) -> u64);
    let riprel = black_box(tk_opt_riprel as extern "C" fn(u64) -> u64);
    let shortjmp = black_box(tk_opt_shortjmp as extern "C" fn(u64) -> u64);
    let jump_into = black_box(tk_opt_jump_into as extern "C" fn(u64) -> u64);
    testdev::point(1);
    let mut sum = 0;
    let mut n = 0;
    while n < limit {
        let (a, b, r, s, j) = args(n);
        sum = mix(sum, plain(a, b));
        sum = mix(sum, riprel(r));
        sum = mix(sum, shortjmp(s));
        sum = mix(sum, jump_into(j));
        n += 1;
        if TK_OPT_STOP.load(Relaxed) != 0 {
            break;
        }
    }
    let expected = expected_checksum(n);
    let calls = TK_OPT_RIPREL_CALLS.load(Relaxed);
    mmio::write64(reg::SCRATCH, n);
    let ok = sum == expected && calls == n;
    if sum != expected {
        kprintln!("optloop: checksum {sum:#x}, expected {expected:#x}");
    }
    if calls != n {
        kprintln!("optloop: tk_opt_riprel counted {calls} calls, expected {n}");
    }
    say(format_args!(
        "optloop: iterations {n} checksum {sum:#x} {}",
        if ok { "ok" } else { "FAILED" }
    ));
    testdev::point(2);
    testdev::exit(if ok { 0 } else { 1 })
}

// ---------------------------------------------------------------------------------------
// optbench
// ---------------------------------------------------------------------------------------

/// `optbench`: times `tk_bench_plain` against the probed `tk_bench_target`, 5 rounds.
pub fn optbench(cx: &Context) -> ! {
    ITERS.store(
        number(cx, "optbench", "hviters").unwrap_or(BENCH_DEFAULT_ITERS),
        Relaxed,
    );
    in_ring(cx, "optbench", optbench_body)
}

extern "C" fn optbench_body() -> ! {
    let n = ITERS.load(Relaxed);
    let plain = black_box(tk_bench_plain as extern "C" fn(u64) -> u64);
    let target = black_box(tk_bench_target as extern "C" fn(u64) -> u64);
    let mut ok = true;
    for round in 0..BENCH_ROUNDS {
        testdev::point(100);
        let t0 = rdtsc();
        let mut plain_sum = 0u64;
        for i in 0..n {
            plain_sum = plain_sum.wrapping_add(plain(i));
        }
        let t1 = rdtsc();
        testdev::point(101);
        let t2 = rdtsc();
        let mut target_sum = 0u64;
        for i in 0..n {
            target_sum = target_sum.wrapping_add(target(i));
        }
        let t3 = rdtsc();
        testdev::point(102);
        say(format_args!(
            "optbench: round {round} plain_cycles {} target_cycles {} iters {n}",
            t1.wrapping_sub(t0),
            t3.wrapping_sub(t2)
        ));
        if plain_sum != target_sum {
            kprintln!("optbench: round {round}: sums {plain_sum:#x} != {target_sum:#x}");
            ok = false;
        }
        if !arena::wait_drained() {
            kprintln!("optbench: round {round}: the arena's rings did not drain");
        }
    }
    testdev::exit(if ok { 0 } else { 1 })
}

// ---------------------------------------------------------------------------------------
// ring3pace
// ---------------------------------------------------------------------------------------

/// `ring3pace`'s calls per second (0: as fast as it can).
static PACE_RATE: AtomicU64 = AtomicU64::new(0);
/// `ring3pace`'s duration in milliseconds.
static PACE_MS: AtomicU64 = AtomicU64::new(1000);
/// The TSC rate `ring3pace` paces with, in Hz.
static PACE_TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// `ring3pace`: calls `tk_bench_target` from ring 3 for `hvms=MS` milliseconds (default
/// 1000), `hvrate=N` times per second (a `rdtsc` delay loop between calls; 0 or absent: as
/// fast as it can), with the TSC running at `hvtschz=HZ` (required: the host measures it;
/// the guest reads the host's TSC unscaled on kvm_pvm and on hardware KVM without TSC
/// scaling). POINT 1 before the first call, POINT 2 after the last, then it waits for
/// hvprobe to drain the arena's rings, POINT 3, a MARK line
/// `ring3pace: calls N cycles C rate R drained yes|no`, and EXIT 0.
///
/// A paced loop that falls behind (the vCPU was descheduled) does not catch up with a burst:
/// the next call is due one period after the late one.
pub fn ring3pace(cx: &Context) -> ! {
    let Some(hz) = number(cx, "ring3pace", "hvtschz").filter(|&hz| hz >= 1_000_000) else {
        kprintln!("ring3pace: hvtschz=HZ (the TSC rate, at least 1 MHz) is required");
        testdev::exit(2)
    };
    PACE_TSC_HZ.store(hz, Relaxed);
    PACE_RATE.store(number(cx, "ring3pace", "hvrate").unwrap_or(0), Relaxed);
    PACE_MS.store(number(cx, "ring3pace", "hvms").unwrap_or(1000), Relaxed);
    RING.store(3, Relaxed);
    user::run_in_ring3(ring3pace_body)
}

/// `rdtsc` without a fence: the pacing loop's clock.
fn rdtsc_nofence() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the TSC (CR4.TSD is clear, so also in ring 3).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

extern "C" fn ring3pace_body() -> ! {
    let hz = PACE_TSC_HZ.load(Relaxed);
    let rate = PACE_RATE.load(Relaxed);
    let ms = PACE_MS.load(Relaxed);
    let target = black_box(tk_bench_target as extern "C" fn(u64) -> u64);
    let span = hz.saturating_mul(ms) / 1000;
    // Cycles from one call to the next (0: no delay).
    let period = if rate == 0 { 0 } else { (hz / rate).max(1) };
    testdev::point(1);
    let t0 = rdtsc();
    let end = t0.saturating_add(span);
    let mut calls = 0u64;
    let mut sum = 0u64;
    if period == 0 {
        loop {
            for _ in 0..256 {
                sum = sum.wrapping_add(target(calls));
                calls += 1;
            }
            if rdtsc_nofence() >= end {
                break;
            }
        }
    } else {
        let mut due = t0;
        loop {
            sum = sum.wrapping_add(target(calls));
            calls += 1;
            due += period;
            let mut now = rdtsc_nofence();
            while now < due {
                core::hint::spin_loop();
                now = rdtsc_nofence();
            }
            if now >= end {
                break;
            }
            // Late by more than a period: no burst to catch up.
            if now - due > period {
                due = now;
            }
        }
    }
    let cycles = rdtsc().wrapping_sub(t0);
    testdev::point(2);
    let drained = arena::wait_drained();
    testdev::point(3);
    black_box(sum);
    say(format_args!(
        "ring3pace: calls {calls} cycles {cycles} rate {rate} drained {}",
        if drained { "yes" } else { "no" }
    ));
    testdev::exit(0)
}

// ---------------------------------------------------------------------------------------
// ring3 and tscaux
// ---------------------------------------------------------------------------------------

/// `ring3`: the test device over PIO and MMIO, the console and the TSC, from ring 3.
pub fn ring3(_: &Context) -> ! {
    RING.store(3, Relaxed);
    user::run_in_ring3(ring3_body)
}

extern "C" fn ring3_body() -> ! {
    let cpl = user::cpl();
    testdev::point(1);
    let pio_scratch = PIO_BASE + reg::SCRATCH;
    let pio_id = port::inl(PIO_BASE + reg::ID);
    port::outl(pio_scratch, 0x3333_0001);
    let mmio_scratch = mmio::read32(reg::SCRATCH);
    let mmio_id = mmio::read32(reg::ID);
    mmio::write32(reg::SCRATCH, 0x3333_0002);
    let pio_back = port::inl(pio_scratch);
    let t0 = rdtsc();
    let (t1, aux) = rdtscp();
    let checks = [
        ("cpl", u64::from(cpl), 3),
        ("ID over PIO", pio_id.into(), ID.into()),
        ("ID over MMIO", mmio_id.into(), ID.into()),
        ("SCRATCH PIO -> MMIO", mmio_scratch.into(), 0x3333_0001),
        ("SCRATCH MMIO -> PIO", pio_back.into(), 0x3333_0002),
        ("rdtsc before rdtscp", u64::from(t1 > t0), 1),
    ];
    let mut ok = true;
    for (what, got, want) in checks {
        if got != want {
            kprintln!("ring3: {what} = {got:#x}, expected {want:#x}: FAILED");
            ok = false;
        }
    }
    say(format_args!(
        "ring3: cpl {cpl} pio {:#x} mmio {:#x} tsc_aux {aux} {}",
        pio_id,
        mmio_id,
        if ok { "ok" } else { "FAILED" }
    ));
    testdev::point(2);
    testdev::exit(if ok { 0 } else { 1 })
}

/// `tscaux`: `rdtscp` in the ring `hvring=` names; MARKs IA32_TSC_AUX and puts it in
/// SCRATCH.
pub fn tscaux(cx: &Context) -> ! {
    in_ring(cx, "tscaux", tscaux_body)
}

extern "C" fn tscaux_body() -> ! {
    let (tsc, aux) = rdtscp();
    testdev::scratch(aux);
    say(format_args!(
        "tscaux: ring {} cpl {} aux {aux} tsc_nonzero {}",
        RING.load(Relaxed),
        user::cpl(),
        tsc != 0
    ));
    testdev::exit(0)
}
