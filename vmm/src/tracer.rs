//! MMIO / PIO tracing of a VM: which address ranges are traced, and the observer the exit
//! dispatcher calls after every device access (`vcpu::exit::dispatch`).
//!
//! Every traced range is seen at the bus, whatever is behind it: an emulated device (the
//! `edu` PCI device's BAR, followed as the guest maps and unmaps it; COM1's ports; the test
//! device) or guest RAM taken out of KVM's memory slots ([`crate::vm::Vm::trace_ram`]), whose
//! accesses now exit to a `TracedRam` device. Accesses outside every traced range cost one
//! atomic load.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use introspect::symbols::SymbolTable;

use crate::devices::le_value;
use crate::trace::{Access, Space, TraceRecord, TraceSink};

/// Sees every device access after the device has handled it (reads: with the value the
/// guest gets).
pub trait AccessObserver: Send + Sync {
    /// One access, on the vCPU thread (see [`crate::vcpu::context`] for vCPU and RIP).
    fn observe(&self, space: Space, write: bool, addr: u64, data: &[u8]);
}

#[derive(Clone, Debug)]
struct Range {
    space: Space,
    start: u64,
    len: u64,
    map_id: Option<u32>,
}

/// The traced ranges and the trace they go to.
pub struct Tracer {
    sink: TraceSink,
    ranges: RwLock<Vec<Range>>,
    any: AtomicBool,
    next_id: AtomicU32,
}

impl Tracer {
    /// A tracer writing to `sink`.
    pub fn new(sink: TraceSink) -> Self {
        Tracer {
            sink,
            ranges: RwLock::new(Vec::new()),
            any: AtomicBool::new(false),
            next_id: AtomicU32::new(0),
        }
    }

    /// The sink (for MARK and PCIDEV records).
    pub fn sink(&self) -> &TraceSink {
        &self.sink
    }

    /// Traces `[start, start+len)`. MMIO ranges get a MAP record (their id); port ranges
    /// have no mmiotrace record and get no id.
    pub fn add_range(&self, space: Space, start: u64, len: u64) -> Option<u32> {
        let map_id = (space == Space::Mmio).then(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Some(id) = map_id {
            let pc = crate::vcpu::context::current().rip.unwrap_or(0);
            self.sink.record(TraceRecord::Map {
                time_ns: self.sink.now_ns(),
                id,
                phys: start,
                virt: 0,
                len,
                pc,
            });
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
                self.sink.record(TraceRecord::Unmap {
                    time_ns: self.sink.now_ns(),
                    id,
                    pc,
                });
            }
        }
        self.any.store(!ranges.is_empty(), Ordering::Release);
    }

    /// Writes a MARK record.
    pub fn mark(&self, text: &str) {
        self.sink.record(TraceRecord::Mark {
            time_ns: self.sink.now_ns(),
            text: text.to_string(),
        });
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
        // The writer symbolizes the RIP (TraceWriter::spawn_with_symbols), off this path.
        let symbol = None;
        self.sink.record(TraceRecord::Access(Access {
            time_ns: self.sink.now_ns(),
            vcpu: ctx.vcpu.unwrap_or(0),
            space,
            write,
            addr,
            width: u8::try_from(data.len()).unwrap_or(u8::MAX),
            value: le_value(data),
            rip: ctx.rip,
            symbol,
            map_id,
        }));
    }
}

