//! Capture benchmark: how many in-guest probe records per second each event writer takes
//! from a real guest, and what it loses, with the guest firing as fast as it can and paced.
//!
//! Every guest cell boots the embedded test kernel with `hvtest=ring3pace` (ring 3: native on
//! our software KVM) and a `tk_bench_target:jump` probe (an in-guest handler: one 64-byte
//! ring record per call, no exit). The pipeline is `hvprobe run`'s (`IntrospectHook`,
//! `Introspector`, the `instrument::Ticker` draining the rings into the `Hub`) with **one**
//! subscriber: the writer under test, holding the drain back as `--events` and `--trace`
//! writers do, writing to a file (CTF: a capture directory) under `HVPROBE_BENCH_OUT`
//! (default: the temp directory), deleted after the cell.
//!
//! Columns:
//! - guest/s: calls the guest made per second of its loop (its MARK line: calls and TSC
//!   cycles), the offered load;
//! - records: probe records written (drained from the rings and not dropped by the writer's
//!   queue); records/s: that over the time from the loop's start (POINT 1) to the writer's
//!   last flush (end to end, so a backlog left at the end counts against it);
//! - lost: calls whose record never reached the output: ring full (the guest outran the
//!   drain) + writer queue full. `calls == records + lost` is checked.
//!
//! Goals (issue 10): CTF >= 5 M records/s with the guest unpaced; CTF loses nothing with the
//! guest paced at 2 M calls/s for 10 s; text and JSON lines >= 1 M records/s unpaced and
//! lose nothing paced at 1 M/s. Chrome's rows are for information.
//!
//! Host-only rows (`HVPROBE_BENCH_VARIANT=host:FORMAT`, `HVPROBE_BENCH_N` events, default
//! 2,000,000; not in the default run): one producer thread emits batches of probe events
//! shaped like the drain's into a hub with the writer subscribed, output `/dev/null`: the
//! writer alone, for `valgrind --tool=callgrind` (instructions per record).
//!
//! Run: `cargo bench -p vmm --bench capture`. Knobs: `HVPROBE_BENCH_MS` (unpaced and 1 M/s
//! cells, default 2000), `HVPROBE_BENCH_PACED_MS` (the 2 M/s CTF cell, default 10000),
//! `HVPROBE_BENCH_KEEP=1` (keep the outputs, e.g. for `scripts/trace-check/chrome_check.py`),
//! `HVPROBE_BENCH_VARIANT=FORMAT:PACE` (e.g. `ctf:max`, `ctf:2000000`, `text:1000000`) runs
//! that cell alone.

mod common;
use common::env_u32;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use introspect::events::{
    self, Event, EventKind, EventWriter, Filter, Format, Hub, KindSet, RegSet, Sources,
    WriterOptions,
};
use introspect::session::Introspector;
use vmm::config::{KernelSource, ProbeSpec, SerialOutput, VmConfig};
use vmm::instrument::{
    IntrospectHook, Ticker, load_symbols, session_spec, set_platform_cpu_source,
};
use vmm::outcome::Outcome;
use vmm::vm::Vm;

/// The probed function (ring 3 calls it; the probe is a jump with an in-guest handler).
const TARGET: &str = "tk_bench_target";
/// CTF must sustain this many records per second, unpaced.
const CTF_GOAL: f64 = 5e6;
/// The pace at which CTF must lose nothing.
const CTF_PACE: u64 = 2_000_000;
/// Text and JSON lines must sustain this many, and lose nothing at this pace.
const TEXT_GOAL: f64 = 1e6;
/// The pace at which text and JSON lines must lose nothing.
const TEXT_PACE: u64 = 1_000_000;
/// A paced cell's guest must reach this fraction of its pace for the cell to count.
const PACE_REACHED: f64 = 0.95;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    Ctf,
    Jsonl,
    Text,
    Chrome,
}

