//! MMIO / PIO tracing of a VM: which address ranges are traced, and the observer the exit
//! dispatcher calls after every device access (`vcpu::exit::dispatch`).
//!
//! Every traced range is seen at the bus, whatever is behind it: an emulated device (the
//! `edu` PCI device's BAR, followed as the guest maps and unmaps it; COM1's ports; the test
//! device) or guest RAM taken out of KVM's memory slots ([`crate::vm::Vm::trace_ram`]), whose
//! accesses now exit to a `TracedRam` device. Accesses outside every traced range cost one
//! atomic load.
//!
//! Records go into the one event pipeline (`introspect::events::Hub`) as access, MAP, UNMAP,
//! MARK and PCIDEV events, on the same clock as probe hits; the `--trace` output is an
//! `EventWriter` subscribed to them (and, for Chrome and CTF, to everything else too).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use introspect::events::{
    Access, Event, EventWriter, Filter, Format, Hub, KindSet, PciDevInfo, Space, WriterOptions,
};
use introspect::symbols::SymbolTable;

use crate::devices::le_value;

pub use crate::devices::AccessObserver;

#[derive(Clone, Debug)]
struct Range {
    space: Space,
    start: u64,
    len: u64,
    map_id: Option<u32>,
}

/// The traced ranges and the hub their records go to.
pub struct Tracer {
    sink: Hub,
    ranges: RwLock<Vec<Range>>,
    any: AtomicBool,
    next_id: AtomicU32,
}

impl Tracer {
    /// A tracer emitting into `sink`.
    pub fn new(sink: Hub) -> Self {
        Tracer {
            sink,
            ranges: RwLock::new(Vec::new()),
            any: AtomicBool::new(false),
            next_id: AtomicU32::new(0),
        }
    }

    /// The hub (for MARK and PCIDEV records).
    pub fn sink(&self) -> &Hub {
        &self.sink
    }

