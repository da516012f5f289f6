//! The scenarios, chosen with `hvtest=NAME` on the command line.

use core::arch::asm;
use core::hint::black_box;

use crate::bootparams::{BootParams, param};
use crate::serial::{Bytes, kprintln};
use crate::testdev::{self, ID, PIO_BASE, mmio, reg};
use crate::{halt_forever, port};

/// What a scenario gets to work with.
pub struct Context {
    /// The boot_params page.
    pub boot: BootParams,
    /// The command line.
    pub cmdline: &'static [u8],
}

/// A scenario: runs until the VM ends (or forever).
type Scenario = fn(&Context) -> !;

/// Every scenario, by name (vmm's `test_kernel::SCENARIOS` lists the same names).
const SCENARIOS: &[(&str, Scenario)] = &[
    ("hello", hello),
    ("exit", exit),
    ("points", points),
    ("mmio", mmio_widths),
    ("pio", pio_widths),
    ("mark", mark),
    ("edu", edu),
    ("triple-fault", triple_fault),
    ("reset", reset),
    ("spin", spin),
    ("hlt", hlt),
    ("panic", panic),
    ("optloop", crate::opt::optloop),
    ("optbench", crate::opt::optbench),
    ("ring3", crate::opt::ring3),
    ("ring3pace", crate::opt::ring3pace),
    ("tscaux", crate::opt::tscaux),
    ("serve", serve),
];

/// Runs the scenario called `name`; an unknown name ends the VM with exit code 2.
pub fn run(name: &[u8], cx: &Context) -> ! {
    if let Some((_, scenario)) = SCENARIOS.iter().find(|(n, _)| n.as_bytes() == name) {
        scenario(cx)
    }
    kprintln!("unknown scenario {}", Bytes(name));
    kprintln!("known scenarios:");
    for (n, _) in SCENARIOS {
        kprintln!("  {n}");
    }
    testdev::exit(2)
}

/// The arithmetic of [`tk_probe_target`], usable in constants.
const fn probe_math(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(31).wrapping_add(b);
    if x & 1 == 0 {
        x ^= 0x5a5a;
    } else {
        x = x.rotate_left(7);
    }
    x.wrapping_add(a ^ b)
}

/// The arithmetic of [`tk_loop_body`].
const fn loop_math(i: u64) -> u64 {
    i.wrapping_mul(i) ^ 0x55
}

/// What [`tk_leaf`] adds to its call count.
const LEAF_VALUE: u64 = 0x1eaf;
/// How often `hello` calls [`tk_loop_body`].
const LOOP_CALLS: u64 = 100;
/// The arguments `hello` passes to [`tk_probe_target`].
const PROBE_ARGS: (u64, u64) = (6, 7);

/// What `hello`'s calls of the tk_* functions add up to when nothing disturbs them.
const EXPECTED_SUM: u64 = {
    let mut sum = probe_math(PROBE_ARGS.0, PROBE_ARGS.1);
    let mut i = 0;
    while i < LOOP_CALLS {
        sum = sum.wrapping_add(loop_math(i));
        i += 1;
    }
    // tk_leaf is called once: its count is then 1.
    sum.wrapping_add(LEAF_VALUE + 1)
};

/// A probe target: a few instructions of arithmetic.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_probe_target(a: u64, b: u64) -> u64 {
    probe_math(a, b)
}

/// A function called in a loop (hit counts).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_loop_body(i: u64) -> u64 {
    loop_math(i)
}

/// How often [`tk_leaf`] ran. Loaded and stored without `lock` (one vCPU), so the leaf has
/// plain RIP-relative memory operands for relocation tests.
static LEAF_CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A leaf function with RIP-relative accesses: returns [`LEAF_VALUE`] plus its call count.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn tk_leaf() -> u64 {
    use core::sync::atomic::Ordering::Relaxed;
    let calls = LEAF_CALLS.load(Relaxed) + 1;
    LEAF_CALLS.store(calls, Relaxed);
    LEAF_VALUE + calls
}

/// Prints a check's outcome; true if `got == want`.
fn check(what: &str, got: u64, want: u64) -> bool {
    if got == want {
        kprintln!("hello: {what} = {got:#x}, ok");
    } else {
        kprintln!("hello: {what} = {got:#x}, expected {want:#x}: FAILED");
    }
    got == want
}