impl Writer {
    fn name(self) -> &'static str {
        match self {
            Writer::Ctf => "ctf",
            Writer::Jsonl => "jsonl",
            Writer::Text => "text",
            Writer::Chrome => "chrome",
        }
    }

    fn format(self) -> Format {
        match self {
            Writer::Ctf => Format::Ctf,
            Writer::Jsonl => Format::Jsonl,
            Writer::Text => Format::Text,
            Writer::Chrome => Format::Chrome,
        }
    }

    /// What the writer subscribes to, as `hvprobe run` does: `--events` (text, JSON lines)
    /// the hits, `--trace` as Chrome or CTF every kind.
    fn kinds(self) -> KindSet {
        match self {
            Writer::Ctf | Writer::Chrome => KindSet::ALL,
            Writer::Jsonl | Writer::Text => KindSet::HITS,
        }
    }

    fn from_name(s: &str) -> Option<Writer> {
        [Writer::Ctf, Writer::Jsonl, Writer::Text, Writer::Chrome]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// What a cell must show.
#[derive(Clone, Copy, Debug)]
enum Goal {
    /// At least this many records per second.
    Rate(f64),
    /// Nothing lost, the guest having reached its pace.
    NoLoss,
    /// For information.
    None,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    writer: Writer,
    /// Guest calls per second (0: as fast as it can).
    pace: u64,
    ms: u64,
    goal: Goal,
}

impl Cell {
    fn pace_name(self) -> String {
        if self.pace == 0 {
            "max".into()
        } else {
            format!("{:.1}M/s", self.pace as f64 / 1e6)
        }
    }

    fn variant(self) -> String {
        let pace = if self.pace == 0 {
            "max".into()
        } else {
            self.pace.to_string()
        };
        format!("{}:{pace}", self.writer.name())
    }
}

/// What one cell measured.
#[derive(Debug)]
struct Sample {
    /// Guest calls and the guest's rate.
    calls: u64,
    guest_rate: f64,
    /// Probe records that reached the output.
    records: u64,
    /// Everything the writer wrote (records and lost markers).
    written: u64,
    /// Ring full and writer queue full.
    ring_lost: u64,
    queue_lost: u64,
    /// POINT 1 to the writer's last flush.
    span: Duration,
    /// The rings drained at the end (the guest's `wait_drained`).
    drained: bool,
    how: String,
    bytes: u64,
    /// CPU time of the ring drain (the ticker thread) and of the writer thread.
    drain_cpu: Duration,
    writer_cpu: Duration,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.records as f64 / self.span.as_secs_f64()
    }
    fn lost(&self) -> u64 {
        self.ring_lost + self.queue_lost
    }
    /// Host CPU ns per record: drain, writer.
    fn cost_ns(&self) -> (f64, f64) {
        let n = self.records.max(1) as f64;
        (
            self.drain_cpu.as_nanos() as f64 / n,
            self.writer_cpu.as_nanos() as f64 / n,
        )
    }
    /// Records per second one host core sustains for the drain and the writer together.
    fn capacity(&self) -> f64 {
        let (d, w) = self.cost_ns();
        1e9 / (d + w)
    }
}

/// CPU time of this process's threads by name, sampled from `/proc/self/task/*/schedstat`
/// (nanoseconds on the CPU): the capture threads' cost, whatever else the machine runs.
#[derive(Default)]
struct ThreadCpu {
    /// tid -> (name, latest CPU ns seen).
    seen: std::collections::HashMap<u64, (String, u64)>,
}

impl ThreadCpu {
    fn sample(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for e in dir.filter_map(Result::ok) {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split(' ').next().and_then(|v| v.parse::<u64>().ok()));
            if let Some(ns) = ns {
                // A thread names itself once started: keep the latest name.
                let entry = self.seen.entry(tid).or_insert((String::new(), 0));
                entry.0 = comm.trim().to_owned();
                entry.1 = entry.1.max(ns);
            }
        }
    }

    /// CPU ns of the threads whose name starts with `prefix`.
    fn ns(&self, prefix: &str) -> u64 {
        self.seen
            .values()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, ns)| ns)
            .sum()
    }
}

