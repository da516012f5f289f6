//! Every trace format, written through the real writer thread to a file, checked by the
//! external tools in scripts/trace-check: the kernel documentation's gawk filter, a parser
//! following envytools' demmio rules, and a Chrome Trace Event Format schema check.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use introspect::events::{
    Access, Event, EventWriter, Filter, Format as TraceFormat, Hub, PciDevInfo, Sources, Space,
    WriterOptions, WriterReport as TraceReport,
};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/trace-check")
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "hvprobe-trace-formats-{}-{name}",
        std::process::id()
    ))
}

fn access(time_ns: u64, vcpu: u32, write: bool, addr: u64, width: u8, value: u64) -> Event {
    let mut event = Event::access(
        time_ns,
        vcpu,
        addr,
        Access {
            space: Space::Mmio,
            write,
            width,
            value,
            rip: Some(0xffff_ffff_c000_1234),
            map_id: Some(1),
        },
    );
    event.symbol = Some("edu_probe+0x34".into());
    event
}

/// A small trace with every record type: what a driver probing the edu device looks like.
fn records() -> Vec<Event> {
    let edu = PciDevInfo {
        bus: 0,
        devfn: 0x20,
        vendor: 0x1234,
        device: 0x11e8,
        irq: 0xb,
        bars: [0xfea0_0000, 0, 0, 0, 0, 0, 0],
        sizes: [0x10_0000, 0, 0, 0, 0, 0, 0],
        driver: Some("edu".into()),
    };
    let host_bridge = PciDevInfo {
        devfn: 0,
        vendor: 0x8086,
        device: 0x1237,
        irq: 0,
        bars: [0; 7],
        sizes: [0; 7],
        driver: None,
        ..edu.clone()
    };
    vec![
        Event::pcidev(host_bridge),
        Event::pcidev(edu),
        Event::map(
            1_000_000_000,
            1,
            0xfea0_0000,
            0xffff_c900_0010_0000,
            0x10_0000,
            0xffff_ffff_c000_1200,
        ),
        Event::mark(1_000_100_000, "edu: probe"),
        access(1_000_200_000, 0, false, 0xfea0_0000, 4, 0x0100_00ed),
        access(1_000_300_400, 0, true, 0xfea0_0004, 4, 0x1234_5678),
        access(1_000_400_000, 1, false, 0xfea0_0004, 4, 0xedcb_a987),
        access(1_000_500_000, 1, true, 0xfea0_0008, 8, u64::MAX),
        access(1_000_600_000, 1, true, 0xfea0_0020, 1, 0x80),
        {
            let mut pio = access(1_000_700_000, 0, true, 0x3f8, 1, 0x41);
            if let introspect::events::EventKind::Access(a) = &mut pio.kind {
                a.space = Space::Pio;
                a.map_id = None;
            }
            pio
        },
        Event::lost(1_000_800_000, 0, 3),
        Event::unmap(2_000_000_000, 1, 0xffff_ffff_c000_1300),
    ]
}

fn write_trace(format: TraceFormat, test: &str) -> (PathBuf, TraceReport) {
    let path = temp_path(&format!("{test}.{format}"));
    let file = std::fs::File::create(&path).expect("create the trace file");
    let hub = Hub::new(Arc::new(Sources::new()));
    let sub = hub.subscribe(Filter::all(), 1024);
    let options = WriterOptions {
        what: "trace",
        ..WriterOptions::default()
    };
    let writer = EventWriter::spawn_with(sub, file, format, options).unwrap();
    for record in records() {
        assert!(hub.emit(record));
    }
    drop(hub);
    let report = writer.finish();
    assert!(report.error.is_none(), "{:?}", report.error);
    (path, report)
}