/// The default: boot information, the probe targets, the test device; EXIT 0, or 1 if a
/// check failed.
fn hello(cx: &Context) -> ! {
    for e in cx.boot.e820() {
        let last = e.addr.wrapping_add(e.size).wrapping_sub(1);
        kprintln!(
            "e820: [mem {:#018x}-{last:#018x}] {}",
            e.addr,
            e.kind_name()
        );
    }
    kprintln!("cmdline: {}", Bytes(cx.cmdline));
    testdev::point(1);

    let mut sum = tk_probe_target(black_box(PROBE_ARGS.0), black_box(PROBE_ARGS.1));
    for i in 0..black_box(LOOP_CALLS) {
        sum = sum.wrapping_add(tk_loop_body(i));
    }
    sum = sum.wrapping_add(tk_leaf());
    if !check("tk_* functions sum", sum, EXPECTED_SUM) {
        testdev::exit(1);
    }
    testdev::point(2);

    let pio_scratch = PIO_BASE + reg::SCRATCH;
    let mut ok = check(
        "ID over PIO",
        port::inl(PIO_BASE + reg::ID).into(),
        ID.into(),
    );
    ok &= check("ID over MMIO", mmio::read32(reg::ID).into(), ID.into());
    port::outl(pio_scratch, 0x1234_5678);
    ok &= check(
        "SCRATCH written by PIO, read by MMIO",
        mmio::read32(reg::SCRATCH).into(),
        0x1234_5678,
    );
    mmio::write32(reg::SCRATCH, 0x9abc_def0);
    ok &= check(
        "SCRATCH written by MMIO, read by PIO",
        port::inl(pio_scratch).into(),
        0x9abc_def0,
    );
    if !ok {
        kprintln!("hello: test device checks failed");
        testdev::exit(1);
    }
    if !crate::edu::drive() {
        kprintln!("hello: edu checks failed");
        testdev::exit(1);
    }
    testdev::point(3);
    kprintln!("hello: done");
    testdev::exit(0)
}

/// EXIT with `code=N` (default 7).
fn exit(cx: &Context) -> ! {
    let code = match param(cx.cmdline, b"code") {
        None => 7,
        Some(text) => match core::str::from_utf8(text).ok().and_then(|s| s.parse().ok()) {
            Some(code) => code,
            None => {
                kprintln!("exit: code={} is not a decimal number", Bytes(text));
                testdev::exit(2)
            }
        },
    };
    kprintln!("exit: code {code}");
    testdev::exit(code)
}

/// POINT 1..=5, then EXIT 0.
fn points(_: &Context) -> ! {
    for n in 1..=5 {
        testdev::point(n);
    }
    kprintln!("points: done");
    testdev::exit(0)
}

/// MMIO accesses of every width on the test device page, each value read printed.
fn mmio_widths(_: &Context) -> ! {
    let s = reg::SCRATCH;
    mmio::write8(s, 0x5a);
    kprintln!(
        "mmio: write8 {s:#x} 0x5a; read8 {s:#x} = {:#x}",
        mmio::read8(s)
    );
    mmio::write16(s, 0xbeef);
    kprintln!(
        "mmio: write16 {s:#x} 0xbeef; read16 {s:#x} = {:#x}",
        mmio::read16(s)
    );
    mmio::write32(s, 0x1234_5678);
    kprintln!(
        "mmio: write32 {s:#x} 0x12345678; read32 {s:#x} = {:#x}",
        mmio::read32(s)
    );
    mmio::write64(s, 0x0123_4567_89ab_cdef);
    kprintln!(
        "mmio: write64 {s:#x} 0x123456789abcdef; read64 {s:#x} = {:#x}",
        mmio::read64(s)
    );
    let id = reg::ID;
    kprintln!("mmio: read8 {id:#x} = {:#x}", mmio::read8(id));
    kprintln!("mmio: read16 {id:#x} = {:#x}", mmio::read16(id));
    kprintln!("mmio: read32 {id:#x} = {:#x}", mmio::read32(id));
    kprintln!("mmio: read64 {id:#x} = {:#x}", mmio::read64(id));
    kprintln!("mmio: done");
    testdev::exit(0)
}

