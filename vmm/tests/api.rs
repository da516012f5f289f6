//! The control API against the bundled test kernel's `serve` scenario (it calls
//! `tk_probe_target` forever and counts the calls in `TK_SERVE_CALLS`; a non-zero value
//! written into `TK_SERVE_EXIT` ends it with that code): `hvprobe run --api-socket PATH`,
//! then clients attach, probe while the guest runs, read and write memory by symbol, pause,
//! read registers, single-step, resume, send bad requests, disconnect, and stop the VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmm::session::api::client::{Client, ClientError};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Vm {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Vm {
    /// `hvprobe run --cmdline hvtest=serve --api-socket DIR/api.sock` plus `extra`, waiting
    /// for the socket.
    fn start(name: &str, extra: &[&str]) -> Vm {
        let dir = std::env::temp_dir().join(format!("hvprobe-api-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
            .args(["run", "--cmdline", "hvtest=serve", "--timeout", "120"])
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !socket.exists() {
            assert!(t.elapsed() < TIMEOUT, "the socket appears");
            std::thread::sleep(Duration::from_millis(10));
        }
        Vm { child, socket, dir }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket, TIMEOUT).expect("connects")
    }

    /// Waits for hvprobe to exit; its status and stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if t.elapsed() > TIMEOUT {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default();
        assert!(!self.socket.exists(), "the socket is removed at exit");
        let _ = std::fs::remove_dir_all(&self.dir);
        (status, stderr)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn u64_of(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn calls(c: &mut Client) -> u64 {
    let r = c
        .call("mem.read", json!({"symbol": "TK_SERVE_CALLS", "len": 8}))
        .unwrap();
    let hex = r["data"].as_str().unwrap();
    let bytes: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    u64::from_le_bytes(bytes.try_into().unwrap())
}

fn item(c: &mut Client, id: u64) -> Value {
    let list = c.call("list", json!({})).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(id))
        .cloned()
        .unwrap_or_else(|| panic!("item {id} in {list}"))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < TIMEOUT, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Attach to a running guest, probe it while it runs, detach, and end it through memory.
#[test]
fn attach_probe_while_running_read_memory_and_end_the_guest_by_a_write() {
    let vm = Vm::start("probe", &[]);
    let mut c = vm.client();
    let st = c.call("vm.status", json!({})).unwrap();
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["vcpus"], 1);
    // the guest runs: its counter moves
    let first = calls(&mut c);
    wait_for("the guest's call counter moves", || calls(&mut c) > first);

    // symbols both ways
    let addr = u64_of(
        &c.call("symbols.lookup", json!({"name": "tk_probe_target"}))
            .unwrap()["addr"],
    );
    let at = c
        .call("symbols.at", json!({"addr": format!("{:#x}", addr + 1)}))
        .unwrap();
    assert!(
        at["symbol"]
            .as_str()
            .unwrap()
            .starts_with("tk_probe_target+0x1"),
        "{at}"
    );

    // a probe added while the guest runs sees hits; its removal stops them
    let added = c
        .call("probe.add", json!({"spec": "tk_probe_target:int3"}))
        .unwrap();
    let id = added["id"].as_u64().unwrap();
    assert_eq!(added["how"], "int3", "{added}");
    wait_for("the probe is hit", || {
        item(&mut c, id)["hits"].as_u64().unwrap() >= 20
    });
    // the probe's int3 is hidden from reads through hvprobe
    let code = c
        .call("mem.read", json!({"addr": format!("{addr:#x}"), "len": 1}))
        .unwrap();
    assert_ne!(code["data"], "cc", "reads see the original byte");
    c.call("remove", json!({"id": id})).unwrap();
    let after = item(&mut c, id);
    assert_eq!(after["how"], "removed");
    let hits = after["hits"].as_u64().unwrap();
    let n = calls(&mut c);
    wait_for("the guest goes on", || calls(&mut c) > n + 100);
    assert_eq!(
        item(&mut c, id)["hits"].as_u64().unwrap(),
        hits,
        "no hits after removal"
    );

    // the guest sees a host write: it exits with the code written
    c.call(
        "mem.write",
        json!({"symbol": "TK_SERVE_EXIT", "data": "0500000000000000"}),
    )
    .unwrap();
    let (status, stderr) = vm.wait();
    assert_eq!(status, Some(5), "{stderr}");
}

/// Pause, registers, single-step, resume; the counter stands still while paused.
#[test]
fn pause_registers_step_resume() {
    let vm = Vm::start("step", &[]);
    let mut c = vm.client();
    let mut watcher = vm.client();
    watcher
        .call("events.subscribe", json!({"kinds": ["lifecycle"]}))
        .unwrap();
    assert_eq!(
        c.call("regs.get", json!({"vcpu": 0}))
            .unwrap_err()
            .to_string(),
        "The VM is running: pause it first (vm.pause) (code -32000)"
    );
    assert_eq!(c.call("vm.pause", json!({})).unwrap()["changed"], true);
    assert_eq!(c.call("vm.pause", json!({})).unwrap()["changed"], false);
    assert_eq!(c.call("vm.status", json!({})).unwrap()["state"], "paused");
    let n = calls(&mut c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(calls(&mut c), n, "nothing runs while paused");
    let regs = c.call("regs.get", json!({"vcpu": 0})).unwrap();
    let rip = u64_of(&regs["rip"]);
    let mut rips = vec![rip];
    for _ in 0..5 {
        let r = c.call("vcpu.step", json!({"vcpu": 0})).unwrap();
        rips.push(u64_of(&r["rip"]));
    }
    rips.dedup();
    assert!(rips.len() >= 4, "each step moves RIP: {rips:x?}");
    assert_eq!(
        c.call("vm.status", json!({})).unwrap()["state"],
        "paused",
        "still paused after the steps"
    );
    // a register write the guest observes: RIP back to the first one is harmless; check
    // the write through a read
    let set = c
        .call("regs.set", json!({"vcpu": 0, "regs": {"r15": "0x1234"}}))
        .unwrap();
    assert_eq!(set["r15"], "0x1234");
    assert_eq!(
        c.call("regs.get", json!({"vcpu": 0})).unwrap()["r15"],
        "0x1234"
    );
    assert_eq!(c.call("vm.resume", json!({})).unwrap()["changed"], true);
    let m = calls(&mut c);
    wait_for("the guest runs again", || calls(&mut c) > m);
    c.call("vm.stop", json!({})).unwrap();
    let (status, stderr) = vm.wait();
    assert_eq!(
        status,
        Some(i32::from(vmm::outcome::EXIT_STOPPED)),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped by a control API client"),
        "{stderr}"
    );
}

/// Bad requests get JSON-RPC errors and the VM keeps running; a client's probes go away when
/// it disconnects unless it asked them to stay; a client that paused and left resumes.
#[test]
fn bad_requests_disconnects_and_what_stays() {
    let vm = Vm::start("bad", &[]);
    let mut c = vm.client();
    let code = |r: Result<Value, ClientError>| match r {
        Err(ClientError::Rpc { code, .. }) => code,
        other => panic!("an error, not {other:?}"),
    };
    assert_eq!(code(c.call("no.such", json!({}))), -32601);
    assert_eq!(code(c.call("mem.read", json!({"len": 8}))), -32602);
    assert_eq!(
        code(c.call("mem.read", json!({"addr": "0x1000", "len": 2_000_000}))),
        -32602
    );
    assert_eq!(
        code(c.call("probe.add", json!({"spec": "no_such_symbol"}))),
        -32000
    );
    assert_eq!(
        code(c.call("probe.add", json!({"spec": "tk_probe_target:bogus"}))),
        -32602
    );
    assert_eq!(code(c.call("remove", json!({"id": 9999}))), -32602);
    assert_eq!(
        code(c.call("mem.read", json!({"addr": "0xdead00000000", "len": 8}))),
        -32000
    );
    assert_eq!(
        code(c.call("regs.set", json!({"regs": {"cr3": 1}}))),
        -32602,
        "not a register"
    );
    assert_eq!(
        code(c.call("regs.set", json!({"regs": {"rax": 1}}))),
        -32000,
        "paused first"
    );
    // garbage, an oversized line, a batch
    c.send_raw(b"{not json\n").unwrap();
    let e = c.read_value(Instant::now() + TIMEOUT).unwrap();
    assert_eq!(e["error"]["code"], -32700, "{e}");
    let mut big = vec![b'x'; (1 << 20) + 100];
    big.push(b'\n');
    c.send_raw(&big).unwrap();
    let e = c.read_value(Instant::now() + TIMEOUT).unwrap();
    assert_eq!(e["error"]["code"], -32600, "{e}");
    c.send_raw(
        br#"[{"jsonrpc":"2.0","id":1,"method":"vm.status"},{"jsonrpc":"2.0","id":2,"method":"nope"}]
"#,
    )
    .unwrap();
    let b = c.read_value(Instant::now() + TIMEOUT).unwrap();
    assert_eq!(b[0]["result"]["state"], "running", "{b}");
    assert_eq!(b[1]["error"]["code"], -32601, "{b}");
    assert_eq!(c.call("vm.status", json!({})).unwrap()["state"], "running");

    // what a client adds goes away with it, unless kept
    let mut a = vm.client();
    let gone = a
        .call("probe.add", json!({"spec": "tk_probe_target:int3"}))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let kept = a
        .call("hbreak.add", json!({"at": "tk_probe_target", "keep": true}))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    a.call("vm.pause", json!({})).unwrap();
    drop(a);
    wait_for("the departed client's probe is removed", || {
        item(&mut c, gone)["how"] == "removed"
    });
    assert_ne!(
        item(&mut c, kept)["how"],
        "removed",
        "kept: {}",
        item(&mut c, kept)
    );
    wait_for("the departed client's pause is undone", || {
        c.call("vm.status", json!({})).unwrap()["state"] == "running"
    });
    let h = item(&mut c, kept)["hits"].as_u64().unwrap();
    wait_for("the kept breakpoint still hits", || {
        item(&mut c, kept)["hits"].as_u64().unwrap() > h
    });
    c.call("vm.stop", json!({})).unwrap();
    let (status, _) = vm.wait();
    assert_eq!(status, Some(i32::from(vmm::outcome::EXIT_STOPPED)));
}

/// The socket is private (mode 0600), a second server on the same path is refused, and a
/// stale socket file is replaced.
#[test]
fn the_socket_is_private_and_not_shared() {
    use std::os::unix::fs::PermissionsExt;
    let vm = Vm::start("socket", &[]);
    let mode = std::fs::metadata(&vm.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["run", "--cmdline", "hvtest=serve", "--api-socket"])
        .arg(&vm.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another process is serving this socket"),
        "{err}"
    );
    vm.client().call("vm.stop", json!({})).unwrap();
    let _ = vm.wait();
    // a stale socket (nobody listening) is replaced
    let dir = std::env::temp_dir().join(format!("hvprobe-api-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(Path::new(&stale).exists());
    let out = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["run", "--cmdline", "hvtest=exit code=3", "--api-socket"])
        .arg(&stale)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two clients with different subscriptions each get exactly their events; a client that
/// subscribes and stops reading is dropped without slowing the guest.
#[test]
fn two_clients_two_subscriptions_and_a_client_that_stops_reading() {
    let vm = Vm::start("subs", &[]);
    let mut a = vm.client();
    let mut b = vm.client();
    let probe = a
        .call("probe.add", json!({"spec": "tk_probe_target:int3"}))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    b.call("hbreak.add", json!({"at": "tk_probe_target"}))
        .unwrap();
    a.call("events.subscribe", json!({"sources": [probe]}))
        .unwrap();
    b.call("events.subscribe", json!({"kinds": ["hbreak"]}))
        .unwrap();
    // a third client subscribes to everything and never reads
    let mut lazy = vm.client();
    lazy.call("events.subscribe", json!({})).unwrap();
    for (name, c, want_kind) in [("a", &mut a, "probe"), ("b", &mut b, "hbreak")] {
        for _ in 0..20 {
            let n = c.notification(TIMEOUT).unwrap();
            let ev = &n["params"]["event"];
            assert_eq!(ev["kind"], want_kind, "client {name}: {n}");
            assert!(
                ev["symbol"]
                    .as_str()
                    .unwrap()
                    .starts_with("tk_probe_target+0x0"),
                "client {name}: {n}"
            );
        }
    }
    // the guest keeps running while the lazy client's socket is full (it is dropped after a
    // blocked write of 5 s); `a` and `b`, which do not read now either, go the same way, so
    // a client without a subscription watches the guest
    drop((a, b));
    let mut m = vm.client();
    m.call("probe.add", json!({"spec": "tk_probe_target:int3"}))
        .unwrap();
    let before = calls(&mut m);
    std::thread::sleep(Duration::from_secs(10));
    let after = calls(&mut m);
    assert!(
        after > before + 100,
        "the guest ran on: {before} -> {after}"
    );
    let mut sub_events = 0;
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < TIMEOUT, "the lazy client was not dropped");
        match lazy.notification(Duration::from_secs(2)) {
            Ok(_) => sub_events += 1,
            Err(ClientError::Closed | ClientError::Io(_)) => break,
            Err(ClientError::Timeout(_)) => panic!("the lazy client was not dropped"),
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("the client that stopped reading got {sub_events} events before it was dropped");
    m.call("vm.stop", json!({})).unwrap();
    let (status, _) = vm.wait();
    assert_eq!(status, Some(i32::from(vmm::outcome::EXIT_STOPPED)));
}

/// The client verbs: `hvprobe call` and `hvprobe attach`, with their exit statuses.
#[test]
fn call_and_attach_verbs() {
    let vm = Vm::start("verbs", &[]);
    let hv = env!("CARGO_BIN_EXE_hvprobe");
    let out = Command::new(hv)
        .arg("call")
        .arg(&vm.socket)
        .arg("vm.status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running");
    let out = Command::new(hv)
        .arg("call")
        .arg(&vm.socket)
        .args(["probe.add", r#"{"spec": "no_such_function"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("no_such_function"), "{err}");
    let out = Command::new(hv)
        .args(["call", "/nonexistent/hv.sock", "vm.status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70));
    let out = Command::new(hv)
        .arg("call")
        .arg(&vm.socket)
        .args(["vm.status", "[1,2]"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "params must be an object");

    let events = vm.dir.join("attach.jsonl");
    let out = Command::new(hv)
        .arg("attach")
        .arg(&vm.socket)
        .args([
            "--probe",
            "tk_probe_target:int3",
            "--duration",
            "1.5",
            "--events",
        ])
        .arg(&events)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let text = std::fs::read_to_string(&events).unwrap();
    let n = text.lines().count();
    assert!(n >= 10, "{n} events in 1.5 s:\n{err}");
    for l in text.lines() {
        let e: Value = serde_json::from_str(l).unwrap();
        assert_eq!(e["source"], "probe tk_probe_target", "{l}");
    }
    assert!(err.contains("probe tk_probe_target"), "the table: {err}");
    // detached: the probe is gone
    let mut c = vm.client();
    let list = c.call("list", json!({})).unwrap();
    let item = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "probe tk_probe_target")
        .unwrap()
        .clone();
    assert_eq!(item["how"], "removed", "{item}");
    // a trace through attach: the counter's page, writes only
    let va = u64_of(
        &c.call("symbols.lookup", json!({"name": "TK_SERVE_CALLS"}))
            .unwrap()["addr"],
    );
    let out = Command::new(hv)
        .arg("attach")
        .arg(&vm.socket)
        .args(["--mmiotrace", &format!("{:#x}:4K:w", va & !0xfff)])
        .args(["--duration", "1", "--events"])
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let writes = text
        .lines()
        .filter(|l| {
            l.contains("\"kind\":\"write\"") && l.contains(&format!("\"addr\":\"{va:#x}\""))
        })
        .count();
    assert!(writes >= 10, "{writes} traced stores:\n{text}");
    assert_eq!(
        c.call("trace.list", json!({})).unwrap(),
        json!([]),
        "detached"
    );
    c.call("vm.stop", json!({})).unwrap();
    let _ = vm.wait();
}

/// Guest RAM handed to a client as a read-only memfd: it reads the guest's counter at memory
/// speed, sees it move, and can neither write the descriptor nor map it writable.
#[test]
fn guest_ram_as_a_read_only_memfd() {
    use std::os::unix::fs::FileExt;
    let vm = Vm::start("memfd", &[]);
    let mut c = vm.client();
    let (layout, file) = c.memfd().unwrap();
    let regions = layout["regions"].as_array().unwrap();
    assert_eq!(u64_of(&regions[0]["gpa"]), 0, "{layout}");
    assert_eq!(u64_of(&regions[0]["offset"]), 0, "{layout}");
    // TK_SERVE_CALLS: virtual -> physical through the API, then straight from the memfd
    let va = u64_of(
        &c.call("symbols.lookup", json!({"name": "TK_SERVE_CALLS"}))
            .unwrap()["addr"],
    );
    let through_api = calls(&mut c);
    // the test kernel maps itself 1:1, so its symbols' addresses are guest-physical
    let phys_read = c
        .call(
            "mem.read",
            json!({"addr": format!("{va:#x}"), "phys": true, "len": 8}),
        )
        .unwrap();
    assert!(phys_read["data"].as_str().is_some());
    let read = |f: &std::fs::File| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, va).unwrap();
        u64::from_le_bytes(b)
    };
    let first = read(&file);
    assert!(first >= through_api, "{first} vs {through_api}");
    wait_for("the counter moves in the memfd", || read(&file) > first);
    assert!(
        file.write_at(&[0], va).is_err(),
        "the descriptor is read-only"
    );
    use std::os::fd::AsRawFd;
    // SAFETY: a test mapping request the kernel must refuse (read-only descriptor, shared,
    // writable); nothing is dereferenced, and a successful mapping would be unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_eq!(
        p,
        libc::MAP_FAILED,
        "no writable shared mapping of guest RAM"
    );
    c.call("vm.stop", json!({})).unwrap();
    let _ = vm.wait();
}

/// A trace added and removed while the guest runs: the page holding the guest's counter,
/// writes only (`GPA:4K:w`): every store to it is recorded with its value, in order; after
/// `trace.remove` the page is plain RAM again and the guest goes on.
#[test]
fn a_ram_trace_added_and_removed_while_the_guest_runs() {
    let vm = Vm::start("trace", &[]);
    let mut c = vm.client();
    let va = u64_of(
        &c.call("symbols.lookup", json!({"name": "TK_SERVE_CALLS"}))
            .unwrap()["addr"],
    );
    let page = va & !0xfff;
    c.call("events.subscribe", json!({"kinds": ["access"]}))
        .unwrap();
    let id = c
        .call("trace.add", json!({"target": format!("{page:#x}:4K:w")}))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        c.call("trace.list", json!({})).unwrap()[0]["target"],
        format!("{page:#x}:0x1000:w")
    );
    let mut values = Vec::new();
    while values.len() < 50 {
        let n = c.notification(TIMEOUT).unwrap();
        let ev = &n["params"]["event"];
        if u64_of(&ev["addr"]) == va {
            assert_eq!(ev["kind"], "write", "{ev}");
            values.push(u64_of(&ev["value"]));
        }
    }
    for w in values.windows(2) {
        assert_eq!(w[1], w[0] + 1, "every store, in order: {values:?}");
    }
    c.call("trace.remove", json!({"id": id})).unwrap();
    assert_eq!(c.call("trace.list", json!({})).unwrap(), json!([]));
    // drain what was queued, then no more accesses while the guest keeps counting
    while c.notification(Duration::from_millis(300)).is_ok() {}
    let before = calls(&mut c);
    wait_for("the guest counts on at RAM speed", || {
        calls(&mut c) > before + 10_000
    });
    assert!(
        matches!(
            c.notification(Duration::from_millis(300)),
            Err(ClientError::Timeout(_))
        ),
        "no access events after trace.remove"
    );
    assert_eq!(
        c.call("trace.remove", json!({"id": id}))
            .unwrap_err()
            .to_string(),
        format!("No trace has id {id} (code -32602)")
    );
    c.call("vm.stop", json!({})).unwrap();
    let _ = vm.wait();
}
