//! The `hvprobe` binary on bad input: exit status 64, exactly one line on stderr naming the
//! problem, never a panic or a backtrace. (Runs that boot a VM are tested elsewhere.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use vmm::layout::CMDLINE_MAX_SIZE;
use vmm::outcome::EXIT_BAD_INPUT;

/// A unique scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hvprobe-cli-bin-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hvprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("hvprobe runs")
}

/// Asserts bad input: status 64, one `hvprobe: ` line on stderr containing every word in
/// `names`, nothing on stdout, no panic.
#[track_caller]
fn assert_bad_input(args: &[&str], names: &[&str]) {
    let out = hvprobe(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_BAD_INPUT)),
        "{args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("hvprobe: "), "{args:?}: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "{args:?}: {name:?} not in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: stdout not empty");
}

#[test]
fn bad_memory_sizes() {
    assert_bad_input(&["run", "--mem", "0"], &["--mem", "zero"]);
    assert_bad_input(
        &["run", "--mem", "lots"],
        &["--mem", "`lots` is not a size"],
    );
    assert_bad_input(&["run", "--mem", "256MB"], &["--mem", "256MB"]);
    assert_bad_input(
        &["run", "--mem", "99999999999999999999"],
        &["--mem", "too large"],
    );
    assert_bad_input(&["run", "--mem", "20000000000G"], &["--mem", "too large"]);
    assert_bad_input(
        &["run", "--mem", "268435457"],
        &["--mem", "multiple of 4 KiB"],
    );
    assert_bad_input(&["run", "--mem", "8M"], &["--mem", "8 MiB", "16 MiB"]);
    assert_bad_input(
        &["run", "--mem", "4096T"],
        &["--mem", "4096 TiB", "MemTotal"],
    );
}

#[test]
fn bad_cpus_and_timeouts() {
    assert_bad_input(&["run", "--cpus", "0"], &["--cpus", "0 vCPUs", "1 to 64"]);
    assert_bad_input(&["run", "--cpus", "65"], &["--cpus", "65 vCPUs"]);
    assert_bad_input(&["run", "--cpus", "-2"], &["--cpus", "-2"]);
    assert_bad_input(&["run", "--cpus", "many"], &["--cpus", "many"]);
    assert_bad_input(&["run", "--timeout", "0"], &["--timeout", "positive"]);
    assert_bad_input(&["run", "--timeout", "-1"], &["--timeout", "positive"]);
    assert_bad_input(&["run", "--timeout", "inf"], &["--timeout", "positive"]);
    assert_bad_input(&["run", "--timeout", "soon"], &["--timeout", "soon"]);
}

#[test]
fn cmdline_too_long() {
    let long = "x".repeat(CMDLINE_MAX_SIZE + 10);
    let len = long.len().to_string();
    let max = (CMDLINE_MAX_SIZE - 1).to_string();
    assert_bad_input(&["run", "--cmdline", &long], &["--cmdline", &len, &max]);
}

#[test]
fn bad_input_files() {
    let scratch = Scratch::new("files");
    let missing = scratch.path("no-such-vmlinux");
    assert_bad_input(
        &["run", "--kernel", &missing],
        &["--kernel", &missing, "No such file or directory"],
    );
    let dir = scratch.0.to_str().unwrap();
    assert_bad_input(
        &["run", "--kernel", dir],
        &["--kernel", dir, "is a directory"],
    );
    let initrd = scratch.path("no-such-initrd");
    assert_bad_input(
        &["run", "--initrd", &initrd],
        &["--initrd", &initrd, "No such file"],
    );
    let log = scratch.path("no-dir/serial.log");
    assert_bad_input(
        &["run", "--serial-log", &log],
        &["--serial-log", &log, "No such file"],
    );
    assert_bad_input(
        &["run", "--serial-log", dir],
        &["--serial-log", "is a directory"],
    );

    // Unreadable kernel: only testable when not root.
    use std::os::unix::fs::PermissionsExt;
    let locked = scratch.file("locked", "x");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&locked).is_err() {
        let locked = locked.to_str().unwrap();
        assert_bad_input(
            &["run", "--kernel", locked],
            &["--kernel", locked, "Permission denied"],
        );
    }
}