    /// Traces `[start, start+len)`. MMIO ranges get a MAP record (their id); port ranges
    /// have no mmiotrace record and get no id.
    pub fn add_range(&self, space: Space, start: u64, len: u64) -> Option<u32> {
        let map_id = (space == Space::Mmio).then(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Some(id) = map_id {
            let pc = crate::vcpu::context::current().rip.unwrap_or(0);
            let mut map = Event::map(self.sink.now_ns(), id, start, 0, len, pc);
            map.vcpu = crate::vcpu::context::current().vcpu.unwrap_or(0);
            self.sink.emit(map);
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        ranges.push(Range {
            space,
            start,
            len,
            map_id,
        });
        self.any.store(true, Ordering::Release);
        map_id
    }

    /// Stops tracing the range starting at `start` (an UNMAP record for MMIO ranges).
    pub fn remove_range(&self, space: Space, start: u64) {
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = ranges
            .iter()
            .position(|r| r.space == space && r.start == start)
        {
            let r = ranges.remove(i);
            if let Some(id) = r.map_id {
                let pc = crate::vcpu::context::current().rip.unwrap_or(0);
                self.sink.emit(Event::unmap(self.sink.now_ns(), id, pc));
            }
        }
        self.any.store(!ranges.is_empty(), Ordering::Release);
    }

    /// Writes a MARK record.
    pub fn mark(&self, text: &str) {
        self.sink.emit(Event::mark(self.sink.now_ns(), text));
    }
}

impl AccessObserver for Tracer {
    fn observe(&self, space: Space, write: bool, addr: u64, data: &[u8]) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let map_id = {
            let ranges = self.ranges.read().unwrap_or_else(|p| p.into_inner());
            match ranges
                .iter()
                .find(|r| r.space == space && addr >= r.start && addr - r.start < r.len)
            {
                Some(r) => r.map_id,
                None => return,
            }
        };
        let ctx = crate::vcpu::context::current();
        // The writer symbolizes the RIP (WriterOptions::symbols), off this path.
        self.sink.emit(Event::access(
            self.sink.now_ns(),
            ctx.vcpu.unwrap_or(0),
            addr,
            Access {
                space,
                write,
                width: u8::try_from(data.len()).unwrap_or(u8::MAX),
                value: le_value(data),
                rip: ctx.rip,
                map_id,
            },
        ));
    }
}

/// A tracing session of a VM: the tracer and its writer thread.
pub struct TraceSession {
    control: TraceControl,
    writer: Option<EventWriter>,
}

/// What a trace session reports at the end.
#[derive(Debug)]
pub struct TraceSummary {
    /// Records written.
    pub written: u64,
    /// Records lost (the writer fell behind).
    pub lost: u64,
    /// The output's error, if it failed.
    pub error: Option<String>,
}

/// Starts the `--trace` writer: a subscriber to `hub` taking what `cfg.format` shows
/// (mmiotrace, JSON lines: the trace kinds; Chrome, CTF: every kind, on one timeline). It
/// holds the in-guest ring drain back rather than lose records.
pub fn trace_writer(
    hub: &Hub,
    cfg: &crate::config::TraceConfig,
    symbols: Option<Arc<SymbolTable>>,
) -> Result<EventWriter, crate::vm::VmError> {
    use crate::config::TraceFormatChoice;
    let format = match cfg.format {
        TraceFormatChoice::Mmiotrace => Format::Mmiotrace,
        TraceFormatChoice::Jsonl => Format::Jsonl,
        TraceFormatChoice::Chrome => Format::Chrome,
        TraceFormatChoice::Ctf => Format::Ctf,
    };
    let kinds = match format {
        Format::Chrome | Format::Ctf => KindSet::ALL,
        _ => KindSet::TRACE,
    };
    let sub = hub.subscribe(Filter::kinds(kinds), introspect::events::DEFAULT_CAPACITY);
    sub.set_hold_back(true);
    let options = WriterOptions {
        symbols,
        what: "trace",
    };
    let failed = |path: String, e: std::io::Error| crate::vm::VmError::ReadFile {
        what: "trace file",
        path,
        reason: e.to_string(),
    };
    match (&cfg.file, format) {
        (Some(dir), Format::Ctf) => EventWriter::spawn_ctf(sub, dir, options)
            .map_err(|e| failed(dir.display().to_string(), e)),
        (None, Format::Ctf) => Err(crate::vm::VmError::Config(
            "--trace-format ctf writes a directory: give it with --trace DIR".into(),
        )),
        (Some(p), _) => {
            let file = std::fs::File::create(p).map_err(|e| failed(p.display().to_string(), e))?;
            EventWriter::spawn_with(sub, file, format, options)
                .map_err(|e| failed(p.display().to_string(), e))
        }
        (None, _) => EventWriter::spawn_with(sub, std::io::stderr(), format, options)
            .map_err(|e| failed("stderr".into(), e)),
    }
}

/// Attaches tracing to `vm` (before its vCPUs start), emitting into `hub` (the VM's one
/// event pipeline, shared with the probes): starts the `--trace` writer ([`trace_writer`])
/// when `cfg` has targets, makes the VM's tracer ([`attach_tracer`]), then traces every
/// configured target through it, the same way a control API client adds one later. Returns the
/// session to [`TraceSession::finish`] at the end.
pub fn attach(
    vm: &crate::vm::Vm,
    cfg: &crate::config::TraceConfig,
    hub: &Hub,
    symbols: Option<Arc<SymbolTable>>,
) -> Result<TraceSession, crate::vm::VmError> {
    let writer = if cfg.is_empty() {
        None
    } else {
        Some(trace_writer(hub, cfg, symbols)?)
    };
    let control = attach_tracer(vm, hub)?;
    for target in &cfg.targets {
        control.add(target)?;
    }
    Ok(TraceSession { control, writer })
}

/// Makes `vm`'s tracer (before its vCPUs start): PCIDEV records for its PCI devices, the
/// access observer, the test device's MARK lines. Nothing is traced until a target is added
/// ([`TraceControl::add`]); until then an access costs one atomic load.
pub fn attach_tracer(vm: &crate::vm::Vm, hub: &Hub) -> Result<TraceControl, crate::vm::VmError> {
    use crate::vm::VmError;
    let tracer = Arc::new(Tracer::new(hub.clone()));
    let io = vm.io();
    if let Some(pci) = &io.pci {
        for d in pci.devices() {
            tracer.sink.emit(Event::pcidev(PciDevInfo {
                bus: d.bus,
                devfn: d.devfn,
                vendor: d.vendor,
                device: d.device,
                irq: d.irq,
                bars: d.bars,
                sizes: d.sizes,
                driver: Some(d.name.to_string()),
            }));
        }
    }
    let observer: Arc<dyn AccessObserver> = tracer.clone();
    if io.observer.set(observer).is_err() {
        return Err(VmError::Config(
            "A tracer is already attached to this VM".into(),
        ));
    }
    let t = tracer.clone();
    vm.set_mark_listener(Box::new(move |line| t.mark(line)));
    Ok(TraceControl {
        tracer,
        io: io.clone(),
        mem: vm.memory().clone(),
        ram: vm.ram_control(),
        target: std::sync::OnceLock::new(),
        traces: Arc::new(std::sync::Mutex::new(Vec::new())),
    })
}

/// One traced target and what it put in place.
#[derive(Debug, Clone)]
struct Traced {
    id: u32,
    target: crate::config::TraceTarget,
    /// Removed already.
    gone: bool,
}

/// Adds and removes traced targets, before the guest runs (`--mmiotrace`) or while it runs
/// (the control API's `trace.add` / `trace.remove`). Cheap to clone.
#[derive(Clone)]
pub struct TraceControl {
    tracer: Arc<Tracer>,
    io: Arc<crate::vm::IoDevices>,
    mem: crate::memory::GuestMem,
    ram: crate::vm::RamControl,
    /// The running VM (to pause it around memory-slot changes); unset before it starts.
    target: std::sync::OnceLock<crate::target::VmTarget>,
    traces: Arc<std::sync::Mutex<Vec<Traced>>>,
}

impl TraceControl {
    /// The tracer.
    pub fn tracer(&self) -> &Arc<Tracer> {
        &self.tracer
    }

