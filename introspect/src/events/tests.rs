use std::io::{self, Write};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::target::Regs;

fn probe_event(source: SourceId, hit: u64) -> Event {
    Event {
        time_ns: 1_234_567_891,
        vcpu: 0,
        kind: EventKind::Probe,
        source,
        addr: 0xffff_ffff_8307_9e46,
        symbol: Some("start_kernel+0x0".into()),
        regs: [("rdi", 0x1000), ("rsi", 0)].into_iter().collect(),
        hit,
    }
}

fn render(format: Format, event: &Event, sources: &Sources) -> String {
    let mut out = Vec::new();
    format.write_event(&mut out, event, sources).unwrap();
    String::from_utf8(out).unwrap()
}

fn json(event: &Event, sources: &Sources) -> Value {
    let line = render(Format::Jsonl, event, sources);
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line:?}"
    );
    serde_json::from_str(&line).unwrap()
}

/// A shared in-memory output.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
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

/// An output whose first write waits on a barrier: a consumer stuck until the test lets go.
struct Gate {
    barrier: Arc<Barrier>,
    opened: bool,
    buf: SharedBuf,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.opened {
            self.barrier.wait();
            self.opened = true;
        }
        self.buf.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

#[test]
fn text_formats_each_kind() {
    let sources = Sources::new();
    let id = sources.register("probe start_kernel".into(), "int3".into());
    let probe = probe_event(id, 1);
    assert_eq!(
        render(Format::Text, &probe, &sources),
        "[   1.234567] vcpu0 probe start_kernel+0x0 (0xffffffff83079e46) hit 1 rdi=0x1000 rsi=0x0\n"
    );
    let hbreak = Event {
        kind: EventKind::HwBreak,
        vcpu: 3,
        symbol: None,
        regs: RegSet::new(),
        time_ns: 12_000_000_000_005,
        hit: 42,
        ..probe.clone()
    };
    assert_eq!(
        render(Format::Text, &hbreak, &sources),
        "[12000.000000] vcpu3 hbreak 0xffffffff83079e46 hit 42\n"
    );
    let watch = |write| Event {
        kind: EventKind::Watch { write },
        symbol: Some("jiffies_64+0x0".into()),
        addr: 0xffff_ffff_82e0_a940,
        regs: [("rip", 0xffff_ffff_8100_0000)].into_iter().collect(),
        ..probe.clone()
    };
    assert_eq!(
        render(Format::Text, &watch(true), &sources),
        "[   1.234567] vcpu0 watch write jiffies_64+0x0 (0xffffffff82e0a940) hit 1 \
         rip=0xffffffff81000000\n"
    );
    assert!(render(Format::Text, &watch(false), &sources).contains(" watch read jiffies_64"));
    assert_eq!(
        render(Format::Text, &Event::lost(500_000, 1, 12), &sources),
        "[   0.000500] lost 12 events\n"
    );
}

#[test]
fn jsonl_formats_each_kind() {
    let sources = Sources::new();
    let id = sources.register("probe start_kernel".into(), "int3".into());
    let probe = probe_event(id, 7);

    let v = json(&probe, &sources);
    assert_eq!(v["time_ns"], 1_234_567_891_u64);
    assert_eq!(v["vcpu"], 0);
    assert_eq!(v["kind"], "probe");
    assert_eq!(v["source"], "probe start_kernel");
    assert_eq!(v["addr"], "0xffffffff83079e46");
    assert_eq!(v["symbol"], "start_kernel+0x0");
    assert_eq!(v["hit"], 7);
    assert_eq!(v["regs"]["rdi"], "0x1000");
    assert_eq!(v["regs"]["rsi"], "0x0");
    assert!(v.get("write").is_none());

    let hbreak = Event {
        kind: EventKind::HwBreak,
        symbol: None,
        regs: RegSet::new(),
        vcpu: 2,
        ..probe.clone()
    };
    let v = json(&hbreak, &sources);
    assert_eq!(v["kind"], "hbreak");
    assert_eq!(v["vcpu"], 2);
    assert!(v.get("symbol").is_none());
    assert_eq!(v["regs"], serde_json::json!({}));

    for write in [true, false] {
        let watch = Event {
            kind: EventKind::Watch { write },
            ..probe.clone()
        };
        let v = json(&watch, &sources);
        assert_eq!(v["kind"], "watch");
        assert_eq!(v["write"], write);
    }

    let v = json(&Event::lost(99, 1, 12), &sources);
    assert_eq!(
        v,
        serde_json::json!({"time_ns": 99, "kind": "lost", "count": 12})
    );

    // A source this registry does not know is left out rather than invented.
    let other = Sources::new();
    assert!(json(&probe, &other).get("source").is_none());
}

#[test]
fn format_parses_and_names_itself() {
    assert_eq!("text".parse(), Ok(Format::Text));
    assert_eq!("jsonl".parse(), Ok(Format::Jsonl));
    assert_eq!("ctf".parse(), Ok(Format::Ctf));
    let err = "json".parse::<Format>().unwrap_err();
    assert_eq!(err, ParseFormatError("json".into()));
    assert_eq!(
        err.to_string(),
        "Unknown event format \"json\": expected text, jsonl, mmiotrace, chrome or ctf"
    );
    for f in [
        Format::Text,
        Format::Jsonl,
        Format::Mmiotrace,
        Format::Chrome,
        Format::Ctf,
    ] {
        assert_eq!(f.to_string().parse(), Ok(f));
    }
}

#[test]
fn select_regs_keeps_order_and_skips_unknown() {
    let regs = Regs {
        rip: 0x10,
        rdi: 0x20,
        rax: 0x30,
        ..Regs::default()
    };
    assert_eq!(
        select_regs(&regs, &["rax", "xmm0", "rip", "rdi"])
            .iter()
            .collect::<Vec<_>>(),
        vec![("rax", 0x30), ("rip", 0x10), ("rdi", 0x20)]
    );
    assert_eq!(select_regs(&regs, &DEFAULT_REGS).len(), DEFAULT_REGS.len());
}

#[test]
fn sources_register_across_segments_and_count() {
    let sources = Sources::new();
    assert!(sources.is_empty());
    let ids: Vec<_> = (0..200)
        .map(|i| sources.register(format!("probe f{i}"), "int3".into()))
        .collect();
    assert_eq!(sources.len(), 200);
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(id.index(), u32::try_from(i).unwrap());
        assert_eq!(sources.get(id).unwrap().name(), format!("probe f{i}"));
    }
    assert_eq!(sources.hit(ids[150]), 1);
    assert_eq!(sources.hit(ids[150]), 2);
    sources.missed(ids[150]);
    let s = sources.get(ids[150]).unwrap();
    assert_eq!((s.hits(), s.nmissed(), s.lost()), (2, 1, 0));
    // Unknown ids are ignored.
    assert_eq!(sources.hit(SourceId::NONE), 0);
    sources.missed(SourceId::NONE);
    assert!(sources.get(SourceId::NONE).is_none());
}

