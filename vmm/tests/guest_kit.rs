//! The guest userspace kit: `scripts/mkinitramfs.sh` (an uncompressed newc initramfs with
//! Debian's busybox-static, `scripts/guest/init` and the caller's files) checked with our own
//! newc parser and with GNU `cpio -t`, then booted with Debian's stock kernel under QEMU TCG
//! (a few seconds per boot here), where `/init`'s markers, statuses and endings are checked.
//! QEMU is not hvprobe: the boot under hvprobe is `vmm/tests/linux.rs`'s business. Under QEMU
//! the EXIT write goes to an `isa-debug-exit` placed at hvprobe's EXIT port (0x604), which
//! exits QEMU with `(byte << 1) | 1`: that checks the byte `/init` writes there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvprobe_tests::{skip, workspace_root};

/// One entry of a newc archive.
#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Parses a newc ("070701") archive up to its trailer; panics on anything malformed.
fn parse_newc(a: &[u8]) -> Vec<Entry> {
    let align = |x: usize| (x + 3) & !3;
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        assert_eq!(at % 4, 0, "header at {at} is 4-byte aligned");
        let h = &a[at..at + 110];
        assert_eq!(&h[..6], b"070701", "newc magic at {at}");
        let field = |i: usize| {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(s, 16).unwrap()
        };
        let size = field(6) as usize;
        let namesize = field(11) as usize;
        let name = &a[at + 110..at + 110 + namesize];
        assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
        let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
        let data_at = align(at + 110 + namesize);
        assert!(
            a[at + 110 + namesize..data_at].iter().all(|&b| b == 0),
            "name padding is NULs"
        );
        let data = a[data_at..data_at + size].to_vec();
        at = align(data_at + size);
        if name == "TRAILER!!!" {
            assert_eq!(at, a.len(), "nothing after the trailer");
            return out;
        }
        out.push(Entry {
            name,
            mode: field(1),
            uid: field(2),
            gid: field(3),
            mtime: field(5),
            rdev: (field(9), field(10)),
            data,
        });
    }
}