/// Port I/O of every width on the test device ports, each value read printed.
fn pio_widths(_: &Context) -> ! {
    let s = PIO_BASE + reg::SCRATCH;
    port::outb(s, 0x5a);
    kprintln!("pio: outb {s:#x} 0x5a; inb {s:#x} = {:#x}", port::inb(s));
    port::outw(s, 0xbeef);
    kprintln!("pio: outw {s:#x} 0xbeef; inw {s:#x} = {:#x}", port::inw(s));
    port::outl(s, 0x1234_5678);
    kprintln!(
        "pio: outl {s:#x} 0x12345678; inl {s:#x} = {:#x}",
        port::inl(s)
    );
    let id = PIO_BASE + reg::ID;
    kprintln!("pio: inb {id:#x} = {:#x}", port::inb(id));
    kprintln!("pio: inw {id:#x} = {:#x}", port::inw(id));
    kprintln!("pio: inl {id:#x} = {:#x}", port::inl(id));
    kprintln!("pio: done");
    testdev::exit(0)
}

/// One MARK line ("hello from the test kernel"), then EXIT 0.
fn mark(_: &Context) -> ! {
    testdev::mark(b"hello from the test kernel\n");
    kprintln!("mark: done");
    testdev::exit(0)
}

/// Drives the `edu` PCI device: probe, BAR programming, every register, DMA, unmap (see
/// [`crate::edu`]); EXIT 0, or 1 if a check failed.
fn edu(_: &Context) -> ! {
    crate::edu::run()
}

/// An empty IDT, then `ud2`: #UD cannot be delivered, so #GP, #DF, triple fault (shutdown).
fn triple_fault(_: &Context) -> ! {
    kprintln!("triple-fault: lidt with limit 0, then ud2");
    // IDTR image: 16-bit limit 0, 64-bit base 0.
    let idtr = [0u16; 5];
    // SAFETY: loading an empty IDT and faulting is the point: the machine shuts down and no
    // Rust code runs after `ud2`. `lidt` only reads the 10 bytes of `idtr`.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) &idtr, options(noreturn, nostack)) }
}

/// 0xFE to the i8042 command port (pulse the reset line), then spin.
fn reset(_: &Context) -> ! {
    kprintln!("reset: writing 0xfe to port 0x64");
    port::outb(0x64, 0xfe);
    loop {
        core::hint::spin_loop();
    }
}

/// Loops forever (`pause` in a loop), for timeout tests.
fn spin(_: &Context) -> ! {
    kprintln!("spin: looping forever");
    loop {
        core::hint::spin_loop();
    }
}

/// How many times [`serve`] has called [`tk_probe_target`] (a host reads it by symbol).
#[unsafe(no_mangle)]
pub static TK_SERVE_CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Written by the host (a control API client's `mem.write`): non-zero ends [`serve`] with
/// that exit code.
#[unsafe(no_mangle)]
pub static TK_SERVE_EXIT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A guest to attach to: calls [`tk_probe_target`] forever, counting the calls in
/// [`TK_SERVE_CALLS`], until the host writes an exit code into [`TK_SERVE_EXIT`].
fn serve(_: &Context) -> ! {
    use core::sync::atomic::Ordering::SeqCst;
    kprintln!("serve: calling tk_probe_target until TK_SERVE_EXIT is set");
    let mut i = 0u64;
    loop {
        core::hint::black_box(tk_probe_target(core::hint::black_box(i), i + 1));
        i += 1;
        TK_SERVE_CALLS.store(i, SeqCst);
        let code = TK_SERVE_EXIT.load(SeqCst);
        if code != 0 {
            kprintln!("serve: {i} calls, exiting with {code}");
            testdev::exit(u32::try_from(code).unwrap_or(63))
        }
    }
}

/// `cli; hlt` forever.
fn hlt(_: &Context) -> ! {
    kprintln!("hlt: halting with interrupts off");
    halt_forever()
}

/// A Rust panic: the panic handler prints it and EXITs 101.
fn panic(_: &Context) -> ! {
    panic!("the panic scenario panics on purpose")
}
