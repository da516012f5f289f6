//! Unit tests of the trace formats (mmiotrace, JSON lines, Chrome) through the hub and the
//! writer thread. They were written against the old trace pipeline (`TraceSink`,
//! `TraceWriter`, `TraceRecord`); the small adapter below maps those names onto the one event
//! pipeline so the assertions stay exactly as they were.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use super::{
    EventWriter, Filter, Format, Hub, PciDevInfo, Sources, Space, Subscription, WriterError,
    WriterOptions, WriterReport, mmiotrace,
};

// ---- the adapter: the old record shapes and sink / writer, on the hub ----

type TraceFormat = Format;
type TraceReport = WriterReport;

/// The old access record: time and vCPU inside, symbol as a string.
#[derive(Clone, Debug)]
struct Access {
    time_ns: u64,
    vcpu: u32,
    space: Space,
    write: bool,
    addr: u64,
    width: u8,
    value: u64,
    rip: Option<u64>,
    symbol: Option<String>,
    map_id: Option<u32>,
}

#[derive(Clone, Debug)]
enum TraceRecord {
    Access(Access),
    Map {
        time_ns: u64,
        id: u32,
        phys: u64,
        virt: u64,
        len: u64,
        pc: u64,
    },
    Unmap {
        time_ns: u64,
        id: u32,
        pc: u64,
    },
    Mark {
        time_ns: u64,
        text: String,
    },
    Lost {
        time_ns: u64,
        count: u64,
    },
    PciDev(PciDevInfo),
}

impl From<TraceRecord> for super::Event {
    fn from(r: TraceRecord) -> Self {
        use super::Event;
        match r {
            TraceRecord::Access(a) => Event {
                symbol: a.symbol.map(Arc::from),
                ..Event::access(
                    a.time_ns,
                    a.vcpu,
                    a.addr,
                    super::Access {
                        space: a.space,
                        write: a.write,
                        width: a.width,
                        value: a.value,
                        rip: a.rip,
                        map_id: a.map_id,
                    },
                )
            },
            TraceRecord::Map {
                time_ns,
                id,
                phys,
                virt,
                len,
                pc,
            } => Event::map(time_ns, id, phys, virt, len, pc),
            TraceRecord::Unmap { time_ns, id, pc } => Event::unmap(time_ns, id, pc),
            TraceRecord::Mark { time_ns, text } => Event::mark(time_ns, &text),
            TraceRecord::Lost { time_ns, count } => Event::lost(time_ns, 0, count),
            TraceRecord::PciDev(dev) => Event::pcidev(dev),
        }
    }
}