fn busybox_or_skip(what: &str) -> Option<PathBuf> {
    let bb = workspace_root().join(".cache/busybox/root/bin/busybox");
    if bb.is_file() {
        return Some(bb);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must fetch busybox first (scripts/fetch-busybox.sh)"
    );
    skip(
        what,
        "busybox-static not fetched; run scripts/fetch-busybox.sh",
    );
    None
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hvprobe-guest-kit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs scripts/mkinitramfs.sh; returns (status success, stdout, stderr).
fn mkinitramfs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_root().join("scripts/mkinitramfs.sh"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mkinitramfs_builds_an_uncompressed_newc_archive_with_busybox_init_and_added_files() {
    let Some(bb) = busybox_or_skip("mkinitramfs.sh archive layout") else {
        return;
    };
    let dir = scratch("layout");
    let (run, ko, prog, cpio) = (
        dir.join("run.sh"),
        dir.join("test.ko"),
        dir.join("prog"),
        dir.join("initramfs.cpio"),
    );
    write_mode(&run, "echo hi\n", 0o644);
    write_mode(&ko, "not really a module", 0o640);
    write_mode(&prog, "#!/bin/sh\necho prog\n", 0o750);
    let (s, c) = (run.to_str().unwrap(), cpio.to_str().unwrap());
    let add_ko = format!("{}:/lib/modules/test.ko", ko.display());
    let add_prog = format!("{}:/usr/local/bin/prog", prog.display());
    let args = [
        "-o",
        c,
        "--script",
        s,
        "--add",
        &add_ko,
        "--add",
        &add_prog,
        "--busybox",
        bb.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = mkinitramfs(&args);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, c, "prints the archive's path");
    let archive = std::fs::read(&cpio).unwrap();
    assert!(
        archive.starts_with(b"070701"),
        "uncompressed newc, not gzip/xz/zstd: {:02x?}",
        &archive[..6]
    );
    let entries = parse_newc(&archive);
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} in the archive"))
    };
    let busybox = std::fs::read(&bb).unwrap();
    let init = std::fs::read(workspace_root().join("scripts/guest/init")).unwrap();
    for (name, mode, data) in [
        ("init", 0o100755, &init[..]),
        ("bin/busybox", 0o100755, &busybox[..]),
        ("hvprobe/run.sh", 0o100755, b"echo hi\n"),
        ("lib/modules/test.ko", 0o100640, b"not really a module"),
        ("usr/local/bin/prog", 0o100750, b"#!/bin/sh\necho prog\n"),
    ] {
        let e = get(name);
        assert_eq!(e.mode, mode, "{name}: mode {:o}", e.mode);
        assert!(e.data == data, "{name}: contents");
    }
    let console = get("dev/console");
    assert_eq!((console.mode, console.rdev), (0o020600, (5, 1)));
    for link in [
        "bin/sh",
        "bin/mount",
        "bin/dd",
        "sbin/reboot",
        "sbin/insmod",
    ] {
        let e = get(link);
        assert_eq!(e.mode, 0o120777, "{link} is a symlink");
        assert_eq!(e.data, b"/bin/busybox", "{link} -> /bin/busybox");
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "lib",
        "lib/modules",
        "usr/local",
        "usr/local/bin",
    ] {
        assert_eq!(get(d).mode, 0o040755, "{d} is a directory");
    }
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            assert!(seen.contains(parent), "{}'s directory comes first", e.name);
        }
        assert!(seen.insert(e.name.as_str()), "{} once", e.name);
    }

    // the same inputs give the same bytes
    let (ok, _, stderr) = mkinitramfs(&args);
    assert!(ok, "{stderr}");
    assert!(std::fs::read(&cpio).unwrap() == archive, "reproducible");

    // GNU cpio reads it and lists the same names
    match Command::new("cpio")
        .args(["-it", "--quiet", "-F", c])
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "cpio -t: {:?}", out);
            let listed: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            let ours: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
            assert_eq!(listed, ours, "cpio -t and our parser agree");
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: cpio missing ({e}); scripts/test.sh installs it"
            );
            skip("cpio -t on mkinitramfs.sh's archive", "cpio not installed");
        }
    }

    // clear one-line refusals
    for (bad, says) in [
        (
            vec!["-o", c, "--busybox", bb.to_str().unwrap(), "--add", "x:rel"],
            "GUEST an absolute path",
        ),
        (
            vec![
                "-o",
                c,
                "--busybox",
                bb.to_str().unwrap(),
                "--add",
                "/nonexistent:/x",
            ],
            "/nonexistent is not a regular file",
        ),
        (
            vec![
                "-o",
                c,
                "--busybox",
                bb.to_str().unwrap(),
                "--add",
                &add_ko,
                "--add",
                &add_ko,
            ],
            "/lib/modules/test.ko is in the archive twice",
        ),
        (vec!["--frobnicate"], "unknown argument"),
    ] {
        let (ok, _, stderr) = mkinitramfs(&bad);
        assert!(!ok, "{bad:?} fails");
        assert!(
            stderr.starts_with("mkinitramfs: ") && stderr.contains(says),
            "{bad:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Boots `kernel` with `initrd` under QEMU TCG; returns (QEMU's exit code, console text).
fn qemu_boot(kernel: &Path, initrd: &Path, append: &str, extra: &[&str]) -> (Option<i32>, String) {
    let log = initrd.with_extension("console");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot"])
        .args(extra)
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        status.is_some(),
        "QEMU still running after 120 s:\n{console}"
    );
    (status.unwrap().code(), console)
}

/// The marker lines, each trimmed to the marker (kernel messages may share a line).
fn markers(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.find("HVPROBE-").map(|i| l[i..].trim_end().to_string()))
        .collect()
}