/// Runs `program args`, or returns None after a loud SKIPPED line if `program` is missing.
fn run(program: &str, args: &[&Path]) -> Option<(bool, String, String)> {
    let output = match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let line = format!(
                "\n*** SKIPPED (not tested): {program} not installed (scripts/test.sh installs it) ***\n"
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            return None;
        }
        Err(err) => panic!("cannot run {program}: {err}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Some((output.status.success(), stdout, stderr))
}

fn gawk_installed() -> bool {
    let found = Command::new("gawk").arg("--version").output().is_ok();
    if !found {
        let _ = std::io::stderr().write_all(
            b"\n*** SKIPPED (not tested): gawk not installed (apt-get install gawk) ***\n",
        );
    }
    found
}

#[test]
fn mmiotrace_passes_the_documented_gawk_filter() {
    let (path, report) = write_trace(TraceFormat::Mmiotrace, "gawk");
    assert_eq!((report.written, report.skipped), (11, 1));
    if !gawk_installed() {
        return;
    }
    let script = scripts().join("mmiotrace-gawk.sh");
    let (ok, stdout, stderr) = run("bash", &[&script, &path]).expect("bash");
    assert!(ok, "gawk filter failed: {stderr}\n{stdout}");
    assert_eq!(
        stdout,
        "W 4 1.000300 1 0xfea00004 0x12345678 0xffffffffc0001234 0\n\
         --- grep -i lost:\n\
         MARK 0.000000 Lost 3 events.\n"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn mmiotrace_passes_the_demmio_rules() {
    let (path, _) = write_trace(TraceFormat::Mmiotrace, "demmio");
    let script = scripts().join("demmio_check.py");
    let Some((ok, stdout, stderr)) = run("python3", &[&script, &path]) else {
        return;
    };
    assert!(ok, "demmio check failed: {stderr}");
    assert_eq!(stdout, "MAP=1 MARK=2 PCIDEV=2 R=2 UNMAP=1 VERSION=1 W=3\n");
    let _ = std::fs::remove_file(path);
}

#[test]
fn chrome_trace_passes_the_schema_check() {
    let (path, report) = write_trace(TraceFormat::Chrome, "chrome");
    assert_eq!(report.written, 12);
    let script = scripts().join("chrome_check.py");
    let Some((ok, stdout, stderr)) = run("python3", &[&script, &path]) else {
        return;
    };
    assert!(ok, "chrome check failed: {stderr}");
    // 12 records, process_name, and thread names for the VMM pseudo-thread and vCPUs 0, 1.
    assert_eq!(stdout, "16 events: M=4 i=12\n");
    let _ = std::fs::remove_file(path);
}

#[test]
fn jsonl_has_one_object_per_record() {
    let (path, report) = write_trace(TraceFormat::Jsonl, "jsonl");
    assert_eq!(report.written, 12);
    let text = std::fs::read_to_string(&path).expect("read the trace");
    let kinds: Vec<String> = text
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
            value["kind"].as_str().expect("kind").to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "pcidev", "pcidev", "map", "mark", "read", "write", "read", "write", "write", "write",
            "lost", "unmap"
        ]
    );
    let _ = std::fs::remove_file(path);
}

/// A CTF capture of every event kind, read back by the real babeltrace2 (a loud skip when it
/// is missing outside CI, a failure in CI).
#[test]
fn ctf_capture_reads_back_with_babeltrace2() {
    use introspect::events::{EventKind, Lifecycle, RegSet};
    let dir = temp_path("ctf");
    let _ = std::fs::remove_dir_all(&dir);
    let sources = Arc::new(Sources::new());
    let probe = sources.register("probe start_kernel".into(), "jump".into());
    let hub = Hub::new(sources.clone());
    let writer = EventWriter::spawn_ctf(
        hub.subscribe(Filter::all(), 1 << 16),
        &dir,
        WriterOptions::default(),
    )
    .expect("the capture starts");
    let mut events = records();
    let mut regs = RegSet::new();
    regs.push("rip", 0xffff_ffff_8307_9e46);
    regs.push("rdi", 0x1000);
    for i in 0..3 {
        events.push(Event {
            time_ns: 2_000_000_000 + i,
            vcpu: 1,
            kind: EventKind::Probe,
            source: probe,
            addr: 0xffff_ffff_8307_9e46,
            symbol: Some("start_kernel+0x0".into()),
            regs,
            hit: i + 1,
        });
    }
    events.push(Event::lifecycle(
        2_100_000_000,
        0,
        Lifecycle::Exit("guest exit 0".into()),
    ));
    // PCIDEV records sit at time 0, after later ones: the capture keeps time monotonic.
    let n = events.len();
    for e in events {
        assert!(hub.emit(e));
    }
    let report = writer.finish();
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(
        report.written + report.lost_records,
        u64::try_from(n).unwrap()
    );
    let out = match Command::new("babeltrace2").arg(&dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "babeltrace2 is missing under CI (scripts/test.sh installs it)"
            );
            hvprobe_tests::skip(
                "the CTF capture read back by babeltrace2",
                "babeltrace2 is not installed (apt-get install babeltrace2)",
            );
            return;
        }
        Err(e) => panic!("cannot run babeltrace2: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "babeltrace2 failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    // One line per event, plus the one `source` description before the first probe hit.
    assert_eq!(lines.len(), n + 1, "{text}");
    let count = |name: &str| lines.iter().filter(|l| l.contains(name)).count();
    assert_eq!(count(" probe: "), 3, "{text}");
    assert_eq!(count(" access: "), 6, "{text}");
    assert_eq!(count(" pcidev: "), 2, "{text}");
    assert_eq!(count(" map: "), 1, "{text}");
    assert_eq!(count(" unmap: "), 1, "{text}");
    assert_eq!(count(" lost: "), 1, "{text}");
    assert_eq!(count(" lifecycle: "), 1, "{text}");
    assert!(text.contains("name = \"probe start_kernel\""), "{text}");
    assert!(text.contains("text = \"edu: probe\""), "{text}");
    assert!(text.contains("hit = 3"), "{text}");
    assert!(text.contains("driver = \"edu\""), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