    /// Gives it the started VM: RAM ranges added from now on pause the vCPUs around the
    /// memory-slot change.
    pub fn set_target(&self, target: crate::target::VmTarget) {
        let _ = self.target.set(target);
    }

    fn paused<R>(&self, f: impl FnOnce() -> R) -> Result<R, crate::vm::VmError> {
        use introspect::target::Target;
        let Some(t) = self.target.get() else {
            return Ok(f());
        };
        let err = |e: introspect::target::TargetError| crate::vm::VmError::Config(e.to_string());
        t.pause_all().map_err(err)?;
        let r = f();
        t.resume_all().map_err(err)?;
        Ok(r)
    }

    /// Starts tracing `target`; returns its id (for [`TraceControl::remove`]).
    pub fn add(&self, target: &crate::config::TraceTarget) -> Result<u32, crate::vm::VmError> {
        use crate::config::TraceTarget;
        use crate::vm::VmError;
        let mut traces = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if traces.iter().any(|t| !t.gone && t.target == *target) {
            return Err(VmError::Config(format!("{target} is traced already")));
        }
        self.io.tracing.store(true, Ordering::Relaxed);
        match target {
            TraceTarget::Device(name) => match name.as_str() {
                "edu" => self.trace_edu()?,
                "uart" => {
                    let base = u64::from(crate::devices::serial::COM1_PORT);
                    self.tracer.add_range(Space::Pio, base, 8);
                }
                "testdev" => {
                    use crate::devices::test_device::{
                        TEST_DEVICE_MMIO_LEN, TEST_DEVICE_PORT, TEST_DEVICE_PORT_LEN,
                    };
                    self.tracer.add_range(
                        Space::Pio,
                        u64::from(TEST_DEVICE_PORT),
                        TEST_DEVICE_PORT_LEN,
                    );
                    self.tracer.add_range(
                        Space::Mmio,
                        crate::layout::TEST_DEVICE_MMIO_BASE,
                        TEST_DEVICE_MMIO_LEN,
                    );
                }
                other => {
                    return Err(VmError::Config(format!(
                        "--mmiotrace {other}: no such device"
                    )));
                }
            },
            TraceTarget::Ram {
                gpa,
                len,
                writes_only,
            } => {
                let mode = if *writes_only {
                    crate::memslots::TraceMode::WritesOnly
                } else {
                    crate::memslots::TraceMode::All
                };
                let dev = crate::devices::traced_ram::TracedRam::new(
                    self.mem.clone(),
                    *gpa,
                    Box::new(|_| {}),
                );
                let device = Arc::new(std::sync::Mutex::new(dev));
                self.paused(|| self.ram.carve(*gpa, *len, mode, device, "RAM tracing"))??;
                self.tracer.add_range(Space::Mmio, *gpa, *len);
            }
        }
        let id = u32::try_from(traces.len()).unwrap_or(u32::MAX);
        traces.push(Traced {
            id,
            target: target.clone(),
            gone: false,
        });
        Ok(id)
    }

