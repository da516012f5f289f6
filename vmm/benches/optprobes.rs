//! Jump-optimized probe ("optprobe") benchmark: the cost per hit of a probe on the test
//! kernel's `tk_bench_target`, armed as an int3, as a jump whose trampoline exits once to the
//! host (`jump-exit`) and as a jump whose in-guest handler records the hit in guest memory
//! (`jump`), against the unprobed loop, with the workload in ring 0 and in ring 3.
//!
//! Every cell boots the embedded test kernel with `hvtest=optbench hvring=R hviters=N`
//! through [`vmm::instrument::run_instrumented`] (what `hvprobe run --probe
//! tk_bench_target:MODE` does). The guest runs 5 rounds of: POINT 100, N calls of the never
//! probed `tk_bench_plain`, POINT 101, N calls of `tk_bench_target` (the same bytes), POINT
//! 102, then a MARK line with the guest TSC cycles of both loops. Per hit = (target loop -
//! plain loop) / N, the median over every round of every VM run, measured twice:
//! - from the guest's TSC cycles, converted to ns with the host TSC rate (measured here
//!   against `Instant`): this assumes the guest reads the host TSC unscaled, as kvm_pvm
//!   guests do (and hardware KVM guests without TSC scaling);
//! - from the host timestamps of the POINT exits (independent of any TSC assumption; each
//!   point is one exit, which cancels out of the difference).
//!
//! The "none" rows run the same workload with no probe: their per-hit column is the noise
//! floor of the method (target and plain loops are the same code).
//!
//! On our software KVM (kvm_pvm, see shared/PLATFORM.md) ring-0 code is emulated at about
//! 0.5 µs per instruction and ring-3 code runs natively, so N is small in ring 0 and for the
//! exit-heavy cells, and large for the native ring-3 cells. int3 in guest ring 3 triple-faults
//! there: that cell prints why it was not run. On hardware KVM every cell runs.
//!
//! Run: `cargo bench -p vmm --bench optprobes`. Knobs: `HVPROBE_BENCH_RUNS` (VM runs per cell,
//! default 3), `HVPROBE_BENCH_N_SLOW` (N of ring-0 cells on a software KVM, default 500),
//! `HVPROBE_BENCH_N_EXIT` (N of native exit cells: int3 and jump-exit, default 2000),
//! `HVPROBE_BENCH_N_FAST` (N of native cells without exits, default 50000; at most the ring
//! capacity, 262,144 records per vCPU). `HVPROBE_BENCH_VARIANT=RING:MODE` (e.g. `0:jump-exit`,
//! `3:none`) runs that cell alone, with `HVPROBE_BENCH_N` calls if set
//! (`scripts/callgrind-hits.sh --bench optprobes` counts host instructions per hit that way).

mod common;
use common::env_u32;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm::config::{KernelSource, ProbeSpec, SerialOutput, VmConfig};
use vmm::instrument::run_instrumented;
use vmm::outcome::Outcome;

/// The probed function.
const TARGET: &str = "tk_bench_target";
/// Rounds per VM run (fixed by the test kernel's `optbench`).
const ROUNDS: usize = 5;
/// Point numbers of one round: before the plain loop, between the loops, after the target loop.
const ROUND_POINTS: [u32; 3] = [100, 101, 102];
/// Records per vCPU ring in the test kernel's 20 MiB arena with 1 vCPU (its header's
/// `ring_capacity`): a round's hits must fit, since the guest waits for the drain only after
/// each round.
const RING_CAPACITY: u32 = 262_144;
/// Goal: a jump probe with an exit handler costs at most this fraction of an int3 hit.
const JUMP_EXIT_GOAL: f64 = 0.6;
/// Goal: the in-guest handler adds at most this many ns per hit in native code.
const IN_GUEST_GOAL_NS: f64 = 100.0;

/// How `tk_bench_target` is probed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    Int3,
    JumpExit,
    Jump,
}

const MODES: [Mode; 4] = [Mode::None, Mode::Int3, Mode::JumpExit, Mode::Jump];