#[test]
fn bad_config_files() {
    let scratch = Scratch::new("configs");
    let missing = scratch.path("absent.toml");
    assert_bad_input(
        &["run", "--config", &missing],
        &["config file", &missing, "No such file"],
    );
    let config = |name: &str, text: &str| {
        let path = scratch.file(name, text);
        path.to_str().unwrap().to_owned()
    };
    let unknown = config("unknown.toml", "mem = \"64M\"\nvcpus = 2\n");
    assert_bad_input(
        &["run", "--config", &unknown],
        &[&format!("{unknown}:2"), "unknown field", "vcpus"],
    );
    let typed = config("typed.toml", "cpus = \"two\"\n");
    assert_bad_input(
        &["run", "--config", &typed],
        &[&format!("{typed}:1"), "cpus"],
    );
    let syntax = config("syntax.toml", "[unclosed\n");
    assert_bad_input(&["run", "--config", &syntax], &[&format!("{syntax}:1")]);
    let mem = config("mem.toml", "\nmem = \"0\"\n");
    assert_bad_input(
        &["run", "--config", &mem],
        &[&format!("{mem}:2: mem"), "zero"],
    );
    let cpus = config("cpus.toml", "cpus = 100\n");
    assert_bad_input(
        &["run", "--config", &cpus],
        &[&format!("{cpus}:1: cpus"), "100"],
    );
    let nul = config("nul.toml", "cmdline = \"a\\u0000\"\n");
    assert_bad_input(
        &["run", "--config", &nul],
        &[&format!("{nul}:1: cmdline"), "NUL"],
    );
    let kernel = config("kernel.toml", "kernel = \"vmlinux-nope\"\n");
    let resolved = Path::new(&kernel).with_file_name("vmlinux-nope");
    assert_bad_input(
        &["run", "--config", &kernel],
        &[
            &format!("{kernel}:1: kernel"),
            resolved.to_str().unwrap(),
            "No such file",
        ],
    );
    // A flag overrides the bad value in the file, but not a bad flag.
    assert_bad_input(
        &["run", "--config", &cpus, "--mem", "1"],
        &["--mem", "multiple of 4 KiB"],
    );
}

#[test]
fn bad_instrumentation() {
    assert_bad_input(
        &["run", "--watch", "jiffies:3:w"],
        &["--watch jiffies:3:w: length must be 1, 2, 4 or 8"],
    );
    assert_bad_input(
        &["run", "--watch", "jiffies:8"],
        &["--watch jiffies:8", "LEN:w|rw"],
    );
    assert_bad_input(
        &["run", "--watch", "jiffies:8:x"],
        &["--watch", "w (writes) or rw"],
    );
    assert_bad_input(
        &["run", "--watch", "0x1002:4:w"],
        &["--watch", "0x1002", "aligned"],
    );
    assert_bad_input(
        &["run", "--probe", "start_kernel:kprobe"],
        &[
            "--probe start_kernel:kprobe",
            "auto, int3, jump, jump-exit or jump-call",
        ],
    );
    assert_bad_input(
        &["run", "--probe", "start-kernel"],
        &["--probe", "start-kernel", "not a symbol name"],
    );
    assert_bad_input(
        &["run", "--probe", "start_kernel+zz"],
        &["--probe", "+zz", "not an offset"],
    );
    assert_bad_input(
        &["run", "--hbreak", "0xfffffffg"],
        &["--hbreak", "0xfffffffg", "not an address"],
    );
    assert_bad_input(
        &["run", "--hbreak", "0x10000000000000000"],
        &["--hbreak", "64 bits"],
    );
    assert_bad_input(&["run", "--hbreak", ""], &["--hbreak", "empty location"]);
    assert_bad_input(&["run", "--probe"], &["--probe"]);
    assert_bad_input(
        &["run", "--format", "json"],
        &["--format json", "text or jsonl"],
    );

    let scratch = Scratch::new("instrument");
    let events = scratch.path("no-dir/events.jsonl");
    assert_bad_input(
        &["run", "--events", &events],
        &["--events", &events, "No such file"],
    );
    let dir = scratch.0.to_str().unwrap();
    assert_bad_input(&["run", "--events", dir], &["--events", "is a directory"]);

    let config = scratch.file(
        "probes.toml",
        "probe = [\"start_kernel\"]\nwatch = [\n  \"jiffies:8:w\",\n  \"jiffies:8:r\",\n]\n",
    );
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:4: watch jiffies:8:r"), "reads alone"],
    );
    let config = scratch.file("format.toml", "format = \"xml\"\n");
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:1: format xml"), "text or jsonl"],
    );
    let config = scratch.file("scalar.toml", "hbreak = \"start_kernel\"\n");
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:1"), "hbreak"],
    );
}