/// A tracing session of a VM: the tracer and its writer thread.
pub struct TraceSession {
    tracer: Arc<Tracer>,
    writer: crate::trace::TraceWriter,
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

fn trace_output(
    cfg: &crate::config::TraceConfig,
) -> Result<Box<dyn std::io::Write + Send>, crate::vm::VmError> {
    match &cfg.file {
        Some(p) => std::fs::File::create(p)
            .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
            .map_err(|e| crate::vm::VmError::ReadFile {
                what: "trace file",
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
        None => Ok(Box::new(std::io::stderr())),
    }
}

/// Attaches tracing to `vm` (before its vCPUs start): PCIDEV records for its PCI devices,
/// then every configured target. Returns the session to [`TraceSession::finish`] at the end.
pub fn attach(
    vm: &crate::vm::Vm,
    cfg: &crate::config::TraceConfig,
    symbols: Option<Arc<SymbolTable>>,
) -> Result<TraceSession, crate::vm::VmError> {
    use crate::config::{TraceFormatChoice, TraceTarget};
    use crate::vm::VmError;
    let format = match cfg.format {
        TraceFormatChoice::Mmiotrace => crate::trace::TraceFormat::Mmiotrace,
        TraceFormatChoice::Jsonl => crate::trace::TraceFormat::Jsonl,
        TraceFormatChoice::Chrome => crate::trace::TraceFormat::Chrome,
    };
    let out = trace_output(cfg)?;
    let (sink, receiver) = TraceSink::new();
    let writer = crate::trace::TraceWriter::spawn_with_symbols(receiver, out, format, symbols);
    let tracer = Arc::new(Tracer::new(sink));
    let io = vm.io();
    if let Some(pci) = &io.pci {
        for d in pci.devices() {
            tracer
                .sink
                .record(TraceRecord::PciDev(crate::trace::PciDevInfo {
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
    io.tracing.store(true, Ordering::Relaxed);
    for target in &cfg.targets {
        match target {
            TraceTarget::Device(name) => match name.as_str() {
                "edu" => trace_edu(vm, &tracer)?,
                "uart" => {
                    let base = u64::from(crate::devices::serial::COM1_PORT);
                    tracer.add_range(Space::Pio, base, 8);
                }
                "testdev" => {
                    use crate::devices::test_device::{
                        TEST_DEVICE_MMIO_LEN, TEST_DEVICE_PORT, TEST_DEVICE_PORT_LEN,
                    };
                    tracer.add_range(
                        Space::Pio,
                        u64::from(TEST_DEVICE_PORT),
                        TEST_DEVICE_PORT_LEN,
                    );
                    tracer.add_range(
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
                    vm.memory().clone(),
                    *gpa,
                    Box::new(|_| {}),
                );
                vm.trace_ram(*gpa, *len, mode, Arc::new(std::sync::Mutex::new(dev)))?;
                tracer.add_range(Space::Mmio, *gpa, *len);
            }
        }
    }
    let t = tracer.clone();
    vm.set_mark_listener(Box::new(move |line| t.mark(line)));
    Ok(TraceSession { tracer, writer })
}

/// Follows the `edu` device's BAR 0: traced while mapped, with MAP / UNMAP records.
fn trace_edu(vm: &crate::vm::Vm, tracer: &Arc<Tracer>) -> Result<(), crate::vm::VmError> {
    use crate::devices::edu::EDU_BDF;
    use crate::devices::pci::PciEvent;
    let pci = vm.io().pci.clone().ok_or_else(|| {
        crate::vm::VmError::Config("--mmiotrace edu: this VM has no PCI bus".into())
    })?;
    if let Some(base) = pci.bar_mapping(EDU_BDF, 0) {
        tracer.add_range(Space::Mmio, base, crate::devices::edu::EDU_BAR_SIZE);
    }
    let t = tracer.clone();
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

impl TraceSession {
    /// The tracer.
    pub fn tracer(&self) -> &Arc<Tracer> {
        &self.tracer
    }

    /// Stops the writer (after the vCPUs stopped) and reports.
    pub fn finish(self) -> TraceSummary {
        let lost = self.tracer.sink.lost();
        let report = self.writer.finish();
        TraceSummary {
            written: report.written,
            lost,
            error: report.error.map(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{TraceFormat, TraceWriter};
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
        let (sink, rx) = TraceSink::new();
        let out = Buf::default();
        let writer = TraceWriter::spawn(rx, out.clone(), TraceFormat::Jsonl);
        let t = Tracer::new(sink);
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