impl Mode {
    /// The `--probe` mode, if there is a probe.
    fn spec(self) -> Option<&'static str> {
        match self {
            Mode::None => None,
            Mode::Int3 => Some("int3"),
            Mode::JumpExit => Some("jump-exit"),
            Mode::Jump => Some("jump"),
        }
    }

    fn row(self) -> &'static str {
        match self {
            Mode::None => "none (control: same loop twice)",
            Mode::Int3 => "int3 (exit per hit)",
            Mode::JumpExit => "jump-exit (1 doorbell exit per hit)",
            Mode::Jump => "jump (in-guest handler, no exit)",
        }
    }

    /// Whether every hit exits to the host.
    fn exits(self) -> bool {
        matches!(self, Mode::Int3 | Mode::JumpExit)
    }
}

/// One cell of the table.
#[derive(Clone, Copy, Debug)]
struct Cell {
    ring: u8,
    mode: Mode,
    /// Calls per loop.
    n: u32,
}

impl Cell {
    /// `RING:MODE`, as `HVPROBE_BENCH_VARIANT` names it.
    fn variant(self) -> String {
        format!("{}:{}", self.ring, self.mode.spec().unwrap_or("none"))
    }

    /// Why this cell cannot run on this machine, if it cannot.
    fn not_run(self, software_kvm: bool) -> Option<&'static str> {
        (software_kvm && self.ring == 3 && self.mode == Mode::Int3).then_some(
            "NOT RUN: int3 in guest ring 3 triple-faults on this software KVM (kvm_pvm, see \
             shared/PLATFORM.md); it runs on hardware KVM",
        )
    }
}

/// One round's measurements.
#[derive(Clone, Copy, Debug)]
struct Round {
    plain_cycles: u64,
    target_cycles: u64,
    /// Host time POINT 100 -> 101 and 101 -> 102.
    plain_host: Duration,
    target_host: Duration,
}

/// What one VM run of a cell gave.
#[derive(Debug)]
struct RunSample {
    rounds: Vec<Round>,
    /// Hits and lost events of the probe's source (0 without a probe).
    hits: u64,
    lost: u64,
    /// How the probe was armed (the source's `how()`).
    how: String,
    elapsed: Duration,
}

/// `optbench: round R plain_cycles P target_cycles T iters N` -> (R, P, T, N).
fn parse_mark(line: &str) -> Option<(usize, u64, u64, u32)> {
    let w: Vec<&str> = line.split(' ').collect();
    match w.as_slice() {
        [
            "optbench:",
            "round",
            r,
            "plain_cycles",
            p,
            "target_cycles",
            t,
            "iters",
            n,
        ] => Some((
            r.parse().ok()?,
            p.parse().ok()?,
            t.parse().ok()?,
            n.parse().ok()?,
        )),
        _ => None,
    }
}

