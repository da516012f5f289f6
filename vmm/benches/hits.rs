//! Probe hit benchmark: the round trip of an int3 probe hit and of a hardware execute
//! breakpoint hit, each against a bare PIO exit, all through hvprobe's own vCPU loop with an
//! introspection session attached (the same `Introspector` + `IntrospectHook` as
//! `hvprobe run --probe/--hbreak`).
//!
//! The guest calls a function `f` N times between two POINTs (`call f; dec ecx; jnz`), in four
//! variants, interleaved in one run (the order rotates every round) because the machine is
//! noisy; the median of each is printed:
//! 0. unprobed: `f` is `nop; ret`, no exit at all: the loop's own guest cost;
//! 1. bare PIO exit: `f` is `out dx, eax` (SCRATCH port) `; ret`: one exit per call;
//! 2. int3 probe hit: `f` is `nop; ret` with a session probe on `f`;
//! 3. hardware execute breakpoint hit: `f` is `nop; ret` with `--hbreak` on `f`.
//!
//! Every variant runs 5 guest instructions per call, so the unprobed loop is subtracted from
//! the others to get the cost of one exit or hit. On a software KVM (our dev/CI machines, see
//! shared/PLATFORM.md) ring-0 guest code is emulated at about 0.5 µs per instruction, so
//! that loop costs a few µs per call; on hardware KVM it is a few ns.
//!
//! Run: `cargo bench -p vmm --bench hits` (`HVPROBE_BENCH_N`, `HVPROBE_BENCH_ROUNDS` override
//! N and the number of rounds). `HVPROBE_BENCH_VARIANT=base|pio|probe|hbreak` runs only that
//! variant, without warm-up (for `scripts/callgrind-hits.sh`).

mod common;
use common::{env_u32, median};

use std::sync::Arc;
use std::time::Duration;

use hvprobe_tests::code_asm::*;
use hvprobe_tests::{PORT_SCRATCH, Program, assemble, emit_exit, emit_point};
use introspect::events::{self, Sources};
use introspect::session::{Introspector, SessionSpec};
use vmm::instrument::IntrospectHook;
use vmm::outcome::Outcome;
use vmm::vm::Vm;

/// Guest RAM (the probe tests' size: a tiny guest needs no more).
const MEM_SIZE: u64 = 64 << 20;
/// Point numbers around the measured loop.
const BEFORE: u32 = 1;
const AFTER: u32 = 2;
const PROBE_GOAL: f64 = 2.2;
const HBREAK_GOAL: f64 = 1.3;

/// What `f` does on every call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Base,
    Pio,
    Probe,
    Hbreak,
}

const VARIANTS: [Variant; 4] = [Variant::Base, Variant::Pio, Variant::Probe, Variant::Hbreak];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::Pio => "pio",
            Variant::Probe => "probe",
            Variant::Hbreak => "hbreak",
        }
    }

    fn parse(s: &str) -> Option<Variant> {
        VARIANTS.into_iter().find(|v| v.name() == s)
    }

    fn row(self) -> &'static str {
        match self {
            Variant::Base => "unprobed loop (call f; nop; ret; dec; jnz), no exit",
            Variant::Pio => "bare PIO exit (f: out SCRATCH; ret)",
            Variant::Probe => "int3 probe hit (probe on f: nop; ret)",
            Variant::Hbreak => "hardware execute breakpoint hit (--hbreak f)",
        }
    }
}