#[test]
fn guest_init_runs_the_script_prints_markers_and_ends_the_vm_under_qemu_tcg() {
    let what = "the guest kit's /init booted under QEMU TCG";
    let Some(bb) = busybox_or_skip(what) else {
        return;
    };
    let Some(kernel) = hvprobe_tests::debian_kernel() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the Debian kernel first (scripts/fetch-debian-kernel.sh)"
        );
        skip(
            what,
            "Debian kernel not fetched; run scripts/fetch-debian-kernel.sh",
        );
        return;
    };
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: qemu-system-x86_64 missing; scripts/test.sh installs qemu-system-x86"
        );
        skip(
            what,
            "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)",
        );
        return;
    }
    let dir = scratch("qemu");
    let (run, other, cpio) = (
        dir.join("run.sh"),
        dir.join("other.sh"),
        dir.join("initramfs.cpio"),
    );
    write_mode(
        &run,
        "# a comment, then an empty line\n\
         \n\
         echo hello from the run script\n\
         cd /tmp\n\
         pwd\n\
         \x20 # an indented comment\n\
         test -c /dev/port && test -d /proc/self && test -d /sys/kernel\n\
         echo continued \\\n\
         line\n\
         sh -c 'exit 3'\n\
         echo not reached\n",
        0o644,
    );
    write_mode(&other, "true\nexit 5\necho not reached\n", 0o644);
    let add = format!("{}:/hvprobe/other.sh", other.display());
    let (ok, _, stderr) = mkinitramfs(&[
        "-o",
        cpio.to_str().unwrap(),
        "--script",
        run.to_str().unwrap(),
        "--add",
        &add,
        "--busybox",
        bb.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");

    // 1. the default script, hvprobe.end=reboot: stops at the first failing line
    let t = Instant::now();
    let (code, console) = qemu_boot(
        &kernel,
        &cpio,
        "console=ttyS0 panic=-1 hvprobe.end=reboot",
        &[],
    );
    eprintln!(
        "guest kit under QEMU TCG, end=reboot: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let m = markers(&console);
    let begins: Vec<&str> = m
        .iter()
        .filter(|l| l.starts_with("HVPROBE-CMD-BEGIN"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        begins,
        [
            "HVPROBE-CMD-BEGIN 1 echo hello from the run script",
            "HVPROBE-CMD-BEGIN 2 cd /tmp",
            "HVPROBE-CMD-BEGIN 3 pwd",
            "HVPROBE-CMD-BEGIN 4 test -c /dev/port && test -d /proc/self && test -d /sys/kernel",
            "HVPROBE-CMD-BEGIN 5 echo continued line",
            "HVPROBE-CMD-BEGIN 6 sh -c 'exit 3'",
        ],
        "{console}"
    );
    let ends: Vec<String> = m
        .iter()
        .filter(|l| l.starts_with("HVPROBE-CMD-END"))
        .map(|l| l.split(" uptime=").next().unwrap().to_string())
        .collect();
    assert_eq!(
        ends,
        (1..=6)
            .map(|n| format!("HVPROBE-CMD-END {n} status={}", if n == 6 { 3 } else { 0 }))
            .collect::<Vec<_>>(),
        "{console}"
    );
    assert_eq!(
        m.first().map(String::as_str),
        Some("HVPROBE-INIT-START"),
        "{console}"
    );
    assert_eq!(
        m.last().map(String::as_str),
        Some("HVPROBE-RUN-END status=3 end=reboot"),
        "{console}"
    );
    assert!(console.contains("hello from the run script"), "{console}");
    assert!(
        console.lines().any(|l| l.trim_end() == "/tmp"),
        "cd carries over: {console}"
    );
    assert!(
        console.lines().any(|l| l.trim_end() == "continued line"),
        "{console}"
    );
    assert!(!console.contains("\nnot reached"), "{console}");
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert_eq!(
        code,
        Some(0),
        "QEMU -no-reboot exits 0 on reboot:\n{console}"
    );

    // 2. hvprobe.run= another script, the default end (exit): `exit 5` ends the run with 5,
    // written to port 0x604, where isa-debug-exit makes QEMU exit (5 << 1) | 1
    let t = Instant::now();
    let (code, console) = qemu_boot(
        &kernel,
        &cpio,
        "console=ttyS0 panic=-1 hvprobe.run=/hvprobe/other.sh",
        &[
            "-machine",
            "pc,acpi=off",
            "-device",
            "isa-debug-exit,iobase=0x604,iosize=1",
        ],
    );
    eprintln!(
        "guest kit under QEMU TCG, end=exit: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let m = markers(&console);
    assert!(
        m.iter()
            .any(|l| l.starts_with("HVPROBE-CMD-END 1 status=0")),
        "{console}"
    );
    assert!(
        m.iter().any(|l| l == "HVPROBE-CMD-BEGIN 2 exit 5"),
        "{console}"
    );
    assert!(
        !m.iter().any(|l| l.starts_with("HVPROBE-CMD-BEGIN 3")),
        "{console}"
    );
    assert_eq!(
        m.last().map(String::as_str),
        Some("HVPROBE-RUN-END status=5 end=exit"),
        "{console}"
    );
    assert_eq!(
        code,
        Some((5 << 1) | 1),
        "the byte at port 0x604 is the status:\n{console}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