/// Boots the test kernel for `cell` once and checks that it ran the whole workload.
fn run_once(cell: Cell) -> Result<RunSample, String> {
    let mut config = VmConfig {
        kernel: KernelSource::Embedded,
        cmdline: Some(format!(
            "hvtest=optbench hvring={} hviters={}",
            cell.ring, cell.n
        )),
        cpus: 1,
        serial: SerialOutput::Sink,
        quiet: true,
        timeout: Some(Duration::from_secs(120)),
        ..VmConfig::default()
    };
    config.instrument.events = Some(PathBuf::from("/dev/null"));
    if let Some(mode) = cell.mode.spec() {
        let spec: ProbeSpec = format!("{TARGET}:{mode}")
            .parse()
            .map_err(|e| format!("--probe {TARGET}:{mode}: {e}"))?;
        config.instrument.probes.push(spec);
    }
    let (run, ins) = run_instrumented(&config).map_err(|e| format!("the VM failed: {e}"))?;
    let numbers: Vec<u32> = run.points.iter().map(|p| p.n).collect();
    if run.outcome != (Outcome::GuestExit { code: 0 }) {
        return Err(format!(
            "the guest ended with {:?}, expected EXIT 0 (points {numbers:?}, marks {:?})",
            run.outcome, run.marks
        ));
    }
    if numbers != ROUND_POINTS.repeat(ROUNDS) {
        return Err(format!(
            "points {numbers:?}, expected {ROUND_POINTS:?} x {ROUNDS}"
        ));
    }
    if run.marks.len() != ROUNDS {
        return Err(format!("{} MARK lines: {:?}", run.marks.len(), run.marks));
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for ((k, line), p) in run.marks.iter().enumerate().zip(run.points.chunks(3)) {
        let Some((r, plain_cycles, target_cycles, iters)) = parse_mark(line) else {
            return Err(format!("unexpected MARK line {line:?}"));
        };
        if (r, iters) != (k, cell.n) {
            return Err(format!(
                "MARK line {line:?}: expected round {k}, iters {}",
                cell.n
            ));
        }
        rounds.push(Round {
            plain_cycles,
            target_cycles,
            plain_host: p[1].at - p[0].at,
            target_host: p[2].at - p[1].at,
        });
    }
    let (hits, lost, how) = ins
        .sources
        .iter()
        .map(|(_, s)| (s.hits(), s.lost(), s.how()))
        .fold((0, 0, String::new()), |(h, l, w), (sh, sl, sw)| {
            (h + sh, l + sl, if w.is_empty() { sw } else { w })
        });
    Ok(RunSample {
        rounds,
        hits,
        lost,
        how,
        elapsed: run.elapsed,
    })
}

/// The host TSC rate in Hz, against `Instant` over about 100 ms.
fn tsc_hz() -> f64 {
    let t0 = Instant::now();
    // SAFETY: `rdtsc` reads the time-stamp counter and touches no memory; every x86_64 CPU
    // has it.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let dt = t0.elapsed();
    c1.wrapping_sub(c0) as f64 / dt.as_secs_f64()
}

/// The median of `v` (the upper one for an even count); NaN if empty.
fn median_f64(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A cell's results over all its runs.
#[derive(Default)]
struct CellResult {
    runs: Vec<RunSample>,
    errors: Vec<String>,
}

/// The medians of one cell, in ns.
struct Summary {
    plain_ns: f64,
    hit_tsc_ns: f64,
    hit_host_ns: f64,
}

impl CellResult {
    fn rounds(&self) -> impl Iterator<Item = &Round> {
        self.runs.iter().flat_map(|r| &r.rounds)
    }

    fn summary(&self, n: u32, hz: f64) -> Option<Summary> {
        if self.runs.is_empty() {
            return None;
        }
        let n = f64::from(n);
        let ns = |cycles: f64| cycles / hz * 1e9;
        let plain: Vec<f64> = self
            .rounds()
            .map(|r| ns(r.plain_cycles as f64) / n)
            .collect();
        let tsc: Vec<f64> = self
            .rounds()
            .map(|r| ns(r.target_cycles as f64 - r.plain_cycles as f64) / n)
            .collect();
        let host: Vec<f64> = self
            .rounds()
            .map(|r| (r.target_host.as_secs_f64() - r.plain_host.as_secs_f64()) * 1e9 / n)
            .collect();
        Some(Summary {
            plain_ns: median_f64(&plain),
            hit_tsc_ns: median_f64(&tsc),
            hit_host_ns: median_f64(&host),
        })
    }
}

/// `x` in ns with a precision that suits its size.
fn ns(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn main() {
    let started = Instant::now();
    let software = vmm::platform::is_software_kvm();
    let runs = env_u32("HVPROBE_BENCH_RUNS", 3);
    let n_fast = env_u32("HVPROBE_BENCH_N_FAST", 50_000);
    let n_exit = env_u32("HVPROBE_BENCH_N_EXIT", 2_000);
    let n_slow = env_u32("HVPROBE_BENCH_N_SLOW", 500);
    assert!(
        n_fast <= RING_CAPACITY && n_exit <= RING_CAPACITY && n_slow <= RING_CAPACITY,
        "N must fit the in-guest ring ({RING_CAPACITY} records per vCPU)"
    );
    let n_for = |ring: u8, mode: Mode| {
        if software && ring == 0 {
            n_slow
        } else if mode.exits() {
            n_exit
        } else {
            n_fast
        }
    };
    let only = std::env::var("HVPROBE_BENCH_VARIANT").ok();
    let n_only = std::env::var("HVPROBE_BENCH_N")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let cells: Vec<Cell> = [0u8, 3]
        .into_iter()
        .flat_map(|ring| {
            MODES.into_iter().map(move |mode| Cell {
                ring,
                mode,
                n: n_for(ring, mode),
            })
        })
        .filter(|c| only.as_deref().is_none_or(|v| v == c.variant()))
        .map(|c| Cell {
            n: n_only.unwrap_or(c.n),
            ..c
        })
        .collect();
    if cells.is_empty() {
        eprintln!(
            "HVPROBE_BENCH_VARIANT={}: no such cell (RING:MODE, RING 0 or 3, MODE none, int3, jump-exit or jump)",
            only.unwrap_or_default()
        );
        std::process::exit(2);
    }

    let hz = tsc_hz();
    let mut results: Vec<CellResult> = cells.iter().map(|_| CellResult::default()).collect();
    let runnable: Vec<usize> = (0..cells.len())
        .filter(|&i| cells[i].not_run(software).is_none())
        .collect();
    // Runs interleaved (the order rotates every pass) because the machine is noisy.
    for pass in 0..runs as usize {
        for k in 0..runnable.len() {
            let i = runnable[(pass + k) % runnable.len()];
            let cell = cells[i];
            let t0 = Instant::now();
            match run_once(cell) {
                Ok(s) => {
                    eprintln!(
                        "ring {} {:?} N={} run {}: {} hits, {} lost, VM {:.2?} (wall {:.2?})",
                        cell.ring,
                        cell.mode,
                        cell.n,
                        pass + 1,
                        s.hits,
                        s.lost,
                        s.elapsed,
                        t0.elapsed()
                    );
                    results[i].runs.push(s);
                }
                Err(e) => {
                    eprintln!(
                        "ring {} {:?} N={} run {}: FAILED: {e}",
                        cell.ring,
                        cell.mode,
                        cell.n,
                        pass + 1
                    );
                    results[i].errors.push(e);
                }
            }
        }
    }
    let hz_after = tsc_hz();

    println!(
        "optprobes benchmark: cost per hit of a probe on {TARGET} (test kernel `optbench`, 1 \
         vCPU), median over {ROUNDS} rounds x {runs} VM runs per cell"
    );
    println!(
        "KVM: {}",
        if software {
            "software (kvm_pvm): guest ring 0 is EMULATED (~2 MIPS), guest ring 3 runs natively"
        } else {
            "hardware: both rings run natively"
        }
    );
    println!(
        "host TSC: {:.1} MHz before, {:.1} MHz after (vs Instant, 100 ms each); ASSUMED: the \
         guest reads the host TSC unscaled (true of kvm_pvm)",
        hz / 1e6,
        hz_after / 1e6
    );
    println!(
        "per hit = (target loop - plain loop) / N; TSC = guest rdtsc cycles / host TSC rate; \
         points = host timestamps of the POINT exits around each loop"
    );
    println!();
    println!(
        "{:<4} {:<36} {:>6} {:>13} {:>12} {:>12} {:>9} {:>8}  armed as",
        "ring", "probe", "N", "plain ns/call", "ns/hit TSC", "ns/hit pts", "hits/run", "lost"
    );
    let mut summaries: Vec<Option<Summary>> = Vec::with_capacity(cells.len());
    let mut lost_problem = false;
    let mut hits_problem = false;
    for (cell, res) in cells.iter().zip(&results) {
        let lead = format!("{:<4} {:<36} {:>6}", cell.ring, cell.mode.row(), cell.n);
        if let Some(why) = cell.not_run(software) {
            println!("{lead}  {why}");
            summaries.push(None);
            continue;
        }
        let summary = res.summary(cell.n, hz);
        if let Some(s) = &summary {
            let expected = if cell.mode == Mode::None {
                0
            } else {
                ROUNDS as u64 * u64::from(cell.n)
            };
            let hits = if res.runs.iter().all(|r| r.hits == expected) {
                expected.to_string()
            } else {
                hits_problem = true;
                let seen: Vec<u64> = res.runs.iter().map(|r| r.hits).collect();
                format!("WRONG {seen:?} (expected {expected})")
            };
            let lost: u64 = res.runs.iter().map(|r| r.lost).sum();
            lost_problem |= lost != 0;
            let lost = if lost == 0 {
                "0".to_string()
            } else {
                format!("{lost} LOST")
            };
            let how = res.runs.first().map_or("", |r| r.how.as_str());
            let how = match (cell.mode, how) {
                (Mode::None, _) => "-".to_string(),
                (Mode::JumpExit | Mode::Jump, h) if !h.starts_with("jump") => {
                    format!("{h}  <- NOT A JUMP: this row does not measure a jump probe")
                }
                (_, h) => h.to_string(),
            };
            println!(
                "{lead} {:>13} {:>12} {:>12} {:>9} {:>8}  {how}",
                ns(s.plain_ns),
                ns(s.hit_tsc_ns),
                ns(s.hit_host_ns),
                hits,
                lost,
            );
        }
        for e in &res.errors {
            println!("{lead}  FAILED: {e}");
        }
        summaries.push(summary);
    }
    println!(
        "(lost: summed over the runs of the cell; `none` rows: per hit should be ~0, what they \
         show is the method's bias and noise floor in that ring)"
    );

    // The project's goals.
    let at = |ring: u8, mode: Mode| {
        cells
            .iter()
            .position(|c| c.ring == ring && c.mode == mode)
            .and_then(|i| summaries[i].as_ref())
    };
    println!();
    println!("goals:");
    for ring in [0u8, 3] {
        let what = format!("  jump-exit / int3 per hit, ring {ring}:");
        match (at(ring, Mode::JumpExit), at(ring, Mode::Int3)) {
            (Some(j), Some(i)) => {
                let tsc = j.hit_tsc_ns / i.hit_tsc_ns;
                let pts = j.hit_host_ns / i.hit_host_ns;
                let ok = if tsc <= JUMP_EXIT_GOAL && pts <= JUMP_EXIT_GOAL {
                    "ok"
                } else {
                    "MISSED"
                };
                println!("{what} {tsc:.2} (TSC), {pts:.2} (points); goal <= {JUMP_EXIT_GOAL} {ok}");
            }
            _ => println!("{what} NOT MEASURED (a cell did not run; see the table)"),
        }
    }
    let what = "  in-guest handler (jump) added per hit, ring 3:";
    match at(3, Mode::Jump) {
        Some(s) => {
            let ok = if s.hit_tsc_ns <= IN_GUEST_GOAL_NS && s.hit_host_ns <= IN_GUEST_GOAL_NS {
                "ok"
            } else {
                "MISSED"
            };
            let native = if software { " (native here)" } else { "" };
            println!(
                "{what} {} ns (TSC), {} ns (points){native}; goal <= {IN_GUEST_GOAL_NS:.0} ns \
                 {ok}",
                ns(s.hit_tsc_ns),
                ns(s.hit_host_ns)
            );
        }
        None => println!("{what} NOT MEASURED (the cell did not run; see the table)"),
    }
    if software {
        println!(
            "  (ring-0 rows are emulated here: an in-guest handler there costs its ~dozens of \
             emulated instructions, not its native cost)"
        );
    }
    if lost_problem {
        println!(
            "LOST EVENTS: the lost column must be 0 (every N fits the in-guest ring of \
             {RING_CAPACITY} records). Where the hit count is right, no hit was missed: the \
             events were dropped on the host after their hits were counted (for `jump`, after \
             the host drained them from the guest's ring, so the ring did not overflow: ring \
             overflows are never counted as hits)."
        );
    }
    if hits_problem {
        println!("WRONG HIT COUNTS: the probe's source must count 5 x N hits per run.");
    }
    println!("bench wall time: {:.1?}", started.elapsed());
}