/// POINT 1, N calls of `f`, POINT 2, EXIT; `f` is `out dx, eax; ret` for the PIO variant and
/// `nop; ret` otherwise (label "f").
fn program(variant: Variant, n: u32) -> Program {
    assemble(|a, l| {
        let mut f = a.create_label();
        emit_point(a, BEFORE)?;
        a.mov(ecx, n)?;
        a.mov(dx, u32::from(PORT_SCRATCH))?;
        a.mov(eax, 0x5a5a_5a5au32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        emit_point(a, AFTER)?;
        emit_exit(a, 0)?;
        a.set_label(&mut f)?;
        l.name("f", f);
        if variant == Variant::Pio {
            a.out(dx, eax)?;
        } else {
            a.nop()?;
        }
        a.ret()
    })
}

fn spec(variant: Variant, p: &Program) -> SessionSpec {
    let f = format!("{:#x}", p.label("f"));
    SessionSpec {
        probes: if variant == Variant::Probe {
            vec![introspect::session::ProbeRequest::int3(f.clone())]
        } else {
            Vec::new()
        },
        hbreaks: if variant == Variant::Hbreak {
            vec![f]
        } else {
            Vec::new()
        },
        watches: Vec::new(),
    }
}

/// Runs `p` to its end under a session for `variant` (every variant, even the ones without
/// probes, goes through the same hook and vCPU loop); returns the time per call of `f`.
fn run(variant: Variant, p: &Program, n: u32) -> Duration {
    let config = common::raw_config(p, MEM_SIZE);
    let sources = Arc::new(Sources::new());
    // Room for every event: a hit never takes the overflow path.
    let (sink, receiver) = events::channel(sources.clone(), n as usize + 64);
    let intro = Arc::new(Introspector::new(None, 1, sink));
    let hook = Arc::new(IntrospectHook::new(intro.clone()));
    let mut vm = Vm::new(&config, Some(hook.clone())).expect("VM builds");
    vm.start_paused().expect("vCPU starts");
    hook.attach(vm.target(), vm.ram_control());
    intro
        .setup(&vm.target(), &spec(variant, p))
        .expect("session sets up");
    vm.resume_all().expect("guest runs");
    let outcome = vm
        .wait(Some(Duration::from_secs(600)))
        .expect("guest runs to its end");
    assert_eq!(outcome, Outcome::GuestExit { code: 0 }, "{variant:?} guest");
    let expected = if matches!(variant, Variant::Probe | Variant::Hbreak) {
        u64::from(n)
    } else {
        0
    };
    let hits: u64 = sources.iter().map(|(_, s)| s.hits()).sum();
    let lost: u64 = sources.iter().map(|(_, s)| s.lost()).sum();
    assert_eq!((hits, lost), (expected, 0), "{variant:?}: hits, lost");
    let events = std::iter::from_fn(|| receiver.try_recv()).count();
    assert_eq!(events as u64, expected, "{variant:?}: one event per hit");
    let points = vm.points();
    let at = |k: u32| {
        points
            .iter()
            .find(|p| p.n == k)
            .unwrap_or_else(|| panic!("no point {k} in {points:?}"))
            .at
    };
    (at(AFTER) - at(BEFORE)) / n
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` from other harnesses is ignored.
    let n = env_u32("HVPROBE_BENCH_N", 5_000);
    if let Ok(v) = std::env::var("HVPROBE_BENCH_VARIANT") {
        let variant = Variant::parse(&v)
            .unwrap_or_else(|| panic!("HVPROBE_BENCH_VARIANT={v}: base, pio, probe or hbreak"));
        let rounds = env_u32("HVPROBE_BENCH_ROUNDS", 1);
        let p = program(variant, n);
        for _ in 0..rounds {
            let t = run(variant, &p, n);
            println!("{}: N={n}, {:.2} µs per call", variant.name(), us(t));
        }
        return;
    }
    let rounds = env_u32("HVPROBE_BENCH_ROUNDS", 7);
    let programs: Vec<Program> = VARIANTS.iter().map(|&v| program(v, n)).collect();

    // warm-up (page cache, lazy statics, kick handler), not counted
    for v in VARIANTS {
        let warm = 200.min(n);
        run(v, &program(v, warm), warm);
    }

    let mut t: [Vec<Duration>; 4] = Default::default();
    for round in 0..rounds as usize {
        for k in 0..VARIANTS.len() {
            let i = (round + k) % VARIANTS.len();
            t[i].push(run(VARIANTS[i], &programs[i], n));
        }
        eprintln!(
            "round {}: per call base {:.2?}  pio {:.2?}  probe {:.2?}  hbreak {:.2?}",
            round + 1,
            t[0][round],
            t[1][round],
            t[2][round],
            t[3][round],
        );
    }
    let m: Vec<Duration> = t.iter_mut().map(|v| median(v)).collect();
    let base = us(m[0]);
    let net: Vec<f64> = m.iter().map(|&d| us(d) - base).collect();

    let title = format!("hits benchmark (median of {rounds} rounds, N={n} calls of f, 1 vCPU)");
    println!(
        "{title:<64}{:>10} {:>10}  {:>6} {:>6}  goal",
        "per call", "per hit", "ratio", "gross"
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        let (hit, ratio, gross, goal) = match v {
            Variant::Base => ("-".into(), "-".into(), "-".into(), "(subtracted)".into()),
            Variant::Pio => (
                format!("{:.2}µs", net[i]),
                "1.00".into(),
                "1.00".into(),
                "(reference)".into(),
            ),
            Variant::Probe | Variant::Hbreak => {
                let goal = if *v == Variant::Probe {
                    PROBE_GOAL
                } else {
                    HBREAK_GOAL
                };
                let r = net[i] / net[1];
                let ok = if r <= goal { "ok" } else { "MISSED" };
                (
                    format!("{:.2}µs", net[i]),
                    format!("{r:.2}"),
                    format!("{:.2}", us(m[i]) / us(m[1])),
                    format!("<= {goal:.1} {ok}"),
                )
            }
        };
        let call = format!("{:.2}µs", us(m[i]));
        println!(
            "{:<64}{call:>10} {hit:>10}  {ratio:>6} {gross:>6}  {goal}",
            v.row()
        );
    }
    println!(
        "per hit = per call - unprobed loop ({base:.2} µs: 5 guest instructions, emulated here at \
         ~0.5 µs each; ~ns on hardware KVM); ratio = per hit / PIO per hit; gross = per call / PIO \
         per call"
    );
    println!(
        "exits per hit: the probe on `nop` is one (the int3 exit; the nop is emulated on the \
         host), two for instructions that must be single-stepped; an execute breakpoint hit is \
         two on this software KVM (RF ignored: disable the slot, single-step, re-arm) and one on \
         hardware KVM (RF)."
    );
}
