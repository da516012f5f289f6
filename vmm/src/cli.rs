//! The `hvprobe` command line: clap definitions, the merge of flags over a TOML config file
//! ([`ConfigFile`]), and the checks that turn the result into a [`VmConfig`].
//!
//! Everything a user can get wrong is reported here as a [`CliError`] naming the flag, or the
//! file, line and field, so `main` prints one line and exits with
//! [`EXIT_BAD_INPUT`](crate::outcome::EXIT_BAD_INPUT). Kernel and initrd files are only checked
//! to be readable files; their contents are the loader's business. Probe, watch and trace
//! specs (`--probe`, `--mmiotrace`, ...) are checked for syntax only: symbols, addresses and
//! RAM ranges are checked against the guest when the VM is set up.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::config::{
    ConfigFile, ConfigFileError, KernelSource, MAX_CPUS, SerialOutput, Setting, SizeError,
    SpecError, VmConfig, check_host_mem, host_mem_total, parse_mem_size,
};
use crate::layout::CMDLINE_MAX_SIZE;

/// The longest kernel command line, in bytes (the buffer also holds the terminating NUL).
pub const CMDLINE_MAX_LEN: usize = CMDLINE_MAX_SIZE - 1;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0-63  the guest exited with that code through the test device (larger codes give 63)
  64    bad arguments, config file, kernel or initrd
  65    the guest reset the machine (Linux: reboot, or a panic with panic=-1)
  66    the guest crashed (triple fault, KVM internal error)
  67    a probe or breakpoint handler stopped the guest
  70    hvprobe itself failed (no /dev/kvm, an ioctl failed)
  124   the --timeout elapsed";

const RUN_HELP: &str = "\
SIZE is bytes (268435456) or a number with a binary unit: 4096K, 256M, 512MiB, 1G, 1GiB.

LOCATION is SYM[+OFF] or ADDR: a kernel symbol (letters, digits, _ . $; e.g. start_kernel,
foo.isra.0) with an optional byte offset (+0x10 or +16), or a guest-virtual address (0x hex
or decimal). Symbols come from the kernel's symbol table or, for bzImage, its kallsyms.
  --probe start_kernel --probe memblock_add_range:int3 --probe 0xffffffff81000000:jump
  --hbreak start_kernel+0x4 --watch jiffies:8:w --events events.jsonl --format jsonl