#[test]
fn sources_register_concurrently() {
    let sources = Arc::new(Sources::new());
    std::thread::scope(|s| {
        for t in 0..4 {
            let sources = &sources;
            s.spawn(move || {
                for i in 0..100 {
                    sources.register(format!("t{t} p{i}"), "int3".into());
                }
            });
        }
    });
    let mut names: Vec<_> = sources.iter().map(|(_, s)| s.name().to_owned()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 400);
}

#[test]
fn overflow_counts_lost_exactly_then_writes_one_lost_record() {
    let sources = Arc::new(Sources::new());
    let id = sources.register("probe f".into(), "int3".into());
    let (sink, receiver) = channel(sources.clone(), 2);

    let sent: Vec<bool> = (0..5)
        .map(|_| sink.emit(probe_event(id, sources.hit(id))))
        .collect();
    assert_eq!(sent, [true, true, false, false, false]);
    assert_eq!(sources.get(id).unwrap().lost(), 3);

    assert_eq!(receiver.try_recv().unwrap().hit, 1);
    assert_eq!(receiver.try_recv().unwrap().hit, 2);
    assert!(receiver.try_recv().is_none());

    // The next emit first records the gap, then the event.
    assert!(sink.emit(probe_event(id, sources.hit(id))));
    let lost = receiver.try_recv().unwrap();
    assert_eq!(lost.kind, EventKind::Lost { count: 3 });
    assert_eq!(lost.source, SourceId::QUEUE);
    assert!(lost.is_queue_lost());
    assert_eq!(receiver.try_recv().unwrap().hit, 6);
    assert!(receiver.try_recv().is_none());
    assert!(receiver.take_pending_lost().is_none());

    // The lost record may take one place beyond the capacity (a queue of 1 still moves on);
    // the reader takes the whole queue at once, so all of it is room again.
    assert!(sink.emit(probe_event(id, 7)));
    assert!(sink.emit(probe_event(id, 8)));
    assert!(!sink.emit(probe_event(id, 9)));
    assert_eq!(receiver.try_recv().unwrap().hit, 7);
    assert!(sink.emit(probe_event(id, 10))); // the lost record and 10 fill the 2 places
    assert!(!sink.emit(probe_event(id, 11)));
    assert_eq!(sources.get(id).unwrap().lost(), 5);
    assert_eq!(receiver.try_recv().unwrap().hit, 8);
    assert_eq!(
        receiver.try_recv().unwrap().kind,
        EventKind::Lost { count: 1 }
    );
    assert_eq!(receiver.try_recv().unwrap().hit, 10);
    assert!(receiver.try_recv().is_none());
    assert_eq!(
        receiver.take_pending_lost().unwrap().kind,
        EventKind::Lost { count: 1 }
    );
}