/// A producer on a hub, counting what it got through.
#[derive(Clone)]
struct TraceSink {
    hub: Hub,
    recorded: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl TraceSink {
    fn new() -> (TraceSink, Subscription) {
        Self::with_capacity(super::DEFAULT_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> (TraceSink, Subscription) {
        let hub = Hub::new(Arc::new(Sources::new()));
        let sub = hub.subscribe(Filter::all(), capacity);
        let sink = TraceSink {
            hub,
            recorded: Arc::default(),
            lost: Arc::default(),
        };
        (sink, sub)
    }

    fn record(&self, record: TraceRecord) -> bool {
        let ok = self.hub.emit(record.into());
        let counter = if ok { &self.recorded } else { &self.lost };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn queued(&self) -> usize {
        self.hub.queued()
    }

    fn now_ns(&self) -> u64 {
        self.hub.now_ns()
    }
}

struct TraceWriter;

impl TraceWriter {
    fn spawn(
        sub: Subscription,
        out: impl Write + Send + 'static,
        format: TraceFormat,
    ) -> EventWriter {
        let options = WriterOptions {
            what: "trace",
            ..WriterOptions::default()
        };
        EventWriter::spawn_with(sub, out, format, options).unwrap()
    }
}

/// An output the test reads back.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stuck consumer: the first write or flush tells `reached`, then waits for `gate`.
struct Gated {
    inner: SharedBuf,
    reached: Sender<()>,
    gate: Receiver<()>,
    opened: bool,
}

impl Gated {
    fn wait(&mut self) {
        if !self.opened {
            let _ = self.reached.send(());
            let _ = self.gate.recv();
            self.opened = true;
        }
    }
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait();
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.wait();
        Ok(())
    }
}

/// Returns (output, gate opener, "writer is stuck" signal).
fn gated() -> (Gated, SharedBuf, Sender<()>, Receiver<()>) {
    let buf = SharedBuf::default();
    let (reached_tx, reached_rx) = crossbeam_channel::bounded(1);
    let (gate_tx, gate_rx) = crossbeam_channel::bounded(1);
    let out = Gated {
        inner: buf.clone(),
        reached: reached_tx,
        gate: gate_rx,
        opened: false,
    };
    (out, buf, gate_tx, reached_rx)
}

/// An output that always fails.
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk on fire"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("disk on fire"))
    }
}

fn mmio(time_ns: u64, write: bool, addr: u64, width: u8, value: u64) -> Access {
    Access {
        time_ns,
        vcpu: 2,
        space: Space::Mmio,
        write,
        addr,
        width,
        value,
        rip: Some(0xffff_ffff_8123_4567),
        symbol: Some("edu_probe+0x47".into()),
        map_id: Some(1),
    }
}

fn pio(time_ns: u64) -> Access {
    Access {
        time_ns,
        vcpu: 0,
        space: Space::Pio,
        write: true,
        addr: 0x3f8,
        width: 1,
        value: 0x41,
        rip: None,
        symbol: None,
        map_id: None,
    }
}

fn edu() -> PciDevInfo {
    PciDevInfo {
        bus: 0,
        devfn: 0x20,
        vendor: 0x1234,
        device: 0x11e8,
        irq: 0xb,
        bars: [0xfea0_0000, 0xc001, 0, 0, 0, 0, 0],
        sizes: [0x10_0000, 0x20, 0, 0, 0, 0, 0],
        driver: Some("edu".into()),
    }
}

/// Every kind of record, in a plausible order.
fn every_record() -> Vec<TraceRecord> {
    vec![
        TraceRecord::PciDev(edu()),
        TraceRecord::Map {
            time_ns: 1_000_000,
            id: 1,
            phys: 0xfea0_0000,
            virt: 0xffff_c900_0000_0000,
            len: 0x1000,
            pc: 0,
        },
        TraceRecord::Access(mmio(1_500_000, false, 0xfea0_0000, 4, 0x0100_00ed)),
        TraceRecord::Access(mmio(1_600_000, true, 0xfea0_0004, 4, 0x1234_5678)),
        TraceRecord::Access(pio(1_700_000)),
        TraceRecord::Mark {
            time_ns: 1_800_000,
            text: "edu: factorial \"done\"".into(),
        },
        TraceRecord::Lost {
            time_ns: 1_900_000,
            count: 7,
        },
        TraceRecord::Unmap {
            time_ns: 2_000_000,
            id: 1,
            pc: 0xffff_ffff_8123_4600,
        },
    ]
}

fn fmt(record: &TraceRecord) -> String {
    mmiotrace::format_record(&record.clone().into()).unwrap()
}

// ---- mmiotrace lines: expected strings derived from kernel/trace/trace_mmiotrace.c ----

#[test]
fn timestamp_rounds_like_ns2usecs() {
    // ns2usecs(): (nsec + 500) / 1000, then "%u.%06lu" of secs and the remainder.
    assert_eq!(mmiotrace::timestamp(0), "0.000000");
    assert_eq!(mmiotrace::timestamp(1_234_567_499), "1.234567");
    assert_eq!(mmiotrace::timestamp(1_234_567_500), "1.234568");
    assert_eq!(mmiotrace::timestamp(999_999_500), "1.000000");
    assert_eq!(mmiotrace::timestamp(3_600_000_000_000), "3600.000000");
}

#[test]
fn read_and_write_lines() {
    // "R %d %u.%06lu %d 0x%llx 0x%lx 0x%lx %d\n" width, secs, usec, map_id, phys, value, pc, 0
    let read = TraceRecord::Access(mmio(1_500_000_000, false, 0xfebf_0000, 4, 0x10ec_8139));
    assert_eq!(
        fmt(&read),
        "R 4 1.500000 1 0xfebf0000 0x10ec8139 0xffffffff81234567 0\n"
    );
    // "W ..." the same; a missing RIP prints as PC 0, a missing map id as 0.
    let write = TraceRecord::Access(Access {
        rip: None,
        map_id: None,
        ..mmio(1_000, true, 0xfebf_0004, 1, 0)
    });
    assert_eq!(fmt(&write), "W 1 0.000001 0 0xfebf0004 0x0 0x0 0\n");
    let wide = TraceRecord::Access(mmio(0, true, 0x1_0000_0000, 8, u64::MAX));
    assert_eq!(
        fmt(&wide),
        "W 8 0.000000 1 0x100000000 0xffffffffffffffff 0xffffffff81234567 0\n"
    );
}

#[test]
fn map_id_prints_as_the_kernel_int() {
    // map_id is an int printed with %d.
    let read = TraceRecord::Access(Access {
        map_id: Some(u32::MAX),
        ..mmio(0, false, 0, 2, 1)
    });
    assert_eq!(fmt(&read), "R 2 0.000000 -1 0x0 0x1 0xffffffff81234567 0\n");
}

#[test]
fn map_and_unmap_lines() {
    // "MAP %u.%06lu %d 0x%llx 0x%lx 0x%lx 0x%lx %d\n" secs, usec, id, phys, virt, len, pc, 0
    let map = TraceRecord::Map {
        time_ns: 2_000_000_123,
        id: 1,
        phys: 0xfebf_0000,
        virt: 0,
        len: 0x1000,
        pc: 0,
    };
    assert_eq!(fmt(&map), "MAP 2.000000 1 0xfebf0000 0x0 0x1000 0x0 0\n");
    // "UNMAP %u.%06lu %d 0x%lx %d\n" secs, usec, id, pc, 0
    let unmap = TraceRecord::Unmap {
        time_ns: 3_000_001_000,
        id: 12,
        pc: 0xffff_ffff_8100_0000,
    };
    assert_eq!(fmt(&unmap), "UNMAP 3.000001 12 0xffffffff81000000 0\n");
}

#[test]
fn mark_lines() {
    // "MARK %u.%06lu %s" secs, usec, msg, whose trailing newline is part of msg.
    let mark = |text: &str| TraceRecord::Mark {
        time_ns: 500_000_000,
        text: text.into(),
    };
    assert_eq!(fmt(&mark("X is up")), "MARK 0.500000 X is up\n");
    assert_eq!(fmt(&mark("X is up\n")), "MARK 0.500000 X is up\n");
    assert_eq!(fmt(&mark("two\nlines")), "MARK 0.500000 two lines\n");
    assert_eq!(fmt(&mark("")), "MARK 0.500000 \n");
}

#[test]
fn lost_line() {
    // mmio_read(): "MARK 0.000000 Lost %lu events.\n" (the timestamp is always zero)
    let lost = TraceRecord::Lost {
        time_ns: 9_000_000_000,
        count: 42,
    };
    assert_eq!(fmt(&lost), "MARK 0.000000 Lost 42 events.\n");
}

#[test]
fn pcidev_lines() {
    // "PCIDEV %02x%02x %04x%04x %x" bus, devfn, vendor, device, irq; 7 x " %llx" of
    // start | flags; 7 x " %llx" of sizes; " %s\n" driver or " \n".
    assert_eq!(
        fmt(&TraceRecord::PciDev(edu())),
        "PCIDEV 0020 123411e8 b fea00000 c001 0 0 0 0 0 100000 20 0 0 0 0 0 edu\n"
    );
    let bare = PciDevInfo {
        bus: 0x1a,
        devfn: 0xff,
        irq: 0,
        driver: None,
        vendor: 0x10de,
        device: 0x0a65,
        ..edu()
    };
    assert_eq!(
        fmt(&TraceRecord::PciDev(bare)),
        "PCIDEV 1aff 10de0a65 0 fea00000 c001 0 0 0 0 0 100000 20 0 0 0 0 0 \n"
    );
    let spaced = PciDevInfo {
        driver: Some("my drv".into()),
        ..edu()
    };
    assert!(fmt(&TraceRecord::PciDev(spaced)).ends_with(" 0 my_drv\n"));
}

#[test]
fn port_io_has_no_mmiotrace_line() {
    assert_eq!(
        mmiotrace::format_record(&TraceRecord::Access(pio(0)).into()),
        None
    );
}

#[test]
fn format_names() {
    assert_eq!("mmiotrace".parse(), Ok(TraceFormat::Mmiotrace));
    assert_eq!("jsonl".parse(), Ok(TraceFormat::Jsonl));
    assert_eq!("chrome".parse(), Ok(TraceFormat::Chrome));
    let err = "json".parse::<TraceFormat>().unwrap_err();
    // One format type for every writer now: its error names them all.
    assert_eq!(err, super::ParseFormatError("json".into()));
    assert_eq!(
        err.to_string(),
        "Unknown event format \"json\": expected text, jsonl, mmiotrace, chrome or ctf"
    );
    for format in [
        TraceFormat::Mmiotrace,
        TraceFormat::Jsonl,
        TraceFormat::Chrome,
        TraceFormat::Ctf,
    ] {
        assert_eq!(format.to_string().parse(), Ok(format));
    }
}

// ---- the whole pipeline ----

fn write_all(records: &[TraceRecord], format: TraceFormat) -> (String, TraceReport) {
    let (sink, receiver) = TraceSink::new();
    let buf = SharedBuf::default();
    let writer = TraceWriter::spawn(receiver, buf.clone(), format);
    for record in records {
        assert!(sink.record(record.clone()));
    }
    drop(sink);
    let report = writer.finish();
    (buf.text(), report)
}

#[test]
fn mmiotrace_file() {
    let (text, report) = write_all(&every_record(), TraceFormat::Mmiotrace);
    assert_eq!(
        text,
        "VERSION 20070824\n\
         PCIDEV 0020 123411e8 b fea00000 c001 0 0 0 0 0 100000 20 0 0 0 0 0 edu\n\
         MAP 0.001000 1 0xfea00000 0xffffc90000000000 0x1000 0x0 0\n\
         R 4 0.001500 1 0xfea00000 0x10000ed 0xffffffff81234567 0\n\
         W 4 0.001600 1 0xfea00004 0x12345678 0xffffffff81234567 0\n\
         MARK 0.001800 edu: factorial \"done\"\n\
         MARK 0.000000 Lost 7 events.\n\
         UNMAP 0.002000 1 0xffffffff81234600 0\n"
    );
    assert_eq!((report.written, report.skipped, report.lost), (7, 1, 0));
    assert!(report.error.is_none());
}

#[test]
fn lost_events_sequence() {
    let (out, buf, open, stuck) = gated();
    let (sink, receiver) = TraceSink::with_capacity(2);
    let writer = TraceWriter::spawn(receiver, out, TraceFormat::Mmiotrace);
    stuck.recv().unwrap();
    let mark = |us: u64, text: &str| TraceRecord::Mark {
        time_ns: us * 1000,
        text: text.into(),
    };
    assert!(sink.record(mark(1, "a")));
    assert!(sink.record(mark(2, "b")));
    assert!(!sink.record(mark(3, "c")));
    assert!(!sink.record(mark(4, "d")));
    assert!(!sink.record(mark(5, "e")));
    assert_eq!((sink.recorded(), sink.lost()), (2, 3));
    open.send(()).unwrap();
    while sink.queued() > 0 {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(sink.record(mark(6, "f")));
    drop(sink);
    let report = writer.finish();
    assert_eq!(
        buf.text(),
        "VERSION 20070824\n\
         MARK 0.000001 a\n\
         MARK 0.000002 b\n\
         MARK 0.000000 Lost 3 events.\n\
         MARK 0.000006 f\n"
    );
    assert_eq!((report.written, report.lost), (3, 3));
}

#[test]
fn losses_not_yet_announced_are_announced_at_the_end() {
    let (out, buf, open, stuck) = gated();
    let (sink, receiver) = TraceSink::with_capacity(1);
    let writer = TraceWriter::spawn(receiver, out, TraceFormat::Mmiotrace);
    stuck.recv().unwrap();
    let mark = TraceRecord::Mark {
        time_ns: 0,
        text: "m".into(),
    };
    assert!(sink.record(mark.clone()));
    assert!(!sink.record(mark));
    drop(sink);
    open.send(()).unwrap();
    let report = writer.finish();
    assert_eq!(
        buf.text(),
        "VERSION 20070824\nMARK 0.000000 m\nMARK 0.000000 Lost 1 events.\n"
    );
    assert_eq!((report.written, report.lost), (1, 1));
}

#[test]
fn overflow_accounting_with_a_stuck_consumer() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 500;
    let (out, _buf, open, stuck) = gated();
    let (sink, receiver) = TraceSink::with_capacity(16);
    let writer = TraceWriter::spawn(receiver, out, TraceFormat::Jsonl);
    stuck.recv().unwrap();
    let record_many = |sink: &TraceSink, vcpu: u32| {
        let mut ok = 0u64;
        for i in 0..PER_THREAD {
            let access = Access {
                vcpu,
                time_ns: sink.now_ns(),
                ..mmio(0, true, i, 4, i)
            };
            ok += u64::from(sink.record(TraceRecord::Access(access)));
        }
        ok
    };
    // While the writer is stuck nothing drains: at most the capacity gets through, and
    // nobody blocks.
    let accepted: u64 = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|vcpu| {
                let sink = sink.clone();
                let vcpu = u32::try_from(vcpu).unwrap();
                scope.spawn(move || record_many(&sink, vcpu))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(accepted <= 16, "{accepted} records fit in a channel of 16");
    assert_eq!(sink.recorded(), accepted);
    assert_eq!(sink.recorded() + sink.lost(), THREADS * PER_THREAD);
    // Once it moves again, the same accounting holds end to end.
    open.send(()).unwrap();
    let more = record_many(&sink, 9);
    let attempts = THREADS * PER_THREAD + PER_THREAD;
    assert_eq!(sink.recorded() + sink.lost(), attempts);
    drop(sink);
    let report = writer.finish();
    assert!(report.error.is_none());
    assert_eq!(report.written, accepted + more);
    assert_eq!(report.written + report.lost, attempts);
}

#[test]
fn a_failing_output_never_blocks_and_is_reported() {
    let (sink, receiver) = TraceSink::with_capacity(4);
    let writer = TraceWriter::spawn(receiver, Broken, TraceFormat::Chrome);
    // The writer keeps draining after the error, so recording goes on (some may be lost to
    // a full channel while it catches up, never blocked).
    for i in 0..1000 {
        sink.record(TraceRecord::Access(mmio(i, false, 0, 4, 0)));
    }
    let attempts = sink.recorded() + sink.lost();
    drop(sink);
    let report = writer.finish();
    assert_eq!(report.written, 0);
    assert_eq!(report.discarded + report.lost, attempts);
    assert_eq!(attempts, 1000);
    let err = report.error.expect("the error is reported");
    assert!(matches!(err, WriterError::Io { .. }));
    assert_eq!(err.to_string(), "Cannot write the trace output");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "disk on fire"
    );
}

#[test]
fn records_after_finish_are_lost() {
    let (sink, receiver) = TraceSink::new();
    let writer = TraceWriter::spawn(receiver, SharedBuf::default(), TraceFormat::Jsonl);
    assert!(sink.record(TraceRecord::Mark {
        time_ns: 0,
        text: "before".into()
    }));
    let report = writer.finish();
    assert_eq!((report.written, report.lost), (1, 0));
    assert!(!sink.record(TraceRecord::Mark {
        time_ns: 0,
        text: "after".into()
    }));
    assert_eq!(sink.lost(), 1);
}

// ---- JSON lines ----

#[test]
fn jsonl_parses_back() {
    let (text, report) = write_all(&every_record(), TraceFormat::Jsonl);
    assert_eq!(report.written, 8);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "pcidev", "map", "read", "write", "write", "mark", "lost", "unmap"
        ]
    );
    assert_eq!(
        lines[2],
        serde_json::json!({
            "kind": "read", "time_ns": 1_500_000, "vcpu": 2, "space": "mmio",
            "addr": "0xfea00000", "width": 4, "value": "0x10000ed",
            "rip": "0xffffffff81234567", "symbol": "edu_probe+0x47", "map_id": 1,
        })
    );
    assert_eq!(
        lines[4],
        serde_json::json!({
            "kind": "write", "time_ns": 1_700_000, "vcpu": 0, "space": "pio", "addr": "0x3f8",
            "width": 1, "value": "0x41", "rip": null, "symbol": null, "map_id": null,
        })
    );
    assert_eq!(
        lines[1],
        serde_json::json!({
            "kind": "map", "time_ns": 1_000_000, "id": 1, "phys": "0xfea00000",
            "virt": "0xffffc90000000000", "len": "0x1000", "pc": "0x0",
        })
    );
    assert_eq!(lines[5]["text"], "edu: factorial \"done\"");
    assert_eq!(
        lines[6],
        serde_json::json!({"kind": "lost", "time_ns": 1_900_000, "count": 7})
    );
    assert_eq!(
        lines[7],
        serde_json::json!({"kind": "unmap", "time_ns": 2_000_000, "id": 1, "pc": "0xffffffff81234600"})
    );
    assert_eq!(lines[0]["vendor"], "0x1234");
    assert_eq!(lines[0]["device"], "0x11e8");
    assert_eq!(lines[0]["bars"][1], "0xc001");
    assert_eq!(lines[0]["sizes"][0], "0x100000");
    assert_eq!(lines[0]["driver"], "edu");
}