TARGET (--mmiotrace) is an emulated device, traced at the bus: edu (the PCI device's memory
BAR), uart (COM1, ports 0x3f8-0x3ff) or testdev (the test device's ports and MMIO page); or a
guest RAM range GPA:LEN[:w] (0x hex or decimal, LEN may be 4K, 2M, 1G; both 4 KiB-aligned),
taken out of KVM's memory slots so every access exits; :w traces only writes.
  --mmiotrace edu --trace t.txt --trace-format mmiotrace --cmdline hvtest=edu
  --mmiotrace uart --mmiotrace 0x200000:4K:w --trace t.jsonl --trace-format jsonl

A config file (--config) takes the same settings as the flags, as TOML keys: kernel, initrd,
cmdline, mem, cpus, timeout, serial_log, quiet, steering, api_socket, probe, hbreak, watch, events, format,
mmiotrace, trace, trace_format (probe, hbreak, watch and mmiotrace are arrays of strings:
probe = [\"start_kernel\", \"0x1000:int3\"], mmiotrace = [\"edu\", \"0x200000:4K:w\"]).
Relative paths in it are relative to the file's directory. Flags win over the file, except
--probe, --hbreak, --watch and --mmiotrace, which add to the file's lists. See
configs/*.toml for commented examples.";

/// `hvprobe`: runs guest kernels on KVM and instruments them from outside.
#[derive(Debug, Parser)]
#[command(
    name = "hvprobe",
    version,
    about = "Run guest kernels on KVM and instrument them from outside",
    after_long_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a kernel (by default the bundled test kernel) and run it until it exits, resets,
    /// crashes or times out.
    #[command(after_help = RUN_HELP, after_long_help = format!("{RUN_HELP}\n\n{EXIT_STATUS_HELP}"))]
    Run(Box<RunArgs>),
    /// List a kernel's symbols (ELF symbol table, or the kernel's own kallsyms tables for
    /// stripped images such as Debian's bzImage) in System.map format.
    Symbols(SymbolsArgs),
    /// Say, per site, whether a probe may go there and whether it may be optimized into a
    /// jump, and why not.
    #[command(name = "probe-check")]
    ProbeCheck(ProbeCheckArgs),
    /// Call one control API method of a running `hvprobe run --api-socket PATH` and print its
    /// result as JSON (e.g. `hvprobe call api.sock mem.read '{"symbol":"jiffies","len":8}'`).
    Call(CallArgs),
    /// Attach to a running `hvprobe run --api-socket PATH`: add probes, breakpoints and
    /// watchpoints, stream their events until --duration passes, the VM ends or Ctrl-C, then
    /// detach (what was added goes away) and print their table.
    Attach(AttachArgs),
}

/// The arguments of `hvprobe call`.
#[derive(Clone, Debug, Default, Args)]
pub struct CallArgs {
    /// The control API socket (`hvprobe run --api-socket PATH`)
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// The method (`rpc.methods` lists them; README's "Control API" shows each)
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// Its parameters, a JSON object [default: {}]
    #[arg(value_name = "PARAMS")]
    pub params: Option<String>,
    /// Seconds to wait for the answer
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,
}

/// The flags of `hvprobe attach`.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct AttachArgs {
    /// The control API socket (`hvprobe run --api-socket PATH`)
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// Software probe, as `hvprobe run --probe` takes it. Repeatable
    #[arg(long, value_name = "LOCATION[:MODE[:FETCH,...]]")]
    pub probe: Vec<String>,
    /// Hardware execute breakpoint. Repeatable
    #[arg(long, value_name = "LOCATION")]
    pub hbreak: Vec<String>,
    /// Hardware watchpoint. Repeatable
    #[arg(long, value_name = "LOCATION:LEN:w|rw")]
    pub watch: Vec<String>,
    /// Trace a device's or a guest RAM range's accesses, as `hvprobe run --mmiotrace` takes
    /// it; they join the events as access, map and unmap records. Repeatable
    #[arg(long, value_name = "DEVICE|GPA:LEN[:w]")]
    pub mmiotrace: Vec<String>,
    /// Write the events to FILE (created or truncated) [default: stdout]
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Detach after this many seconds [default: when the VM ends or on Ctrl-C]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Leave what was added in place after detaching
    #[arg(long)]
    pub keep: bool,
}

/// The flags of `hvprobe probe-check`.
#[derive(Clone, Debug, Default, Args)]
pub struct ProbeCheckArgs {
    /// Kernel image: ELF vmlinux, bzImage, or an ELF test kernel [default: the bundled test
    /// kernel]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Probe sites: SYMBOL, SYMBOL+OFFSET or 0xADDRESS
    #[arg(value_name = "SITE", required = true)]
    pub sites: Vec<String>,
}

/// The flags of `hvprobe symbols`.
#[derive(Clone, Debug, Default, Args)]
pub struct SymbolsArgs {
    /// Kernel image: ELF vmlinux, bzImage, or an ELF test kernel [default: the bundled test
    /// kernel]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Only symbols whose name contains PATTERN
    #[arg(value_name = "PATTERN")]
    pub pattern: Option<String>,
}

/// The flags of `hvprobe run`, as typed (checked by [`resolve_run`]).
#[derive(Clone, Debug, Default, Args)]
pub struct RunArgs {
    /// Kernel to boot: ELF vmlinux, bzImage, or an ELF test kernel [default: the bundled test
    /// kernel]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk to load for a Linux kernel
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default for Linux: console=ttyS0 earlyprintk=serial,ttyS0,115200
    /// nokaslr panic=-1 reboot=k]
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Guest RAM, at least 16M, a multiple of 4K [default: 256M]
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Number of vCPUs, 1 to 64 [default: 1]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Stop the guest after this many seconds (fractions allowed: 0.5) [default: none]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Write the guest's serial console to FILE (created or truncated) [default: stdout]
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Read settings from a TOML file; flags win over it
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Print nothing on stderr but errors (no boot phases, no outcome line)
    #[arg(long, short)]
    pub quiet: bool,
    /// On the software KVM (kvm_pvm) only: do not add the Linux command-line words that steer
    /// the guest around what that emulator cannot run or runs very slowly (printed at boot
    /// when added). Without them Debian's kernel does not reach user space there
    #[arg(long)]
    pub no_steering: bool,
    /// Serve the control API (JSON-RPC 2.0, one message per line) on a Unix socket at PATH
    /// (mode 0600, removed at exit): clients attach, probe, read memory and detach while the
    /// guest runs (`hvprobe call`, `hvprobe attach`)
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Software probe at LOCATION, armed as MODE: int3; jump (a 5-byte jump to a trampoline
    /// in the guest's arena that records the hit in guest memory, no exit); jump-exit (a jump
    /// whose trampoline exits once to the host); jump-call (Linux with the guest module: the
    /// trampoline calls the module's handler, which records pid, comm and the string the one
    /// FETCH register points to); or auto (jump where the code and the guest
    /// allow one, else int3) [default: auto]. For jump and auto, FETCH,... chooses what each
    /// in-guest record holds (up to 6: rax..r15, rsp, rflags, @SYMBOL or @ADDRESS for 8 bytes
    /// of memory) [default: rsp,rdi,rsi,rdx,rcx,rax]. Repeatable; adds to the config file's
    /// `probe` list
    #[arg(long, value_name = "LOCATION[:MODE[:FETCH,...]]")]
    pub probe: Vec<String>,
    /// Hardware execute breakpoint (debug register) at LOCATION. Repeatable; adds to the
    /// config file's `hbreak` list
    #[arg(long, value_name = "LOCATION")]
    pub hbreak: Vec<String>,
    /// Hardware watchpoint on LEN bytes (1, 2, 4 or 8, naturally aligned) at LOCATION, hit by
    /// writes (w) or by reads and writes (rw). Repeatable; adds to the config file's `watch`
    /// list
    #[arg(long, value_name = "LOCATION:LEN:w|rw")]
    pub watch: Vec<String>,
    /// Write events to FILE (created or truncated) [default: stderr]
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Event format: text (one line per event) or jsonl (one JSON object per line)
    /// [default: text]
    #[arg(long, value_name = "text|jsonl")]
    pub format: Option<String>,
    /// Trace every access to TARGET: an emulated device (edu, uart, testdev) or a guest RAM
    /// range GPA:LEN[:w] (4 KiB-aligned; w: writes only). Repeatable; adds to the config
    /// file's `mmiotrace` list
    #[arg(long, value_name = "DEVICE|GPA:LEN[:w]")]
    pub mmiotrace: Vec<String>,
    /// Write the trace to FILE (created or truncated; for ctf a directory) [default: stderr]
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Trace format: mmiotrace (the kernel's mmiotrace text), jsonl (one JSON object per
    /// access), chrome (Chrome trace JSON: accesses and probe hits on one timeline) or ctf
    /// (CTF 1.8 binary capture in directory --trace DIR, every event) [default: mmiotrace]
    #[arg(long, value_name = "mmiotrace|jsonl|chrome|ctf")]
    pub trace_format: Option<String>,
}

/// What the command line asks for.
// Built once per process and matched at once: boxing the config would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Run a VM.
    Run(VmConfig),
    /// Print this text on stdout and exit with status 0 (`--help`, `--version`).
    Print(String),
    /// List symbols of a kernel (`None`: the bundled test kernel) matching a pattern.
    Symbols {
        /// The kernel file.
        kernel: Option<PathBuf>,
        /// Substring filter.
        pattern: Option<String>,
    },
    /// Check probe sites of a kernel (`None`: the bundled test kernel).
    ProbeCheck {
        /// The kernel file.
        kernel: Option<PathBuf>,
        /// The sites as typed.
        sites: Vec<String>,
    },
    /// Call one control API method.
    Call {
        /// The socket.
        socket: PathBuf,
        /// The method.
        method: String,
        /// Its parameters (checked to be a JSON object).
        params: serde_json::Value,
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// Attach to a running VM.
    Attach(AttachArgs),
}

/// Where a setting came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A flag, with its dashes (`--mem`).
    Flag(&'static str),
    /// A config file field.
    File {
        /// The config file.
        path: PathBuf,
        /// The line of the value (1-based).
        line: usize,
        /// The TOML key.
        field: &'static str,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::File { path, line, field } => {
                write!(f, "{}:{line}: {field}", path.display())
            }
        }
    }
}

/// Bad command line or config. Every variant is exit status 64; print it with
/// [`error_line`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap rejected the arguments (unknown flag, missing value, not a number, ...).
    #[error("{0}")]
    Usage(String),
    /// The config file could not be read or parsed.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// The memory size is malformed, too small, or more than the host has.
    #[error("{origin}: bad memory size")]
    Mem {
        /// Where it came from.
        origin: Origin,
        /// What is wrong with it.
        #[source]
        source: SizeError,
    },
    /// The vCPU count is not in 1..=[`MAX_CPUS`].
    #[error("{origin}: {cpus} vCPUs is out of range: use 1 to {MAX_CPUS}")]
    CpusOutOfRange {
        /// Where it came from.
        origin: Origin,
        /// The count given.
        cpus: i64,
    },
    /// The timeout is not a positive, finite number of seconds.
    #[error("{origin}: the timeout must be a positive number of seconds, not {secs}")]
    BadTimeout {
        /// Where it came from.
        origin: Origin,
        /// The value given.
        secs: f64,
    },
    /// The command line does not fit in the boot command line buffer.
    #[error("{origin}: the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Where it came from.
        origin: Origin,
        /// Its length in bytes.
        len: usize,
        /// [`CMDLINE_MAX_LEN`].
        max: usize,
    },
    /// The command line contains a NUL byte (it would end the string early).
    #[error("{origin}: the kernel command line contains a NUL byte at offset {offset}")]
    CmdlineNul {
        /// Where it came from.
        origin: Origin,
        /// The byte offset of the first NUL.
        offset: usize,
    },
    /// An input file (kernel, initrd) is missing or cannot be opened.
    #[error("{origin}: cannot read {what} {}", .path.display())]
    Unreadable {
        /// Where it came from.
        origin: Origin,
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path, as resolved.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// A path that should be a file is a directory.
    #[error("{origin}: {what} {} is a directory, not a file", .path.display())]
    IsDirectory {
        /// Where it came from.
        origin: Origin,
        /// `kernel`, `initrd`, `serial log`, `events file` or `trace file`.
        what: &'static str,
        /// The path, as resolved.
        path: PathBuf,
    },
    /// The directory an output file (serial log, events or trace file) would be created in is
    /// missing or not a directory.
    #[error("{origin}: cannot create {what} {}: bad directory {}", .path.display(), .dir.display())]
    OutputDir {
        /// Where it came from.
        origin: Origin,
        /// `serial log`, `events file` or `trace file`.
        what: &'static str,
        /// The output file's path, as resolved.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
        /// Why the directory is unusable.
        #[source]
        source: io::Error,
    },
    /// A `--probe`, `--hbreak`, `--watch`, `--format`, `--mmiotrace` or `--trace-format`
    /// value is malformed, e.g. `--watch jiffies:3:w: length must be 1, 2, 4 or 8`.
    #[error("{origin} {}", shown(.value))]
    BadSpec {
        /// Where it came from.
        origin: Origin,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
}

/// A value for a message: as is, or quoted if it is empty or has spaces or control characters.
fn shown(value: &str) -> String {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("{value:?}")
    } else {
        value.to_owned()
    }
}

pub use crate::outcome::error_line;

/// Parses the process's arguments (see [`parse_from`]).
pub fn parse() -> Result<Request, CliError> {
    parse_from(std::env::args_os())
}

/// Parses arguments (the first is the program name), loads the config file if any, merges and
/// checks everything (including that the kernel and initrd are readable files).
pub fn parse_from<I, T>(args: I) -> Result<Request, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(err.render().to_string()),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => Err(
            CliError::Usage("no command given (try `hvprobe run` or `hvprobe --help`)".into()),
        ),
        _ => Err(CliError::Usage(clap_first_line(&err))),
    });
    match cli {
        Ok(Cli {
            command: Command::Run(args),
        }) => resolve_run(&args).map(Request::Run),
        Ok(Cli {
            command: Command::Symbols(args),
        }) => {
            if let Some(k) = &args.kernel {
                check_input_file(k, "kernel", Origin::Flag("--kernel"))?;
            }
            Ok(Request::Symbols {
                kernel: args.kernel,
                pattern: args.pattern,
            })
        }
        Ok(Cli {
            command: Command::ProbeCheck(args),
        }) => {
            if let Some(k) = &args.kernel {
                check_input_file(k, "kernel", Origin::Flag("--kernel"))?;
            }
            Ok(Request::ProbeCheck {
                kernel: args.kernel,
                sites: args.sites,
            })
        }
        Ok(Cli {
            command: Command::Call(args),
        }) => {
            let params: serde_json::Value = match &args.params {
                None => serde_json::json!({}),
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| CliError::Usage(format!("PARAMS {text:?} is not JSON: {e}")))?,
            };
            if !params.is_object() {
                return Err(CliError::Usage(format!(
                    "PARAMS must be a JSON object ({{\"name\": value, ...}}), not {params}"
                )));
            }
            if !(args.timeout.is_finite() && args.timeout > 0.0) {
                return Err(CliError::Usage(format!(
                    "--timeout {} must be a positive number of seconds",
                    args.timeout
                )));
            }
            Ok(Request::Call {
                socket: args.socket,
                method: args.method,
                params,
                timeout: Duration::from_secs_f64(args.timeout.min(86_400.0)),
            })
        }
        Ok(Cli {
            command: Command::Attach(args),
        }) => {
            if let Some(d) = args.duration
                && !(d.is_finite() && d > 0.0)
            {
                return Err(CliError::Usage(format!(
                    "--duration {d} must be a positive number of seconds"
                )));
            }
            if let Some(path) = &args.events {
                check_output_file(path, "events file", Origin::Flag("--events"))?;
            }
            Ok(Request::Attach(args))
        }
        Err(Ok(text)) => Ok(Request::Print(text)),
        Err(Err(err)) => Err(err),
    }
}

/// clap's message without its `error: ` prefix, usage and tips.
fn clap_first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_owned()
}

/// Loads `--config` if given and merges it under the flags ([`merge`]), checking against the
/// host's RAM.
pub fn resolve_run(args: &RunArgs) -> Result<VmConfig, CliError> {
    let file = args.config.as_deref().map(ConfigFile::load).transpose()?;
    merge(args, file.as_ref(), host_mem_total())
}

/// A value and where it came from: the flag if given, else the file's field.
fn pick<T: Clone>(
    flag: Option<&T>,
    flag_name: &'static str,
    file: Option<&ConfigFile>,
    field: &'static str,
    get: impl Fn(&ConfigFile) -> Option<&Setting<T>>,
) -> Option<(T, Origin)> {
    if let Some(value) = flag {
        return Some((value.clone(), Origin::Flag(flag_name)));
    }
    let file = file?;
    get(file).map(|setting| {
        let origin = Origin::File {
            path: file.path.clone(),
            line: setting.line,
            field,
        };
        (setting.value.clone(), origin)
    })
}

/// The file's entries of a list setting, then the flags' (flags add to the file's list).
fn listed<'a>(
    flags: &'a [String],
    flag_name: &'static str,
    file: Option<&'a ConfigFile>,
    field: &'static str,
    get: impl Fn(&ConfigFile) -> &Vec<Setting<String>>,
) -> impl Iterator<Item = (&'a str, Origin)> {
    let from_file = file.into_iter().flat_map(move |file| {
        get(file).iter().map(move |setting| {
            let origin = Origin::File {
                path: file.path.clone(),
                line: setting.line,
                field,
            };
            (setting.value.as_str(), origin)
        })
    });
    let from_flags = flags
        .iter()
        .map(move |v| (v.as_str(), Origin::Flag(flag_name)));
    from_file.chain(from_flags)
}

/// Parses one instrumentation value, naming where it came from if it is bad.
fn parse_spec<T: std::str::FromStr<Err = SpecError>>(
    value: &str,
    origin: Origin,
) -> Result<T, CliError> {
    value.parse().map_err(|source| CliError::BadSpec {
        origin,
        value: value.to_owned(),
        source,
    })
}

/// Merges flags over a config file and checks every value. `host_mem`: the host's RAM in
/// bytes, `None` to skip that check.
pub fn merge(
    args: &RunArgs,
    file: Option<&ConfigFile>,
    host_mem: Option<u64>,
) -> Result<VmConfig, CliError> {
    let mut config = VmConfig::default();

    if let Some((path, origin)) = pick(args.kernel.as_ref(), "--kernel", file, "kernel", |f| {
        f.kernel.as_ref()
    }) {
        check_input_file(&path, "kernel", origin)?;
        config.kernel = KernelSource::File(path);
    }
    if let Some((path, origin)) = pick(args.initrd.as_ref(), "--initrd", file, "initrd", |f| {
        f.initrd.as_ref()
    }) {
        check_input_file(&path, "initrd", origin)?;
        config.initrd = Some(path);
    }
    if let Some((cmdline, origin)) =
        pick(args.cmdline.as_ref(), "--cmdline", file, "cmdline", |f| {
            f.cmdline.as_ref()
        })
    {
        check_cmdline(&cmdline, origin)?;
        config.cmdline = Some(cmdline);
    }
    if let Some((mem, origin)) = pick(args.mem.as_ref(), "--mem", file, "mem", |f| f.mem.as_ref()) {
        config.mem_size = parse_mem_size(&mem)
            .and_then(|size| check_host_mem(size, host_mem).map(|()| size))
            .map_err(|source| CliError::Mem { origin, source })?;
    }
    if let Some((cpus, origin)) = pick(args.cpus.as_ref(), "--cpus", file, "cpus", |f| {
        f.cpus.as_ref()
    }) {
        config.cpus = u8::try_from(cpus)
            .ok()
            .filter(|c| (1..=MAX_CPUS).contains(c))
            .ok_or(CliError::CpusOutOfRange { origin, cpus })?;
    }
    if let Some((secs, origin)) = pick(args.timeout.as_ref(), "--timeout", file, "timeout", |f| {
        f.timeout.as_ref()
    }) {
        let timeout = (secs.is_finite() && secs > 0.0)
            .then(|| Duration::try_from_secs_f64(secs).ok())
            .flatten()
            .filter(|d| !d.is_zero())
            .ok_or(CliError::BadTimeout { origin, secs })?;
        config.timeout = Some(timeout);
    }
    if let Some((path, origin)) = pick(
        args.serial_log.as_ref(),
        "--serial-log",
        file,
        "serial_log",
        |f| f.serial_log.as_ref(),
    ) {
        check_output_file(&path, "serial log", origin)?;
        config.serial = SerialOutput::File(path);
    }
    config.quiet = args.quiet || file.and_then(|f| f.quiet.as_ref()).is_some_and(|q| q.value);
    if let Some((path, origin)) = pick(
        args.api_socket.as_ref(),
        "--api-socket",
        file,
        "api_socket",
        |f| f.api_socket.as_ref(),
    ) {
        check_output_file(&path, "API socket", origin)?;
        config.api_socket = Some(path);
    }
    config.steering = !args.no_steering
        && file
            .and_then(|f| f.steering.as_ref())
            .is_none_or(|s| s.value);

    let instrument = &mut config.instrument;
    for (value, origin) in listed(&args.probe, "--probe", file, "probe", |f| &f.probe) {
        instrument.probes.push(parse_spec(value, origin)?);
    }
    for (value, origin) in listed(&args.hbreak, "--hbreak", file, "hbreak", |f| &f.hbreak) {
        instrument.hbreaks.push(parse_spec(value, origin)?);
    }
    for (value, origin) in listed(&args.watch, "--watch", file, "watch", |f| &f.watch) {
        instrument.watches.push(parse_spec(value, origin)?);
    }
    if let Some((path, origin)) = pick(args.events.as_ref(), "--events", file, "events", |f| {
        f.events.as_ref()
    }) {
        check_output_file(&path, "events file", origin)?;
        instrument.events = Some(path);
    }
    if let Some((format, origin)) = pick(args.format.as_ref(), "--format", file, "format", |f| {
        f.format.as_ref()
    }) {
        instrument.format = parse_spec(&format, origin)?;
    }

    let trace = &mut config.trace;
    for (value, origin) in listed(&args.mmiotrace, "--mmiotrace", file, "mmiotrace", |f| {
        &f.mmiotrace
    }) {
        trace.targets.push(parse_spec(value, origin)?);
    }
    if let Some((path, origin)) = pick(args.trace.as_ref(), "--trace", file, "trace", |f| {
        f.trace.as_ref()
    }) {
        check_output_file(&path, "trace file", origin)?;
        trace.file = Some(path);
    }
    if let Some((format, origin)) = pick(
        args.trace_format.as_ref(),
        "--trace-format",
        file,
        "trace_format",
        |f| f.trace_format.as_ref(),
    ) {
        trace.format = parse_spec(&format, origin)?;
    }
    Ok(config)
}

fn check_cmdline(cmdline: &str, origin: Origin) -> Result<(), CliError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(CliError::CmdlineNul { origin, offset });
    }
    if cmdline.len() > CMDLINE_MAX_LEN {
        return Err(CliError::CmdlineTooLong {
            origin,
            len: cmdline.len(),
            max: CMDLINE_MAX_LEN,
        });
    }
    Ok(())
}

/// The file exists, is not a directory, and can be opened for reading.
fn check_input_file(path: &Path, what: &'static str, origin: Origin) -> Result<(), CliError> {
    let unreadable = |origin, source| CliError::Unreadable {
        origin,
        what,
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(|e| unreadable(origin.clone(), e))?;
    if metadata.is_dir() {
        return Err(CliError::IsDirectory {
            origin,
            what,
            path: path.to_owned(),
        });
    }
    File::open(path).map_err(|e| unreadable(origin, e))?;
    Ok(())
}

/// An output file (`what`: serial log, events file, trace file) is not a directory and its parent
/// directory exists.
fn check_output_file(path: &Path, what: &'static str, origin: Origin) -> Result<(), CliError> {
    if path.is_dir() {
        return Err(CliError::IsDirectory {
            origin,
            what,
            path: path.to_owned(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let bad_dir = |source| CliError::OutputDir {
        origin: origin.clone(),
        what,
        path: path.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(dir).map_err(bad_dir)?;
    if !metadata.is_dir() {
        return Err(bad_dir(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEFAULT_MEM_SIZE, EventFormat, Instrumentation, Location, ProbeMode, ProbeSpec,
        TraceConfig, TraceFormatChoice, TraceTarget, WatchSpec, fmt_size,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "hvprobe-cli-unit-{}-{n}-{name}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GIB: u64 = 1 << 30;

    fn run(args: &[&str]) -> Result<VmConfig, CliError> {
        let argv = ["hvprobe", "run"].iter().chain(args);
        match parse_from(argv)? {
            Request::Run(config) => Ok(config),
            Request::Print(text) => panic!("unexpected print: {text}"),
            Request::Symbols { .. } => panic!("unexpected symbols request"),
            Request::ProbeCheck { .. } => panic!("unexpected probe-check request"),
            Request::Call { .. } | Request::Attach(_) => panic!("unexpected client request"),
        }
    }

    #[test]
    fn steering_is_on_by_default_and_off_by_flag_or_file() {
        assert!(run(&[]).unwrap().steering);
        assert!(!run(&["--no-steering"]).unwrap().steering);
        let s = Scratch::new("steering");
        let off = s.file("off.toml", "steering = false\n");
        assert!(!run(&["--config", off.to_str().unwrap()]).unwrap().steering);
        let on = s.file("on.toml", "steering = true\n");
        assert!(run(&["--config", on.to_str().unwrap()]).unwrap().steering);
        // the flag wins over the file
        assert!(
            !run(&["--config", on.to_str().unwrap(), "--no-steering"])
                .unwrap()
                .steering
        );
    }

    #[test]
    fn symbols_subcommand() {
        match parse_from(["hvprobe", "symbols", "start_"]).unwrap() {
            Request::Symbols {
                kernel: None,
                pattern,
            } => assert_eq!(pattern.as_deref(), Some("start_")),
            _ => panic!("symbols request expected"),
        }
        let missing = parse_from(["hvprobe", "symbols", "--kernel", "/no/such/file"]).unwrap_err();
        assert!(
            cli_line(&missing).contains("/no/such/file"),
            "{}",
            cli_line(&missing)
        );
    }

    #[test]
    fn probe_check_subcommand() {
        match parse_from([
            "hvprobe",
            "probe-check",
            "start_kernel",
            "0xffffffff81000000",
        ])
        .unwrap()
        {
            Request::ProbeCheck {
                kernel: None,
                sites,
            } => assert_eq!(sites, ["start_kernel", "0xffffffff81000000"]),
            _ => panic!("probe-check request expected"),
        }
        assert!(parse_from(["hvprobe", "probe-check"]).is_err());
    }

    fn cli_line(e: &CliError) -> String {
        error_line(e)
    }

    fn run_args(f: impl FnOnce(&mut RunArgs)) -> RunArgs {
        let mut args = RunArgs::default();
        f(&mut args);
        args
    }

    fn flag(name: &'static str) -> Origin {
        Origin::Flag(name)
    }

    #[test]
    fn no_arguments_runs_the_embedded_kernel_with_defaults() {
        let config = run(&[]).unwrap();
        assert_eq!(config, VmConfig::default());
        assert_eq!(config.kernel, KernelSource::Embedded);
        assert_eq!(config.mem_size, DEFAULT_MEM_SIZE);
    }

    #[test]
    fn all_flags() {
        let scratch = Scratch::new("all-flags");
        let kernel = scratch.file("vmlinux", "x");
        let initrd = scratch.file("initrd", "y");
        let log = scratch.0.join("serial.log");
        let config = run(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 quiet",
            "--mem",
            "64M",
            "--cpus",
            "4",
            "--timeout",
            "0.5",
            "--serial-log",
            log.to_str().unwrap(),
            "--quiet",
        ])
        .unwrap();
        assert_eq!(
            config,
            VmConfig {
                kernel: KernelSource::File(kernel),
                initrd: Some(initrd),
                cmdline: Some("console=ttyS0 quiet".into()),
                steering: true,
                api_socket: None,
                mem_size: 64 << 20,
                cpus: 4,
                timeout: Some(Duration::from_millis(500)),
                serial: SerialOutput::File(log),
                quiet: true,
                instrument: Instrumentation::default(),
                trace: TraceConfig::default(),
            }
        );
    }

    #[test]
    fn memory_sizes() {
        for (text, bytes) in [
            ("256M", 256 << 20),
            ("1G", GIB),
            ("512MiB", 512 << 20),
            ("1GiB", GIB),
            ("268435456", 256 << 20),
            ("16384K", 16 << 20),
            ("16384k", 16 << 20),
            ("2g", 2 * GIB),
            (" 64 M ", 64 << 20),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_mem_size(text), Ok(bytes), "{text}");
        }
        let config = run(&["--mem", "4096K"]);
        assert!(
            matches!(config, Err(CliError::Mem { source: SizeError::TooSmall(n), .. }) if n == 4 << 20)
        );
        assert_eq!(parse_mem_size(""), Err(SizeError::Empty));
        assert_eq!(parse_mem_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_mem_size("0G"), Err(SizeError::Zero));
        for garbage in ["abc", "M", "12X", "1.5G", "-1G", "256MB", "1 G B", "0x1000"] {
            assert_eq!(
                parse_mem_size(garbage),
                Err(SizeError::Invalid(garbage.trim().into())),
                "{garbage}"
            );
        }
        assert!(matches!(
            parse_mem_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_mem_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(
            parse_mem_size("268435457"),
            Err(SizeError::NotPageAligned(268_435_457))
        );
        assert_eq!(parse_mem_size("8M"), Err(SizeError::TooSmall(8 << 20)));
    }

    #[test]
    fn memory_more_than_host() {
        let args = run_args(|a| a.mem = Some("4G".into()));
        let err = merge(&args, None, Some(2 * GIB)).unwrap_err();
        assert!(matches!(
            err,
            CliError::Mem {
                origin: Origin::Flag("--mem"),
                source: SizeError::MoreThanHost { requested, host }
            } if requested == 4 * GIB && host == 2 * GIB
        ));
        let line = error_line(&err);
        assert!(line.contains("4 GiB") && line.contains("2 GiB"), "{line}");
        assert!(merge(&args, None, Some(8 * GIB)).is_ok());
        assert!(merge(&args, None, None).is_ok());
        assert_eq!(fmt_size(3 << 29), "1.5 GiB (1610612736 bytes)");
    }

    #[test]
    fn cpus() {
        assert_eq!(run(&["--cpus", "64"]).unwrap().cpus, 64);
        for bad in ["0", "65", "-1", "300"] {
            let err = run(&["--cpus", bad]).unwrap_err();
            assert!(
                matches!(&err, CliError::CpusOutOfRange { origin, cpus }
                    if *origin == flag("--cpus") && cpus.to_string() == bad),
                "{bad}: {err:?}"
            );
            assert!(error_line(&err).contains("1 to 64"));
        }
        assert!(matches!(run(&["--cpus", "two"]), Err(CliError::Usage(m)) if m.contains("--cpus")));
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            run(&["--timeout", "60"]).unwrap().timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            run(&["--timeout", "0.25"]).unwrap().timeout,
            Some(Duration::from_millis(250))
        );
        for bad in ["0", "-1", "NaN", "inf", "1e300", "1e-12"] {
            let err = run(&["--timeout", bad]).unwrap_err();
            assert!(
                matches!(err, CliError::BadTimeout { ref origin, .. } if *origin == flag("--timeout")),
                "{bad}: {err:?}"
            );
        }
        assert!(matches!(
            run(&["--timeout", "soon"]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn cmdline_limits() {
        let longest = "x".repeat(CMDLINE_MAX_LEN);
        assert_eq!(
            run(&["--cmdline", &longest]).unwrap().cmdline,
            Some(longest.clone())
        );
        let too_long = "x".repeat(CMDLINE_MAX_LEN + 1);
        let err = run(&["--cmdline", &too_long]).unwrap_err();
        assert!(matches!(
            err,
            CliError::CmdlineTooLong {
                len: 2048,
                max: 2047,
                ..
            }
        ));
        assert!(error_line(&err).contains("2048") && error_line(&err).contains("2047"));
        let args = run_args(|a| a.cmdline = Some("a\0b".into()));
        assert!(matches!(
            merge(&args, None, None),
            Err(CliError::CmdlineNul { offset: 1, .. })
        ));
        // A command line starting with a dash is a value, not a flag.
        assert_eq!(
            run(&["--cmdline", "-v"]).unwrap().cmdline,
            Some("-v".into())
        );
    }

    #[test]
    fn input_files() {
        let scratch = Scratch::new("inputs");
        let missing = scratch.0.join("nope");
        let err = run(&["--kernel", missing.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            &err,
            CliError::Unreadable { what: "kernel", path, source, .. }
                if *path == missing && source.kind() == io::ErrorKind::NotFound
        ));
        let line = error_line(&err);
        assert!(
            line.contains("nope") && line.contains("No such file"),
            "{line}"
        );

        let err = run(&["--initrd", scratch.0.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            &err,
            CliError::IsDirectory { what: "initrd", path, .. } if *path == scratch.0
        ));

        // Unreadable: only testable when not root (root can open mode 000 files).
        let locked = scratch.file("locked", "x");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&locked).is_err() {
            let err = run(&["--kernel", locked.to_str().unwrap()]).unwrap_err();
            assert!(matches!(
                &err,
                CliError::Unreadable { source, .. } if source.kind() == io::ErrorKind::PermissionDenied
            ));
        }
    }

    #[test]
    fn serial_log() {
        let scratch = Scratch::new("serial");
        let log = scratch.0.join("missing-dir").join("serial.log");
        let err = run(&["--serial-log", log.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, CliError::OutputDir { what: "serial log", path, .. } if *path == log)
        );
        let err = run(&["--serial-log", scratch.0.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            err,
            CliError::IsDirectory {
                what: "serial log",
                ..
            }
        ));
        let not_dir = scratch.file("plain", "");
        let err = run(&["--serial-log", not_dir.join("x.log").to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, CliError::OutputDir { .. }));
        // A bare file name is created in the current directory.
        assert_eq!(
            run(&["--serial-log", "serial.log"]).unwrap().serial,
            SerialOutput::File("serial.log".into())
        );
    }

    #[test]
    fn usage_errors_are_one_line() {
        for argv in [
            &["hvprobe"][..],
            &["hvprobe", "run", "--bogus"],
            &["hvprobe", "frobnicate"],
            &["hvprobe", "run", "--mem"],
            &["hvprobe", "run", "--cpus", "x"],
        ] {
            let err = parse_from(argv).unwrap_err();
            let CliError::Usage(message) = &err else {
                panic!("{argv:?}: {err:?}")
            };
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
            assert!(!message.starts_with("error"), "{message:?}");
        }
    }

    #[test]
    fn help_and_version_are_printed() {
        let Ok(Request::Print(help)) = parse_from(["hvprobe", "--help"]) else {
            panic!()
        };
        assert!(
            help.contains("run") && help.contains("Exit status"),
            "{help}"
        );
        let Ok(Request::Print(help)) = parse_from(["hvprobe", "run", "--help"]) else {
            panic!()
        };
        let default_cmdline = crate::config::DEFAULT_LINUX_CMDLINE;
        for word in [
            "--kernel",
            "--mem",
            "--serial-log",
            "--config",
            "512MiB",
            "serial_log",
            "--probe <LOCATION[:MODE[:FETCH,...]]>",
            "--hbreak <LOCATION>",
            "--watch <LOCATION:LEN:w|rw>",
            "--events <FILE>",
            "--format <text|jsonl>",
            "--mmiotrace <DEVICE|GPA:LEN[:w]>",
            "--trace <FILE>",
            "--trace-format <mmiotrace|jsonl|chrome|ctf>",
            "0x200000:4K:w",
            "trace_format",
            "int3",
            "add to the file's lists",
            default_cmdline,
        ] {
            assert!(help.contains(word), "{word}: {help}");
        }
        let Ok(Request::Print(version)) = parse_from(["hvprobe", "--version"]) else {
            panic!()
        };
        assert!(version.starts_with("hvprobe "), "{version}");
    }

    const FULL_TOML: &str = r#"
# every field
kernel = "vmlinux"
initrd = "sub/initrd.img"
cmdline = "console=ttyS0 nokaslr"
mem = "512M"
cpus = 2
timeout = 1.5
serial_log = "serial.log"
quiet = true
"#;

    #[test]
    fn config_file_round_trip() {
        let scratch = Scratch::new("roundtrip");
        let kernel = scratch.file("vmlinux", "k");
        std::fs::create_dir(scratch.0.join("sub")).unwrap();
        let initrd = scratch.file("sub/initrd.img", "i");
        let path = scratch.file("vm.toml", FULL_TOML);

        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.path, path);
        assert_eq!(
            file.kernel,
            Some(Setting {
                value: kernel.clone(),
                line: 3
            })
        );
        assert_eq!(file.cpus.as_ref().map(|s| (s.value, s.line)), Some((2, 7)));

        let config = run(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            config,
            VmConfig {
                kernel: KernelSource::File(kernel),
                initrd: Some(initrd),
                cmdline: Some("console=ttyS0 nokaslr".into()),
                steering: true,
                api_socket: None,
                mem_size: 512 << 20,
                cpus: 2,
                timeout: Some(Duration::from_millis(1500)),
                serial: SerialOutput::File(scratch.0.join("serial.log")),
                quiet: true,
                instrument: Instrumentation::default(),
                trace: TraceConfig::default(),
            }
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let scratch = Scratch::new("flags-win");
        scratch.file("vmlinux", "k");
        let other = scratch.file("bzImage", "k");
        let path = scratch.file(
            "vm.toml",
            "kernel = \"vmlinux\"\nmem = 268435456\ncpus = 2\ntimeout = 3\ncmdline = \"a\"\n",
        );
        let config = run(&[
            "--config",
            path.to_str().unwrap(),
            "--kernel",
            other.to_str().unwrap(),
            "--cpus",
            "3",
            "--cmdline",
            "b",
        ])
        .unwrap();
        assert_eq!(config.kernel, KernelSource::File(other));
        assert_eq!(config.cpus, 3);
        assert_eq!(config.cmdline.as_deref(), Some("b"));
        assert_eq!(config.mem_size, 256 << 20, "integer mem is bytes");
        assert_eq!(
            config.timeout,
            Some(Duration::from_secs(3)),
            "integer timeout"
        );
    }

    #[test]
    fn config_file_errors_name_file_line_and_field() {
        let scratch = Scratch::new("file-errors");
        let load = |name: &str, text: &str| {
            let path = scratch.file(name, text);
            (
                run(&["--config", path.to_str().unwrap()]).unwrap_err(),
                path,
            )
        };

        let (err, path) = load("unknown.toml", "cpus = 1\nmemory = \"1G\"\n");
        assert!(
            matches!(
                &err,
                CliError::ConfigFile(ConfigFileError::Parse { path: p, line: Some(2), message })
                    if *p == path && message.contains("`memory`")
            ),
            "{err:?}"
        );
        let line = error_line(&err);
        assert!(
            line.contains("unknown.toml:2") && line.contains("memory"),
            "{line}"
        );

        let (err, _) = load("type.toml", "\ncpus = \"four\"\n");
        assert!(
            matches!(
                &err,
                CliError::ConfigFile(ConfigFileError::Parse { line: Some(2), message, .. })
                    if message.contains("cpus")
            ),
            "{err:?}"
        );

        let (err, _) = load("syntax.toml", "mem = \n");
        assert!(matches!(
            err,
            CliError::ConfigFile(ConfigFileError::Parse { line: Some(1), .. })
        ));

        let (err, path) = load("badmem.toml", "# c\n\nmem = \"lots\"\n");
        assert!(
            matches!(
                &err,
                CliError::Mem {
                    origin: Origin::File { path: p, line: 3, field: "mem" },
                    source: SizeError::Invalid(_),
                } if *p == path
            ),
            "{err:?}"
        );
        assert!(error_line(&err).contains("badmem.toml:3: mem: bad memory size"));

        let (err, _) = load("cpus.toml", "cpus = 0\n");
        assert!(matches!(
            err,
            CliError::CpusOutOfRange {
                origin: Origin::File {
                    field: "cpus",
                    line: 1,
                    ..
                },
                cpus: 0
            }
        ));
        let (err, _) = load("timeout.toml", "timeout = -2\n");
        assert!(matches!(
            err,
            CliError::BadTimeout {
                origin: Origin::File {
                    field: "timeout",
                    ..
                },
                ..
            }
        ));
        let (err, _) = load("nul.toml", "cmdline = \"a\\u0000b\"\n");
        assert!(matches!(
            err,
            CliError::CmdlineNul {
                origin: Origin::File {
                    field: "cmdline",
                    ..
                },
                offset: 1
            }
        ));
        let (err, path) = load("kernel.toml", "kernel = \"missing-vmlinux\"\n");
        assert!(matches!(
            &err,
            CliError::Unreadable { origin: Origin::File { field: "kernel", .. }, path: p, .. }
                if *p == path.parent().unwrap().join("missing-vmlinux")
        ));

        let missing = scratch.0.join("absent.toml");
        let err = run(&["--config", missing.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            &err,
            CliError::ConfigFile(ConfigFileError::Read { path, source })
                if *path == missing && source.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn empty_config_file_means_defaults() {
        let scratch = Scratch::new("empty");
        let path = scratch.file("empty.toml", "# nothing\n");
        assert_eq!(
            run(&["--config", path.to_str().unwrap()]).unwrap(),
            VmConfig::default()
        );
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let test_kernel = ConfigFile::load(&dir.join("test-kernel.toml")).unwrap();
        assert!(
            test_kernel.kernel.is_none(),
            "the test kernel is the embedded one"
        );
        let config = merge(&RunArgs::default(), Some(&test_kernel), None).unwrap();
        assert_eq!(config.kernel, KernelSource::Embedded);
        assert!(config.timeout.is_some());

        let debian = ConfigFile::load(&dir.join("debian-kernel.toml")).unwrap();
        let kernel = debian.kernel.as_ref().unwrap();
        assert!(
            kernel.value.ends_with(".cache/debian-kernel/vmlinuz"),
            "{:?}",
            kernel.value
        );
        assert_eq!(
            debian.mem.as_ref().map(|m| parse_mem_size(&m.value)),
            Some(Ok(256 << 20))
        );
        assert_eq!(debian.timeout.as_ref().map(|t| t.value), Some(300.0));
        assert!(
            debian
                .initrd
                .as_ref()
                .is_some_and(|i| i.value.ends_with(".cache/initramfs/initramfs.cpio")),
            "the guest kit's initramfs"
        );
        // The kernel and the initramfs may not be made yet; everything else must check out.
        let args = run_args(|a| {
            a.kernel = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/cli.rs").into());
            a.initrd = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/cli.rs").into());
        });
        let config = merge(&args, Some(&debian), None).unwrap();
        assert_eq!(config.mem_size, 256 << 20);
        assert!(config.cmdline.as_deref().unwrap().contains("console=ttyS0"));
        assert!(
            config.instrument.is_empty(),
            "the examples are commented out"
        );
        assert!(config.trace.is_empty(), "the examples are commented out");

        // The commented instrumentation examples are valid once uncommented.
        for (name, expected) in [
            (
                "test-kernel.toml",
                "probes [tk_probe_target:jump-exit, tk_loop_body:jump:rdi,rsp, tk_leaf:int3] hbreaks [tk_probe_target]",
            ),
            (
                "debian-kernel.toml",
                "probes [memblock_add_range:int3] hbreaks [start_kernel] watches [jiffies:8:w]",
            ),
        ] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let uncommented: String = text
                .lines()
                .map(|line| {
                    let key = [
                        "probe",
                        "hbreak",
                        "watch",
                        "events",
                        "format",
                        "mmiotrace",
                        "trace",
                        "trace_format",
                    ]
                    .iter()
                    .find(|key| line.starts_with(&format!("# {key} = ")));
                    match key {
                        Some(_) => format!("{}\n", &line[2..]),
                        None => format!("{line}\n"),
                    }
                })
                .collect();
            let file = ConfigFile::parse(&uncommented, &dir.join(name)).unwrap();
            let config = merge(&args, Some(&file), None).unwrap();
            let i = &config.instrument;
            let list = |v: Vec<String>| format!("[{}]", v.join(", "));
            let mut summary = format!(
                "probes {} hbreaks {}",
                list(i.probes.iter().map(ToString::to_string).collect()),
                list(i.hbreaks.iter().map(ToString::to_string).collect()),
            );
            if !i.watches.is_empty() {
                let watches = list(i.watches.iter().map(ToString::to_string).collect());
                summary.push_str(&format!(" watches {watches}"));
            }
            assert_eq!(summary, expected, "{name}");
            assert_eq!(i.format, EventFormat::Jsonl, "{name}");
            assert!(i.events.is_some(), "{name}");
        }

        // So are the commented trace examples.
        for (name, targets, format) in [
            ("test-kernel.toml", "edu", TraceFormatChoice::Mmiotrace),
            ("debian-kernel.toml", "uart", TraceFormatChoice::Jsonl),
        ] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let uncommented: String = text
                .lines()
                .map(|line| {
                    let key = ["mmiotrace", "trace", "trace_format"]
                        .iter()
                        .find(|key| line.starts_with(&format!("# {key} = ")));
                    match key {
                        Some(_) => format!("{}\n", &line[2..]),
                        None => format!("{line}\n"),
                    }
                })
                .collect();
            let file = ConfigFile::parse(&uncommented, &dir.join(name)).unwrap();
            let config = merge(&args, Some(&file), None).unwrap();
            let t = &config.trace;
            let shown: Vec<_> = t.targets.iter().map(ToString::to_string).collect();
            assert_eq!(shown.join(" "), targets, "{name}");
            assert_eq!(t.format, format, "{name}");
            assert!(t.file.is_some(), "{name}");
        }
    }

    fn sym(name: &str, offset: u64) -> Location {
        Location::Symbol {
            name: name.into(),
            offset,
        }
    }

    #[test]
    fn instrumentation_flags() {
        let scratch = Scratch::new("instrument-flags");
        let events = scratch.0.join("events.jsonl");
        let config = run(&[
            "--probe",
            "start_kernel",
            "--probe",
            "foo.isra.0+0x10:int3",
            "--probe",
            "0xffffffff81000000:jump",
            "--hbreak",
            "start_kernel+4",
            "--watch",
            "jiffies:8:w",
            "--watch",
            "0x1000:4:rw",
            "--events",
            events.to_str().unwrap(),
            "--format",
            "jsonl",
        ])
        .unwrap();
        assert_eq!(
            config.instrument,
            Instrumentation {
                probes: vec![
                    ProbeSpec {
                        at: sym("start_kernel", 0),
                        mode: ProbeMode::Auto,
                        fetches: Vec::new(),
                    },
                    ProbeSpec {
                        at: sym("foo.isra.0", 16),
                        mode: ProbeMode::Int3,
                        fetches: Vec::new(),
                    },
                    ProbeSpec {
                        at: Location::Address(0xffff_ffff_8100_0000),
                        mode: ProbeMode::Jump,
                        fetches: Vec::new(),
                    },
                ],
                hbreaks: vec![sym("start_kernel", 4)],
                watches: vec![
                    WatchSpec {
                        at: sym("jiffies", 0),
                        len: 8,
                        write_only: true
                    },
                    WatchSpec {
                        at: Location::Address(0x1000),
                        len: 4,
                        write_only: false
                    },
                ],
                events: Some(events),
                format: EventFormat::Jsonl,
            }
        );
        assert!(run(&[]).unwrap().instrument.is_empty());
        // A bare file name is created in the current directory.
        assert_eq!(
            run(&["--events", "ev.txt"]).unwrap().instrument.events,
            Some("ev.txt".into())
        );
    }

    #[test]
    fn instrumentation_errors_name_the_flag_and_value() {
        for (argv, expected) in [
            (
                &["--watch", "jiffies:3:w"][..],
                "--watch jiffies:3:w: length must be 1, 2, 4 or 8",
            ),
            (
                &["--probe", "start_kernel:kprobe"],
                "--probe start_kernel:kprobe: probe mode must be auto, int3, jump, jump-exit or jump-call, not \"kprobe\"",
            ),
            (
                &["--hbreak", "start_kernel:int3"],
                "--hbreak start_kernel:int3: `start_kernel:int3` is not a symbol name: `:` is not allowed",
            ),
            (&["--probe", ""], "--probe \"\": empty location"),
            (
                &["--hbreak", "0xzz"],
                "--hbreak 0xzz: `0xzz` is not an address",
            ),
            (
                &["--watch", "jiffies"],
                "--watch jiffies: expected SYM[+OFF]|ADDR:LEN:w|rw",
            ),
            (
                &["--watch", "jiffies:4:r"],
                "--watch jiffies:4:r: x86 debug registers cannot watch reads alone",
            ),
            (
                &["--format", "json"],
                "--format json: event format must be text or jsonl",
            ),
        ] {
            let err = run(argv).unwrap_err();
            assert!(
                matches!(&err, CliError::BadSpec { origin: Origin::Flag(f), value, .. }
                    if *f == argv[0] && value == argv[1]),
                "{argv:?}: {err:?}"
            );
            let line = error_line(&err);
            assert!(line.starts_with(expected), "{argv:?}: {line}");
        }
        // The first bad value is reported, after any good ones.
        let err = run(&["--probe", "a", "--probe", "b c"]).unwrap_err();
        assert!(error_line(&err).starts_with("--probe \"b c\": "), "{err:?}");
    }

    #[test]
    fn events_file() {
        let scratch = Scratch::new("events");
        let events = scratch.0.join("missing-dir").join("ev.jsonl");
        let err = run(&["--events", events.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, CliError::OutputDir { what: "events file", path, origin, .. }
                if *path == events && *origin == flag("--events")),
            "{err:?}"
        );
        assert!(error_line(&err).starts_with("--events: cannot create events file"));
        let err = run(&["--events", scratch.0.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            err,
            CliError::IsDirectory {
                what: "events file",
                ..
            }
        ));
    }

    #[test]
    fn instrumentation_in_the_config_file() {
        let scratch = Scratch::new("instrument-file");
        std::fs::create_dir(scratch.0.join("out")).unwrap();
        let path = scratch.file(
            "vm.toml",
            "probe = [\"start_kernel\", \"0xffffffff81000000:int3\"]\nhbreak = [\"tk_leaf\"]\n\
             watch = [\"jiffies:8:rw\"]\nevents = \"out/events.jsonl\"\nformat = \"jsonl\"\n",
        );
        let path = path.to_str().unwrap();
        let config = run(&["--config", path]).unwrap();
        let i = &config.instrument;
        assert_eq!(
            i.probes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["start_kernel", "0xffffffff81000000:int3"]
        );
        assert_eq!(i.hbreaks, [sym("tk_leaf", 0)]);
        assert_eq!(i.watches.len(), 1);
        assert_eq!(i.events, Some(scratch.0.join("out/events.jsonl")));
        assert_eq!(i.format, EventFormat::Jsonl);

        // Flags add to the lists and win for events and format.
        let config = run(&[
            "--probe",
            "tk_main:jump",
            "--config",
            path,
            "--hbreak",
            "tk_main",
            "--format",
            "text",
            "--events",
            "other.txt",
        ])
        .unwrap();
        let i = &config.instrument;
        assert_eq!(
            i.probes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["start_kernel", "0xffffffff81000000:int3", "tk_main:jump"]
        );
        assert_eq!(i.hbreaks, [sym("tk_leaf", 0), sym("tk_main", 0)]);
        assert_eq!(i.watches.len(), 1);
        assert_eq!(i.events, Some("other.txt".into()));
        assert_eq!(i.format, EventFormat::Text);

        // Errors name the file, the line of the entry and the field.
        let bad = scratch.file(
            "bad.toml",
            "watch = [\n  \"jiffies:8:w\",\n  \"jiffies:3:w\",\n]\n",
        );
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(
                &err,
                CliError::BadSpec {
                    origin: Origin::File {
                        line: 3,
                        field: "watch",
                        ..
                    },
                    source: SpecError::BadWatchLen(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            error_line(&err)
                .ends_with("bad.toml:3: watch jiffies:3:w: length must be 1, 2, 4 or 8"),
            "{}",
            error_line(&err)
        );
        let bad = scratch.file("format.toml", "\nformat = \"yaml\"\n");
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(error_line(&err).contains("format.toml:2: format yaml: event format must be"));
        // ... unless a flag replaces it.
        let bad = bad.to_str().unwrap();
        assert!(run(&["--config", bad, "--format", "jsonl"]).is_ok());
        let bad = scratch.file("events.toml", "events = \"nodir/e.txt\"\n");
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            err,
            CliError::OutputDir {
                origin: Origin::File {
                    field: "events",
                    line: 1,
                    ..
                },
                ..
            }
        ));
    }

    fn ram(gpa: u64, len: u64, writes_only: bool) -> TraceTarget {
        TraceTarget::Ram {
            gpa,
            len,
            writes_only,
        }
    }

    #[test]
    fn trace_flags() {
        let scratch = Scratch::new("trace-flags");
        let out = scratch.0.join("t.txt");
        let config = run(&[
            "--mmiotrace",
            "edu",
            "--mmiotrace",
            "0x200000:4K:w",
            "--mmiotrace",
            "uart",
            "--mmiotrace",
            "1048576:0x2000",
            "--mmiotrace",
            "testdev",
            "--trace",
            out.to_str().unwrap(),
            "--trace-format",
            "chrome",
        ])
        .unwrap();
        assert_eq!(
            config.trace,
            TraceConfig {
                targets: vec![
                    TraceTarget::Device("edu".into()),
                    ram(0x20_0000, 4096, true),
                    TraceTarget::Device("uart".into()),
                    ram(0x10_0000, 0x2000, false),
                    TraceTarget::Device("testdev".into()),
                ],
                file: Some(out),
                format: TraceFormatChoice::Chrome,
            }
        );
        assert!(config.instrument.is_empty());
        assert!(run(&[]).unwrap().trace.is_empty());
        for (format, expected) in [
            ("mmiotrace", TraceFormatChoice::Mmiotrace),
            ("jsonl", TraceFormatChoice::Jsonl),
            ("chrome", TraceFormatChoice::Chrome),
        ] {
            let config = run(&["--mmiotrace", "edu", "--trace-format", format]).unwrap();
            assert_eq!(config.trace.format, expected);
            assert_eq!(config.trace.file, None, "stderr by default");
        }
        // --trace and --trace-format alone are accepted and trace nothing.
        let config = run(&["--trace", "t.txt", "--trace-format", "jsonl"]).unwrap();
        assert!(config.trace.is_empty());
        assert_eq!(config.trace.file, Some("t.txt".into()));
        assert_eq!(config.trace.format, TraceFormatChoice::Jsonl);
        // Duplicates are kept as given (the VM setup decides what they mean).
        let config = run(&["--mmiotrace", "edu", "--mmiotrace", "edu"]).unwrap();
        assert_eq!(config.trace.targets.len(), 2);
    }

    #[test]
    fn trace_errors_name_the_flag_and_value() {
        for (argv, expected) in [
            (
                &["--mmiotrace", "0x1000:0x800"][..],
                "--mmiotrace 0x1000:0x800: length must be a multiple of 4 KiB",
            ),
            (
                &["--mmiotrace", "0x1800:4K"],
                "--mmiotrace 0x1800:4K: address 0x1800 is not 4 KiB-aligned (use 0x1000)",
            ),
            (
                &["--mmiotrace", "0x1000:0"],
                "--mmiotrace 0x1000:0: length must not be zero",
            ),
            (
                &["--mmiotrace", "serial"],
                "--mmiotrace serial: unknown device `serial`: the devices are edu, uart, testdev",
            ),
            (
                &["--mmiotrace", "0x1000:4K:r"],
                "--mmiotrace 0x1000:4K:r: only `w` (trace writes only) may follow the length, \
                 not \"r\"",
            ),
            (
                &["--mmiotrace", "0x1000:4X"],
                "--mmiotrace 0x1000:4X: `4X` is not a length",
            ),
            (
                &["--mmiotrace", "0xg000:4K"],
                "--mmiotrace 0xg000:4K: `0xg000` is not an address",
            ),
            (
                &["--mmiotrace", "0x1000"],
                "--mmiotrace 0x1000: expected a device (edu, uart, testdev) or a guest RAM range",
            ),
            (&["--mmiotrace", ""], "--mmiotrace \"\": expected a device"),
            (
                &["--mmiotrace", "edu:w"],
                "--mmiotrace edu:w: a device takes no suffix",
            ),
            (
                &["--mmiotrace", "0xfffffffffffff000:8K"],
                "--mmiotrace 0xfffffffffffff000:8K: the range runs past the end",
            ),
            (
                &["--trace-format", "text"],
                "--trace-format text: trace format must be mmiotrace, jsonl, chrome or ctf",
            ),
        ] {
            let err = run(argv).unwrap_err();
            assert!(
                matches!(&err, CliError::BadSpec { origin: Origin::Flag(f), value, .. }
                    if *f == argv[0] && value == argv[1]),
                "{argv:?}: {err:?}"
            );
            let line = error_line(&err);
            assert!(line.starts_with(expected), "{argv:?}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // The first bad value is reported, after any good ones.
        let err = run(&[
            "--mmiotrace",
            "edu",
            "--mmiotrace",
            "0x1000:1K",
            "--mmiotrace",
            "x",
        ])
        .unwrap_err();
        assert!(
            error_line(&err).starts_with("--mmiotrace 0x1000:1K: "),
            "{err:?}"
        );
    }

    #[test]
    fn trace_file() {
        let scratch = Scratch::new("trace-file");
        let trace = scratch.0.join("missing-dir").join("t.txt");
        let err = run(&["--trace", trace.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, CliError::OutputDir { what: "trace file", path, origin, .. }
                if *path == trace && *origin == flag("--trace")),
            "{err:?}"
        );
        assert!(error_line(&err).starts_with("--trace: cannot create trace file"));
        let err = run(&["--trace", scratch.0.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            err,
            CliError::IsDirectory {
                what: "trace file",
                ..
            }
        ));
        let plain = scratch.file("plain", "");
        let err = run(&["--trace", plain.join("t.txt").to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, CliError::OutputDir { .. }));
        // An existing file is fine (it is truncated when the VM runs).
        assert_eq!(
            run(&["--trace", plain.to_str().unwrap()])
                .unwrap()
                .trace
                .file,
            Some(plain)
        );
    }

    #[test]
    fn trace_in_the_config_file() {
        let scratch = Scratch::new("trace-file-keys");
        std::fs::create_dir(scratch.0.join("out")).unwrap();
        let path = scratch.file(
            "vm.toml",
            "mmiotrace = [\"edu\", \"0x200000:4K:w\"]\ntrace = \"out/t.txt\"\n\
             trace_format = \"chrome\"\n",
        );
        let path = path.to_str().unwrap();
        let config = run(&["--config", path]).unwrap();
        assert_eq!(
            config.trace,
            TraceConfig {
                targets: vec![
                    TraceTarget::Device("edu".into()),
                    ram(0x20_0000, 4096, true)
                ],
                file: Some(scratch.0.join("out/t.txt")),
                format: TraceFormatChoice::Chrome,
            }
        );

        // Flags add to the list and win for the file and the format.
        let config = run(&[
            "--mmiotrace",
            "uart",
            "--config",
            path,
            "--trace",
            "other.jsonl",
            "--trace-format",
            "jsonl",
            "--mmiotrace",
            "0x0:8K",
        ])
        .unwrap();
        let t = &config.trace;
        assert_eq!(
            t.targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["edu", "0x200000:0x1000:w", "uart", "0x0:0x2000"]
        );
        assert_eq!(t.file, Some("other.jsonl".into()));
        assert_eq!(t.format, TraceFormatChoice::Jsonl);

        // Errors name the file, the line of the entry and the field.
        let bad = scratch.file(
            "bad.toml",
            "mmiotrace = [\n  \"edu\",\n  \"0x1000:0x800\",\n]\n",
        );
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(
                &err,
                CliError::BadSpec {
                    origin: Origin::File {
                        line: 3,
                        field: "mmiotrace",
                        ..
                    },
                    source: SpecError::UnalignedTraceLen(0x800),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            error_line(&err).ends_with(
                "bad.toml:3: mmiotrace 0x1000:0x800: length must be a multiple of 4 KiB"
            ),
            "{}",
            error_line(&err)
        );
        let bad = scratch.file("device.toml", "\n\nmmiotrace = [\"e1000\"]\n");
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            error_line(&err).contains("device.toml:3: mmiotrace e1000: unknown device `e1000`"),
            "{}",
            error_line(&err)
        );
        let bad = scratch.file("format.toml", "\ntrace_format = \"perfetto\"\n");
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            error_line(&err).contains("format.toml:2: trace_format perfetto: trace format must be"),
            "{}",
            error_line(&err)
        );
        // ... unless a flag replaces it.
        let bad = bad.to_str().unwrap();
        assert!(run(&["--config", bad, "--trace-format", "mmiotrace"]).is_ok());
        let bad = scratch.file("trace.toml", "trace = \"nodir/t.txt\"\n");
        let err = run(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(matches!(
            err,
            CliError::OutputDir {
                what: "trace file",
                origin: Origin::File {
                    field: "trace",
                    line: 1,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn meminfo_is_read() {
        let total = host_mem_total().expect("/proc/meminfo has MemTotal");
        assert!(total >= crate::layout::MIN_MEM_SIZE);
    }
}