#[test]
fn emit_never_blocks_on_a_stuck_writer() {
    const EMITTED: u64 = 10_000;
    let sources = Arc::new(Sources::new());
    let id = sources.register("probe f".into(), "int3".into());
    let (sink, receiver) = channel(sources.clone(), 64);
    let barrier = Arc::new(Barrier::new(2));
    let buf = SharedBuf::default();
    let gate = Gate {
        barrier: barrier.clone(),
        opened: false,
        buf: buf.clone(),
    };
    let writer = EventWriter::spawn(receiver, gate, Format::Text).unwrap();

    // Emit on another thread so that a blocking emit fails the test instead of hanging it.
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let emitter = {
        let sources = sources.clone();
        std::thread::spawn(move || {
            let queued = (0..EMITTED)
                .filter(|_| sink.emit(probe_event(id, sources.hit(id))))
                .count();
            done_tx.send(queued).unwrap();
        })
    };
    let queued = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("emit blocked on a stuck consumer");
    emitter.join().unwrap();
    barrier.wait(); // unstick the writer

    let report = writer.finish();
    assert!(report.error.is_none());
    let lost = sources.total_lost();
    assert!(lost > 0);
    assert_eq!(u64::try_from(queued).unwrap(), EMITTED - lost);
    assert_eq!(report.written + lost, EMITTED);
    assert_eq!(report.lost, lost);
    assert!(report.lost_records >= 1);
    let lines = buf.lines();
    assert_eq!(
        u64::try_from(lines.len()).unwrap(),
        report.written + report.lost_records
    );
    let reported: u64 = lines
        .iter()
        .filter_map(|l| {
            l.split_once("] lost ")?
                .1
                .strip_suffix(" events")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(reported, lost);
}

#[test]
fn concurrent_emitters_add_up() {
    const THREADS: u32 = 4;
    const PER_THREAD: u64 = 5_000;
    let sources = Arc::new(Sources::new());
    let ids = [
        sources.register("probe a".into(), "int3".into()),
        sources.register("hbreak b".into(), "hbreak slot 0".into()),
    ];
    let (sink, receiver) = channel(sources.clone(), 128);
    let buf = SharedBuf::default();
    let writer = EventWriter::spawn(receiver, buf.clone(), Format::Jsonl).unwrap();

    std::thread::scope(|s| {
        for vcpu in 0..THREADS {
            let (sink, sources) = (sink.clone(), &sources);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let source = ids[usize::from(i % 2 == 1)];
                    let event = Event {
                        vcpu,
                        source,
                        hit: sources.hit(source),
                        time_ns: sink.now_ns(),
                        ..probe_event(source, 0)
                    };
                    sink.emit(event);
                }
            });
        }
    });
    drop(sink);
    let report = writer.finish();
    assert!(report.error.is_none());

    let emitted = u64::from(THREADS) * PER_THREAD;
    let lost = sources.total_lost();
    assert_eq!(report.written + lost, emitted);
    assert_eq!(report.lost, lost);
    for id in ids {
        assert_eq!(sources.get(id).unwrap().hits(), emitted / 2);
    }

    // Each vCPU's hits of each source appear in the order they happened.
    let mut last = std::collections::HashMap::new();
    let (mut hits, mut lost_in_stream) = (0, 0);
    for line in buf.lines() {
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["kind"] == "lost" {
            lost_in_stream += v["count"].as_u64().unwrap();
            continue;
        }
        hits += 1;
        let key = (
            v["vcpu"].as_u64().unwrap(),
            v["source"].as_str().unwrap().to_owned(),
        );
        let hit = v["hit"].as_u64().unwrap();
        assert!(last.insert(key, hit).is_none_or(|prev| prev < hit));
    }
    assert_eq!(hits, report.written);
    assert_eq!(lost_in_stream, lost);
}