// ---- Chrome ----

/// The Trace Event Format's required keys for the phases we write.
fn check_chrome(doc: &Value) -> Vec<Value> {
    let events = doc["traceEvents"]
        .as_array()
        .expect("traceEvents array")
        .clone();
    for event in &events {
        let ph = event["ph"].as_str().expect("ph");
        assert!(event["pid"].is_u64() && event["tid"].is_u64(), "{event}");
        assert!(event["name"].is_string(), "{event}");
        assert!(event["args"].is_object(), "{event}");
        match ph {
            "i" => {
                assert!(event["ts"].is_f64() || event["ts"].is_u64(), "{event}");
                assert!(event["cat"].is_string(), "{event}");
                assert!(
                    ["g", "p", "t"].contains(&event["s"].as_str().unwrap()),
                    "{event}"
                );
            }
            "M" => {
                let name = event["name"].as_str().unwrap();
                assert!(["process_name", "thread_name"].contains(&name), "{event}");
                assert!(event["args"]["name"].is_string(), "{event}");
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    events
}

#[test]
fn chrome_trace_is_valid_json_with_the_required_keys() {
    let (text, report) = write_all(&every_record(), TraceFormat::Chrome);
    assert_eq!(report.written, 8);
    let doc: Value = serde_json::from_str(&text).unwrap();
    let events = check_chrome(&doc);
    assert_eq!(doc["displayTimeUnit"], "ns");
    let names: Vec<String> = events
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| format!("{} {}", e["tid"], e["args"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        ["0 hvprobe VM", "1000000 hvprobe", "2 vCPU 2", "0 vCPU 0"]
    );
    let read = events
        .iter()
        .find(|e| e["name"] == "MMIO R 4 0xfea00000")
        .unwrap();
    assert_eq!(read["ts"].as_f64(), Some(1500.0));
    assert_eq!(
        (read["pid"].as_u64(), read["tid"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(read["args"]["symbol"], "edu_probe+0x47");
    assert_eq!(read["cat"], "mmio");
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "PIO W 1 0x3f8" && e["cat"] == "pio")
    );
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "edu: factorial \"done\"" && e["s"] == "g")
    );
}

#[test]
fn chrome_trace_finished_early_is_still_valid() {
    let (sink, receiver) = TraceSink::new();
    let buf = SharedBuf::default();
    let writer = TraceWriter::spawn(receiver, buf.clone(), TraceFormat::Chrome);
    assert!(sink.record(TraceRecord::Access(mmio(1_234, true, 0x10, 2, 3))));
    // The sink is still alive (the VM still running): finishing closes the document anyway.
    let report = writer.finish();
    assert_eq!(report.written, 1);
    let doc: Value = serde_json::from_str(&buf.text()).unwrap();
    let events = check_chrome(&doc);
    assert_eq!(events.last().unwrap()["ts"].as_f64(), Some(1.234));
    // Dropping a writer without finishing it closes the document too.
    let (sink2, receiver2) = TraceSink::new();
    let buf2 = SharedBuf::default();
    drop(TraceWriter::spawn(
        receiver2,
        buf2.clone(),
        TraceFormat::Chrome,
    ));
    check_chrome(&serde_json::from_str(&buf2.text()).unwrap());
    drop((sink, sink2));
}