#[test]
fn bad_tracing() {
    assert_bad_input(
        &["run", "--mmiotrace", "0x1000:0x800"],
        &["--mmiotrace 0x1000:0x800: length must be a multiple of 4 KiB"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x1800:4K"],
        &["--mmiotrace 0x1800:4K", "not 4 KiB-aligned", "use 0x1000"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x1000:0"],
        &["--mmiotrace 0x1000:0", "must not be zero"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "e1000"],
        &[
            "--mmiotrace e1000",
            "unknown device",
            "edu",
            "uart",
            "testdev",
        ],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x1000:4K:rw"],
        &["--mmiotrace 0x1000:4K:rw", "only `w`"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x1000:4Q"],
        &["--mmiotrace 0x1000:4Q", "`4Q` is not a length"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x10000000000000000:4K"],
        &["--mmiotrace", "64 bits"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "0x1000"],
        &["--mmiotrace 0x1000", "GPA:LEN[:w]"],
    );
    assert_bad_input(
        &["run", "--mmiotrace", "uart:w"],
        &["--mmiotrace uart:w", "no suffix"],
    );
    assert_bad_input(&["run", "--mmiotrace"], &["--mmiotrace"]);
    assert_bad_input(
        &["run", "--trace-format", "text"],
        &["--trace-format text", "mmiotrace, jsonl, chrome or ctf"],
    );

    let scratch = Scratch::new("trace");
    let trace = scratch.path("no-dir/t.txt");
    assert_bad_input(
        &["run", "--trace", &trace],
        &["--trace", "trace file", &trace, "No such file"],
    );
    let dir = scratch.0.to_str().unwrap();
    assert_bad_input(&["run", "--trace", dir], &["--trace", "is a directory"]);

    let config = scratch.file(
        "trace.toml",
        "mmiotrace = [\n  \"edu\",\n  \"0x200000:4K:x\",\n]\n",
    );
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:3: mmiotrace 0x200000:4K:x"), "only `w`"],
    );
    let config = scratch.file("format.toml", "trace_format = \"perfetto\"\n");
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:1: trace_format perfetto"), "chrome"],
    );
    let config = scratch.file("scalar.toml", "mmiotrace = \"edu\"\n");
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:1"), "mmiotrace"],
    );
    let config = scratch.file("dir.toml", "trace = \"missing/t.txt\"\n");
    let config = config.to_str().unwrap();
    assert_bad_input(
        &["run", "--config", config],
        &[&format!("{config}:1: trace"), "No such file"],
    );
}

#[test]
fn usage_errors() {
    assert_bad_input(&[], &["no command"]);
    assert_bad_input(&["frobnicate"], &["frobnicate"]);
    assert_bad_input(&["run", "--bogus"], &["--bogus"]);
    assert_bad_input(&["run", "--mem"], &["--mem"]);
    assert_bad_input(&["run", "extra"], &["extra"]);
}

#[test]
fn help_and_version() {
    for args in [
        &["--help"][..],
        &["help"],
        &["run", "--help"],
        &["--version"],
    ] {
        let out = hvprobe(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let expected = match args {
            ["--version"] => "hvprobe 0.1.0",
            ["run", "--help"] => "--mmiotrace <DEVICE|GPA:LEN[:w]>",
            _ => "run",
        };
        assert!(stdout.contains(expected), "{args:?}: {stdout}");
    }
}