#[test]
fn failing_output_keeps_draining_and_reports() {
    let sources = Arc::new(Sources::new());
    let id = sources.register("probe f".into(), "int3".into());
    let (sink, receiver) = channel(sources.clone(), DEFAULT_CAPACITY);
    let writer = EventWriter::spawn(receiver, Broken, Format::Jsonl).unwrap();
    for _ in 0..100 {
        assert!(sink.emit(probe_event(id, sources.hit(id))));
    }
    let report = writer.finish();
    // BufWriter holds the events; the failure shows at the first flush.
    let Some(WriterError::Io { source, .. }) = &report.error else {
        panic!("expected an I/O error, got {report:?}");
    };
    assert_eq!(source.to_string(), "disk on fire");
    assert_eq!((report.written, report.discarded), (0, 100));

    // Once the writer is gone (unsubscribed), emits fail fast: nobody listens, which is not
    // a loss of any subscriber's.
    assert!(!sink.emit(probe_event(id, 101)));
    assert_eq!(sources.get(id).unwrap().lost(), 0);
    assert_eq!(sink.undelivered(), 1);
}

#[test]
fn summary_table_lists_every_source_and_totals() {
    let sources = Arc::new(Sources::new());
    let a = sources.register("probe start_kernel".into(), "int3".into());
    let b = sources.register("watch jiffies_64".into(), "watch w 8 slot 1".into());
    let (sink, _receiver) = channel(sources.clone(), 1);
    sink.emit(probe_event(a, sources.hit(a)));
    for _ in 0..1234 {
        sink.emit(probe_event(b, sources.hit(b)));
    }
    sources.missed(b);
    assert_eq!(
        summary_table(&sources),
        "\
source              how               hits  nmissed  lost
probe start_kernel  int3                 1        0     0
watch jiffies_64    watch w 8 slot 1  1234        1  1234
total                                 1235        1  1234
"
    );
    assert_eq!(
        summary_table(&Sources::new()),
        "source  how  hits  nmissed  lost\ntotal           0        0     0\n"
    );
}
