//! MMIO tracing of a real driver: the test kernel's `edu` driver (scenario `hvtest=edu`)
//! traced through `hvprobe run --mmiotrace edu`, in the kernel's mmiotrace text format, as
//! JSON lines and as a Chrome trace.

use std::process::Command;

fn hvprobe_trace(extra: &[&str], format: &str) -> (String, String) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file =
        std::env::temp_dir().join(format!("hvprobe-trace-{}-{n}.{format}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args([
            "run",
            "--cmdline",
            "hvtest=edu",
            "--trace",
            file.to_str().unwrap(),
            "--trace-format",
            format,
        ])
        .args(extra)
        .output()
        .expect("hvprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(file);
    (text, stderr)
}

/// The accesses the test kernel's edu driver makes, in order: (R/W, width, BAR offset, value).
const EXPECTED: &[(&str, u32, u64, u64)] = &[
    ("R", 4, 0x00, 0x0100_00ed), // ID
    ("W", 4, 0x04, 0x1234_5678), // liveness
    ("R", 4, 0x04, 0xedcb_a987), // ... reads back inverted
    ("W", 4, 0x08, 5),           // factorial of 5
    ("R", 4, 0x20, 1),           // status: computing
    ("R", 4, 0x20, 0),           // status: done
    ("R", 4, 0x08, 120),         // 5!
    ("W", 4, 0x60, 1),           // raise interrupt 1
    ("R", 4, 0x24, 1),           // interrupt status
    ("W", 4, 0x64, 1),           // acknowledge
    ("R", 4, 0x24, 0),           // cleared
    ("W", 8, 0x80, 0x6_0000),    // DMA RAM -> device: source
    ("W", 8, 0x88, 0x4_0000),    // destination (device buffer)
    ("W", 8, 0x90, 0x10),        // 16 bytes
    ("W", 8, 0x98, 1),           // start
    ("R", 8, 0x98, 0),           // done
    ("W", 8, 0x80, 0x4_0000),    // DMA device -> RAM: source
    ("W", 8, 0x88, 0x6_1000),    // destination
    ("W", 8, 0x90, 0x10),
    ("W", 8, 0x98, 3), // start, device to RAM
    ("R", 8, 0x98, 2), // done (direction bit stays)
];

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("hex field {s}"))
}

#[test]
fn the_edu_driver_is_traced_exactly_in_mmiotrace_format() {
    let (text, stderr) = hvprobe_trace(&["--mmiotrace", "edu"], "mmiotrace");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "VERSION 20070824");
    assert!(
        lines.iter().any(
            |l| l.starts_with("PCIDEV 0008\t123411e8") || l.starts_with("PCIDEV 0008 123411e8")
        ),
        "{text}"
    );
    let map: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("MAP "))
        .expect("a MAP line")
        .split_whitespace()
        .collect();
    let (map_id, base) = (map[2], hex(map[3]));
    assert_eq!(base, 0xe000_0000, "the driver programs BAR0 at 0xe0000000");
    let accesses: Vec<(String, u32, u64, u64)> = lines
        .iter()
        .filter(|l| l.starts_with("R ") || l.starts_with("W "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[3], map_id, "{l}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                hex(f[4]) - base,
                hex(f[5]),
            )
        })
        .collect();
    let expected: Vec<(String, u32, u64, u64)> = EXPECTED
        .iter()
        .map(|&(o, w, off, v)| (o.to_string(), w, off, v))
        .collect();
    assert_eq!(
        accesses, expected,
        "exactly the driver's accesses, in order\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("UNMAP ") && l.split_whitespace().nth(2) == Some(map_id)),
        "{text}"
    );
    let marks: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("MARK "))
        .copied()
        .collect();
    assert!(marks.iter().any(|m| m.ends_with("edu: dma")), "{marks:?}");
    assert!(stderr.contains("trace: "), "{stderr}");
}

#[test]
fn jsonl_trace_carries_vcpu_rip_and_symbol() {
    let (text, _) = hvprobe_trace(&["--mmiotrace", "edu"], "jsonl");
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let accesses: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["kind"] == "read" || r["kind"] == "write")
        .collect();
    assert_eq!(accesses.len(), EXPECTED.len());
    for a in &accesses {
        assert_eq!(a["vcpu"], 0);
        assert_eq!(a["space"], "mmio");
        let sym = a["symbol"]
            .as_str()
            .expect("RIP symbolized with the test kernel's symbols");
        assert!(sym.contains('+'), "{sym}");
    }
}

#[test]
fn chrome_trace_is_valid_json_with_vcpu_threads() {
    let (text, _) = hvprobe_trace(&["--mmiotrace", "edu"], "chrome");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let accesses: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["ph"] == "i" && e["cat"].as_str().is_some_and(|c| c.contains("mmio")))
        .collect();
    assert_eq!(accesses.len(), EXPECTED.len(), "{text}");
    for e in events {
        assert!(e["ph"].is_string() && e["pid"].is_number(), "{e}");
        if e["ph"] == "i" {
            assert!(e["ts"].is_number() && e["tid"].is_number(), "{e}");
        }
    }
}

#[test]
fn a_write_only_ram_trace_shows_no_reads() {
    // the top page of the test kernel's stack: written and read by every call
    let (symbols, _) = vmm::kernel_symbols::kernel_symbols(vmm::test_kernel::TEST_KERNEL).unwrap();
    let page = (symbols.addr_of("__stack_top").unwrap() - 1) & !0xfff;
    let (all, _) = hvprobe_trace(&["--mmiotrace", &format!("{page:#x}:4K")], "jsonl");
    let (writes, _) = hvprobe_trace(&["--mmiotrace", &format!("{page:#x}:4K:w")], "jsonl");
    let kinds = |t: &str| {
        t.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let (all, writes) = (kinds(&all), kinds(&writes));
    assert!(
        all.iter().any(|k| k == "read") && all.iter().any(|k| k == "write"),
        "{all:?}"
    );
    assert!(writes.iter().any(|k| k == "write"), "{writes:?}");
    assert!(
        !writes.iter().any(|k| k == "read"),
        "a write-only trace has no reads"
    );
}

#[test]
fn the_real_driver_trace_passes_the_external_checks() {
    let (mmio, _) = hvprobe_trace(&["--mmiotrace", "edu"], "mmiotrace");
    hvprobe_tests::trace_check("bash", "mmiotrace-gawk.sh", &mmio);
    hvprobe_tests::trace_check("python3", "demmio_check.py", &mmio);
    let (chrome, _) = hvprobe_trace(&["--mmiotrace", "edu"], "chrome");
    hvprobe_tests::trace_check("python3", "chrome_check.py", &chrome);
}