    /// Stops tracing target `id`: its ranges go (with UNMAP records), a RAM range's memory
    /// slot comes back.
    pub fn remove(&self, id: u32) -> Result<(), crate::vm::VmError> {
        use crate::config::TraceTarget;
        use crate::vm::VmError;
        let mut traces = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = traces
            .iter_mut()
            .find(|t| t.id == id && !t.gone)
            .ok_or_else(|| VmError::Config(format!("No trace has id {id}")))?;
        match &t.target {
            TraceTarget::Device(name) => match name.as_str() {
                "edu" => {
                    if let Some(pci) = &self.io.pci {
                        pci.set_listener(Box::new(|_| {}));
                        if let Some(base) = pci.bar_mapping(crate::devices::edu::EDU_BDF, 0) {
                            self.tracer.remove_range(Space::Mmio, base);
                        }
                    }
                }
                "uart" => self
                    .tracer
                    .remove_range(Space::Pio, u64::from(crate::devices::serial::COM1_PORT)),
                _ => {
                    use crate::devices::test_device::TEST_DEVICE_PORT;
                    self.tracer
                        .remove_range(Space::Pio, u64::from(TEST_DEVICE_PORT));
                    self.tracer
                        .remove_range(Space::Mmio, crate::layout::TEST_DEVICE_MMIO_BASE);
                }
            },
            TraceTarget::Ram { gpa, .. } => {
                self.tracer.remove_range(Space::Mmio, *gpa);
                self.paused(|| self.ram.uncarve(*gpa, "RAM tracing"))??;
            }
        }
        t.gone = true;
        Ok(())
    }

    /// Every target traced now: `(id, target)`.
    pub fn list(&self) -> Vec<(u32, String)> {
        self.traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|t| !t.gone)
            .map(|t| (t.id, t.target.to_string()))
            .collect()
    }

    /// Follows the `edu` device's BAR 0: traced while mapped, with MAP / UNMAP records.
    fn trace_edu(&self) -> Result<(), crate::vm::VmError> {
        use crate::devices::edu::EDU_BDF;
        use crate::devices::pci::PciEvent;
        let pci = self.io.pci.clone().ok_or_else(|| {
            crate::vm::VmError::Config("--mmiotrace edu: this VM has no PCI bus".into())
        })?;
        if let Some(base) = pci.bar_mapping(EDU_BDF, 0) {
            self.tracer
                .add_range(Space::Mmio, base, crate::devices::edu::EDU_BAR_SIZE);
        }
        let t = self.tracer.clone();
        pci.set_listener(Box::new(move |ev| match ev {
            PciEvent::Map {
                bdf,
                bar: 0,
                base,
                len,
            } if bdf == EDU_BDF => {
                t.add_range(Space::Mmio, base, len);
            }
            PciEvent::Unmap { bdf, bar: 0, base } if bdf == EDU_BDF => {
                t.remove_range(Space::Mmio, base)
            }
            _ => {}
        }));
        Ok(())
    }
}

impl TraceSession {
    /// The tracer.
    pub fn tracer(&self) -> &Arc<Tracer> {
        &self.control.tracer
    }

    /// Adds and removes targets while the guest runs.
    pub fn control(&self) -> &TraceControl {
        &self.control
    }

    /// Stops the writer (after the vCPUs stopped) and reports.
    pub fn finish(self) -> TraceSummary {
        let Some(writer) = self.writer else {
            return TraceSummary {
                written: 0,
                lost: 0,
                error: None,
            };
        };
        let report = writer.finish();
        TraceSummary {
            written: report.written,
            lost: report.lost,
            error: report.error.map(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use introspect::events::Sources;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_traced_ranges_are_recorded_with_their_map() {
        let hub = Hub::new(Arc::new(Sources::new()));
        let out = Buf::default();
        let sub = hub.subscribe(Filter::kinds(KindSet::TRACE), 1024);
        let writer = EventWriter::spawn(sub, out.clone(), Format::Jsonl).unwrap();
        let t = Tracer::new(hub);
        t.observe(Space::Mmio, true, 0x1000, &[1]);
        let id = t.add_range(Space::Mmio, 0x1000, 0x100).unwrap();
        t.add_range(Space::Pio, 0x3f8, 8);
        t.observe(Space::Mmio, true, 0x1004, &[2, 0, 0, 0]);
        t.observe(Space::Mmio, false, 0x2000, &[3]);
        t.observe(Space::Pio, true, 0x3f8, b"a");
        t.remove_range(Space::Mmio, 0x1000);
        t.observe(Space::Mmio, true, 0x1004, &[4]);
        writer.finish();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["map", "write", "write", "unmap"], "{text}");
        assert_eq!(recs[0]["id"].as_u64(), Some(u64::from(id)));
        assert_eq!(recs[1]["addr"], "0x1004");
        assert_eq!(recs[2]["space"], "pio");
    }
}