/// Samples [`ThreadCpu`] every 10 ms until dropped.
struct CpuSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    cpu: Arc<std::sync::Mutex<ThreadCpu>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuSampler {
    fn start() -> CpuSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpu = Arc::new(std::sync::Mutex::new(ThreadCpu::default()));
        let (s, c) = (stop.clone(), cpu.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                c.lock().unwrap().sample();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        CpuSampler {
            stop,
            cpu,
            thread: Some(thread),
        }
    }

    /// One more sample now (before the threads of interest end).
    fn sample(&self) {
        self.cpu.lock().unwrap().sample();
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let cpu = self.cpu.lock().unwrap();
        (cpu.ns("probe-ticker"), cpu.ns("hvprobe-capture"))
    }
}

/// The host TSC rate in Hz, against `Instant` over about 100 ms.
fn tsc_hz() -> u64 {
    let t0 = Instant::now();
    // SAFETY: `rdtsc` reads the time-stamp counter and touches no memory; every x86_64 CPU
    // has it.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = u64::try_from(t0.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    u64::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / u128::from(ns))
        .unwrap_or(u64::MAX)
}

fn out_dir() -> PathBuf {
    std::env::var_os("HVPROBE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Bytes under `path` (a file, or a directory's files).
fn size_of(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
    let _ = std::fs::remove_file(path);
}

/// Starts `writer` on `sub`, writing to `path`.
fn spawn_writer(
    writer: Writer,
    sub: events::Subscription,
    path: &Path,
) -> Result<EventWriter, String> {
    let options = WriterOptions {
        symbols: None,
        what: "capture",
    };
    let r = match writer {
        Writer::Ctf => EventWriter::spawn_ctf(sub, path, options),
        w => std::fs::File::create(path)
            .and_then(|f| EventWriter::spawn_with(sub, f, w.format(), options)),
    };
    r.map_err(|e| format!("cannot start the {} writer: {e}", writer.name()))
}

/// `ring3pace: calls N cycles C rate R drained yes|no` -> (N, C, drained).
fn parse_mark(line: &str) -> Option<(u64, u64, bool)> {
    let w: Vec<&str> = line.split(' ').collect();
    match w.as_slice() {
        [
            "ring3pace:",
            "calls",
            n,
            "cycles",
            c,
            "rate",
            _,
            "drained",
            d,
        ] => Some((n.parse().ok()?, c.parse().ok()?, *d == "yes")),
        _ => None,
    }
}

/// Boots the test kernel for `cell` and captures its probe's records.
fn run_cell(cell: Cell, hz: u64, n: usize) -> Result<Sample, String> {
    let mut config = VmConfig {
        kernel: KernelSource::Embedded,
        cmdline: Some(format!(
            "hvtest=ring3pace hvrate={} hvms={} hvtschz={hz}",
            cell.pace, cell.ms
        )),
        cpus: 1,
        serial: SerialOutput::Sink,
        quiet: true,
        timeout: Some(Duration::from_millis(cell.ms) + Duration::from_secs(120)),
        ..VmConfig::default()
    };
    let probe: ProbeSpec = format!("{TARGET}:jump")
        .parse()
        .map_err(|e| format!("--probe: {e}"))?;
    config.instrument.probes.push(probe);
    let symbols = load_symbols(&config).map_err(|e| e.to_string())?;
    let spec = session_spec(&config.instrument, symbols.as_deref()).map_err(|e| e.to_string())?;

    let sources = Arc::new(Sources::new());
    let hub = Hub::new(sources.clone());
    let sub = hub.subscribe(Filter::kinds(cell.writer.kinds()), events::DEFAULT_CAPACITY);
    sub.set_hold_back(true);
    let path = out_dir().join(format!(
        "hvprobe-bench-capture-{}-{n}.{}",
        std::process::id(),
        cell.writer.name()
    ));
    remove(&path);
    let writer = spawn_writer(cell.writer, sub, &path)?;

    let intro = Arc::new(Introspector::new(symbols, 1, hub.clone()));
    set_platform_cpu_source(&intro);
    let hook = Arc::new(IntrospectHook::new(intro.clone()));
    let mut vm = Vm::new(&config, Some(hook.clone())).map_err(|e| e.to_string())?;
    vm.start_paused().map_err(|e| e.to_string())?;
    let target = vm.target();
    hook.attach(target.clone(), vm.ram_control());
    hook.attach_kmod(vm.kmod());
    intro
        .setup(&target, &spec)
        .map_err(|e| format!("setup: {e}"))?;
    let sampler = CpuSampler::start();
    vm.resume_all().map_err(|e| e.to_string())?;
    let ticker = Ticker::spawn(intro.clone(), target.clone());
    let outcome = vm.wait(config.timeout).map_err(|e| e.to_string())?;
    sampler.sample();
    ticker.stop();
    intro.finish(Some(&target));
    sampler.sample();
    let report = writer.finish();
    let (drain_ns, writer_ns) = sampler.finish();
    let done = vm.phases().elapsed();
    let bytes = size_of(&path);
    if std::env::var_os("HVPROBE_BENCH_KEEP").is_some() {
        eprintln!("kept {}", path.display());
    } else {
        remove(&path);
    }
    if let Some(e) = report.error {
        return Err(format!("the writer failed: {e}"));
    }
    if outcome != (Outcome::GuestExit { code: 0 }) {
        return Err(format!(
            "the guest ended with {outcome:?} (marks {:?})",
            vm.marks()
        ));
    }
    let points = vm.points();
    let p1 = points.iter().find(|p| p.n == 1).ok_or("no POINT 1")?.at;
    let mark = vm
        .marks()
        .into_iter()
        .find_map(|m| parse_mark(&m))
        .ok_or_else(|| format!("no ring3pace MARK line: {:?}", vm.marks()))?;
    let (calls, cycles, drained) = mark;
    let (hits, lost, how) = sources
        .iter()
        .map(|(_, s)| (s.hits(), s.lost(), s.how()))
        .next()
        .ok_or("no probe source")?;
    // A source's lost: its ring's (full ring) and the writer's queue's.
    let queue_lost = report.lost;
    let ring_lost = lost.saturating_sub(queue_lost);
    let records = hits.saturating_sub(queue_lost);
    if records + ring_lost + queue_lost != calls {
        return Err(format!(
            "accounting: guest calls {calls} != records {records} + ring lost {ring_lost} + queue lost {queue_lost}"
        ));
    }
    if report.written < records {
        return Err(format!(
            "the writer wrote {} records, fewer than the {records} probe records it took",
            report.written
        ));
    }
    Ok(Sample {
        calls,
        guest_rate: calls as f64 / (cycles as f64 / hz as f64),
        records,
        written: report.written,
        ring_lost,
        queue_lost,
        span: done.saturating_sub(p1),
        drained,
        how,
        bytes,
        drain_cpu: Duration::from_nanos(drain_ns),
        writer_cpu: Duration::from_nanos(writer_ns),
    })
}

/// Host only: `n` probe events (shaped like the ring drain's: 8 registers, a shared symbol)
/// in batches of 4096 from this thread into a hub with `writer` subscribed, to /dev/null.
fn run_host(writer: Writer, n: u64) {
    let sources = Arc::new(Sources::new());
    let src = sources.register("probe tk_bench_target".into(), "jump".into());
    let hub = Hub::new(sources.clone());
    let sub = hub.subscribe(Filter::kinds(writer.kinds()), events::DEFAULT_CAPACITY);
    sub.set_hold_back(true);
    let path = if writer == Writer::Ctf {
        out_dir().join(format!("hvprobe-bench-capture-host-{}", std::process::id()))
    } else {
        PathBuf::from("/dev/null")
    };
    let w = spawn_writer(writer, sub, &path).expect("writer starts");
    let symbol: Arc<str> = Arc::from("tk_bench_target+0x0");
    let mut regs = RegSet::new();
    for name in ["rip", "tsc", "rsp", "rdi", "rsi", "rdx", "rcx", "r8"] {
        regs.push(name, 0);
    }
    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(4096);
    let mut sent = 0u64;
    while sent < n {
        let room = hub.room(events::Kind::Probe).min(4096);
        if room == 0 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        let now = hub.now_ns();
        for _ in 0..room.min(usize::try_from(n - sent).unwrap_or(usize::MAX)) {
            let mut r = regs;
            r.set_value(0, 0x40_1000);
            r.set_value(1, sent.wrapping_mul(977));
            r.set_value(3, sent);
            batch.push(Event {
                time_ns: now,
                vcpu: 0,
                kind: EventKind::Probe,
                source: src,
                addr: 0x40_1000,
                symbol: Some(symbol.clone()),
                regs: r,
                hit: sources.hit(src),
            });
            sent += 1;
        }
        hub.emit_batch(&mut batch);
    }
    let report = w.finish();
    let dt = t0.elapsed();
    let bytes = size_of(&path);
    if writer == Writer::Ctf {
        remove(&path);
    }
    println!(
        "host only, {}: {} events in {:.2?}: {:.2} M records/s, {} written, {} lost, {:.0} MB",
        writer.name(),
        n,
        dt,
        n as f64 / dt.as_secs_f64() / 1e6,
        report.written,
        report.lost,
        bytes as f64 / 1e6
    );
}

fn verdict(cell: Cell, s: &Sample) -> String {
    match cell.goal {
        Goal::Rate(r) => {
            let ok = if s.rate() >= r { "ok" } else { "MISSED" };
            format!(">= {:.0}M/s {ok}", r / 1e6)
        }
        Goal::NoLoss => {
            let reached = s.guest_rate >= PACE_REACHED * cell.pace as f64;
            if !reached {
                format!(
                    "lost 0: NOT SHOWN (the guest reached {:.2}M/s of {:.2}M/s)",
                    s.guest_rate / 1e6,
                    cell.pace as f64 / 1e6
                )
            } else if s.lost() == 0 {
                "lost 0 ok".into()
            } else {
                "lost 0 MISSED".into()
            }
        }
        Goal::None => "(info)".into(),
    }
}

fn main() {
    let started = Instant::now();
    let only = std::env::var("HVPROBE_BENCH_VARIANT").ok();
    if let Some(w) = only
        .as_deref()
        .and_then(|v| v.strip_prefix("host:"))
        .and_then(Writer::from_name)
    {
        run_host(w, u64::from(env_u32("HVPROBE_BENCH_N", 2_000_000)));
        return;
    }
    let ms = u64::from(env_u32("HVPROBE_BENCH_MS", 2000));
    let paced_ms = u64::from(env_u32("HVPROBE_BENCH_PACED_MS", 10_000));
    let text_pace = TEXT_PACE;
    let all = [
        Cell {
            writer: Writer::Ctf,
            pace: 0,
            ms,
            goal: Goal::Rate(CTF_GOAL),
        },
        Cell {
            writer: Writer::Ctf,
            pace: CTF_PACE,
            ms: paced_ms,
            goal: Goal::NoLoss,
        },
        Cell {
            writer: Writer::Jsonl,
            pace: 0,
            ms,
            goal: Goal::Rate(TEXT_GOAL),
        },
        Cell {
            writer: Writer::Jsonl,
            pace: text_pace,
            ms,
            goal: Goal::NoLoss,
        },
        Cell {
            writer: Writer::Text,
            pace: 0,
            ms,
            goal: Goal::Rate(TEXT_GOAL),
        },
        Cell {
            writer: Writer::Text,
            pace: text_pace,
            ms,
            goal: Goal::NoLoss,
        },
        Cell {
            writer: Writer::Chrome,
            pace: 0,
            ms,
            goal: Goal::None,
        },
    ];
    let cells: Vec<Cell> = all
        .into_iter()
        .filter(|c| only.as_deref().is_none_or(|v| v == c.variant()))
        .collect();
    if cells.is_empty() {
        eprintln!(
            "HVPROBE_BENCH_VARIANT={}: no such cell (FORMAT:PACE, e.g. ctf:max, ctf:2000000, \
             text:1000000, or host:FORMAT)",
            only.unwrap_or_default()
        );
        std::process::exit(2);
    }
    let hz = tsc_hz();
    let mut results = Vec::new();
    for (i, &cell) in cells.iter().enumerate() {
        let t0 = Instant::now();
        let r = run_cell(cell, hz, i);
        match &r {
            Ok(s) => eprintln!(
                "{} {} {} ms: {} calls, {} records, {} lost (ring {}, queue {}), {:.2} M records/s, {:.0} MB, host ns/record drain {:.0} writer {:.0}, wall {:.1?}",
                cell.writer.name(),
                cell.pace_name(),
                cell.ms,
                s.calls,
                s.records,
                s.lost(),
                s.ring_lost,
                s.queue_lost,
                s.rate() / 1e6,
                s.bytes as f64 / 1e6,
                s.cost_ns().0,
                s.cost_ns().1,
                t0.elapsed()
            ),
            Err(e) => eprintln!("{} {}: FAILED: {e}", cell.writer.name(), cell.pace_name()),
        }
        results.push(r);
    }

    println!(
        "capture benchmark: in-guest probe records ({TARGET}:jump, test kernel `ring3pace` in \
         ring 3, 1 vCPU) through the ring drain and one writer to a file"
    );
    println!(
        "KVM: {}; host TSC {:.1} MHz (the guest paces with it)",
        if vmm::platform::is_software_kvm() {
            "software (kvm_pvm): guest ring 3 runs natively"
        } else {
            "hardware"
        },
        hz as f64 / 1e6
    );
    println!();
    println!(
        "{:<7} {:>8} {:>6} {:>10} {:>11} {:>11} {:>10} {:>7} {:>13} {:>10}  goal",
        "writer",
        "pace",
        "secs",
        "guest/s",
        "records",
        "records/s",
        "lost",
        "MB out",
        "ns/rec d+w",
        "capacity/s"
    );
    for (cell, r) in cells.iter().zip(&results) {
        let lead = format!(
            "{:<7} {:>8} {:>6.1}",
            cell.writer.name(),
            cell.pace_name(),
            cell.ms as f64 / 1e3
        );
        match r {
            Ok(s) => {
                let mut note = String::new();
                if !s.drained {
                    note.push_str("  (rings not drained at the guest's end)");
                }
                if !s.how.starts_with("jump") {
                    note.push_str(&format!("  NOT A JUMP: {}", s.how));
                }
                let (d, w) = s.cost_ns();
                println!(
                    "{lead} {:>9.2}M {:>11} {:>10.2}M {:>10} {:>7.0} {:>13} {:>9.2}M  {}{note}",
                    s.guest_rate / 1e6,
                    s.records,
                    s.rate() / 1e6,
                    s.lost(),
                    s.bytes as f64 / 1e6,
                    format!("{d:.0}+{w:.0}"),
                    s.capacity() / 1e6,
                    verdict(*cell, s)
                );
                let _ = s.written;
            }
            Err(e) => println!("{lead}  FAILED: {e}"),
        }
    }
    println!(
        "(records/s: probe records written / (loop start .. writer's last flush); lost: ring \
         full + writer queue full; guest/s: the offered load; ns/rec d+w: host CPU ns per \
         record of the ring drain + the writer thread, from /proc schedstat; capacity/s: \
         1e9 / that, the rate one host core sustains for both, whatever else runs)"
    );
    println!("bench wall time: {:.1?}", started.elapsed());
}
