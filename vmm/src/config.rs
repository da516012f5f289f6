//! What a VM is made of: [`VmConfig`], built from the command line and an optional TOML file
//! (flags win over the file; see `cli` for the merge).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where the kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// The test kernel embedded in the hvprobe binary (`hvprobe run` with no `--kernel`).
    Embedded,
    /// A kernel file on the host: ELF vmlinux, ELF test kernel or bzImage.
    File(PathBuf),
    /// A raw program (tests): `image` copied to `load_addr`, entered at `entry` in long mode.
    Raw {
        /// The bytes.
        image: Vec<u8>,
        /// Guest-physical load address.
        load_addr: u64,
        /// Guest-physical entry point.
        entry: u64,
    },
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// hvprobe's stdout.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Nowhere (tests that read the console through [`crate::vm::Vm`] instead).
    Sink,
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel to boot.
    pub kernel: KernelSource,
    /// Optional initrd (loaded high in RAM, its address passed in boot_params).
    pub initrd: Option<PathBuf>,
    /// Kernel command line. `None`: the default for the kernel kind
    /// ([`DEFAULT_LINUX_CMDLINE`] for Linux, empty for the embedded test kernel).
    pub cmdline: Option<String>,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs (at least 1).
    pub cpus: u8,
    /// Stop the VM after this long (exit status: timeout).
    pub timeout: Option<Duration>,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Silence boot phases and timings on stderr.
    pub quiet: bool,
    /// Serve the control API (JSON-RPC 2.0) on a Unix socket here (`--api-socket`).
    pub api_socket: Option<PathBuf>,
    /// On the software KVM only: add the Linux command-line words that steer the guest around
    /// what the platform cannot run or runs very slowly ([`crate::platform::steering`]).
    /// `--no-steering` / `steering = false` turns them off.
    pub steering: bool,
    /// Probes, hardware breakpoints and watchpoints to arm, and where their events go.
    pub instrument: Instrumentation,
    /// Devices and guest RAM ranges whose accesses are traced, and where the trace goes.
    pub trace: TraceConfig,
}

/// Default guest RAM: 256 MiB.
pub const DEFAULT_MEM_SIZE: u64 = 256 << 20;

/// Default Linux command line: serial console, no KASLR (so symbols need no slide), reboot at
/// once on panic (the VM then ends instead of hanging), and no features this VM lacks.
pub const DEFAULT_LINUX_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr panic=-1 reboot=k";

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: KernelSource::Embedded,
            initrd: None,
            cmdline: None,
            mem_size: DEFAULT_MEM_SIZE,
            cpus: 1,
            timeout: None,
            serial: SerialOutput::Stdout,
            quiet: false,
            steering: true,
            api_socket: None,
            instrument: Instrumentation::default(),
            trace: TraceConfig::default(),
        }
    }
}

impl VmConfig {
    /// The embedded test kernel with `cmdline` (its scenario, e.g. `hvtest=optloop`) on `cpus`
    /// vCPUs, console to a sink and no phase lines: what tests and benchmarks run.
    pub fn quiet_test_kernel(cmdline: &str, cpus: u8) -> VmConfig {
        VmConfig {
            kernel: KernelSource::Embedded,
            cmdline: Some(cmdline.to_string()),
            cpus,
            serial: SerialOutput::Sink,
            quiet: true,
            ..VmConfig::default()
        }
    }
}

/// The most vCPUs a VM may have.
pub const MAX_CPUS: u8 = 64;

/// Guest RAM must be a multiple of this (the page size).
pub const MEM_ALIGN: u64 = 4096;

/// `text` as a message shows it: control characters (a newline, an escape) written as escapes,
/// so that a message about a bad value stays one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Why a memory size was rejected. Messages name the value, not the setting: the caller adds
/// which flag or config field it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size (use bytes or a K/M/G/T suffix: 268435456, 4096K, 256M, 1GiB)")]
    Empty,
    /// Not a number with an optional binary unit.
    #[error("`{}` is not a size (use bytes or a K/M/G/T suffix: 268435456, 4096K, 256M, 1GiB)", one_line(.0))]
    Invalid(String),
    /// The size is zero.
    #[error("the size must not be zero")]
    Zero,
    /// The size does not fit in 64 bits.
    #[error("`{}` is too large (more than 2^64 bytes)", one_line(.0))]
    Overflow(String),
    /// The size is not a whole number of 4 KiB pages.
    #[error("{0} bytes is not a multiple of 4 KiB")]
    NotPageAligned(u64),
    /// The size is below [`MIN_MEM_SIZE`](crate::layout::MIN_MEM_SIZE).
    #[error("{} is below the minimum of {}", fmt_size(*.0), fmt_size(crate::layout::MIN_MEM_SIZE))]
    TooSmall(u64),
    /// The size is more than the host's RAM.
    #[error("{} is more than the host has: MemTotal in /proc/meminfo is {}", fmt_size(*.requested), fmt_size(*.host))]
    MoreThanHost {
        /// What was asked for, in bytes.
        requested: u64,
        /// The host's MemTotal, in bytes.
        host: u64,
    },
}

/// Parses a guest memory size: bytes (`268435456`) or a number with a binary unit
/// (`4096K`, `256M`, `512MiB`, `1G`, `1GiB`, `1T`; case-insensitive, K = 1024). The result is
/// non-zero, a multiple of 4 KiB and at least [`MIN_MEM_SIZE`](crate::layout::MIN_MEM_SIZE).
/// The host limit is checked separately ([`check_host_mem`]).
///
/// ```
/// use vmm::config::{parse_mem_size, SizeError};
/// assert_eq!(parse_mem_size("256M"), Ok(256 << 20));
/// assert_eq!(parse_mem_size("1GiB"), Ok(1 << 30));
/// assert_eq!(parse_mem_size("0"), Err(SizeError::Zero));
/// ```
pub fn parse_mem_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(SizeError::Invalid(trimmed.to_owned()));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(SizeError::Invalid(trimmed.to_owned())),
    };
    // Only digits remain, so the only way parsing fails is overflow.
    let count: u64 = number
        .parse()
        .map_err(|_| SizeError::Overflow(trimmed.to_owned()))?;
    let bytes = count
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(trimmed.to_owned()))?;
    if bytes == 0 {
        return Err(SizeError::Zero);
    }
    if bytes % MEM_ALIGN != 0 {
        return Err(SizeError::NotPageAligned(bytes));
    }
    if bytes < crate::layout::MIN_MEM_SIZE {
        return Err(SizeError::TooSmall(bytes));
    }
    Ok(bytes)
}

/// Checks a guest memory size against the host's RAM (`host`: see [`host_mem_total`]; `None`
/// when unknown, which passes).
pub fn check_host_mem(requested: u64, host: Option<u64>) -> Result<(), SizeError> {
    match host {
        Some(host) if requested > host => Err(SizeError::MoreThanHost { requested, host }),
        _ => Ok(()),
    }
}

/// The host's RAM in bytes (`MemTotal` in `/proc/meminfo`), or `None` if it cannot be read.
pub fn host_mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&meminfo)
}

fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Formats a byte count for messages: `256 MiB`, `1 GiB`, `23.5 GiB`, `4097 bytes`.
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{} {name}", bytes >> shift);
            }
            // Approximate: only for messages.
            let approx = bytes as f64 / unit as f64;
            return format!("{approx:.1} {name} ({bytes} bytes)");
        }
    }
    format!("{bytes} bytes")
}

/// What to instrument in the guest and where the events go (`--probe`, `--hbreak`, `--watch`,
/// `--events`, `--format`, or the same keys in the config file). Only syntax is checked here:
/// symbols are resolved, and addresses checked against the guest, when the VM is set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instrumentation {
    /// Software probes (`--probe SYM[+OFF]|ADDR[:int3|:jump|:auto]`), file entries first.
    pub probes: Vec<ProbeSpec>,
    /// Hardware execute breakpoints (`--hbreak SYM[+OFF]|ADDR`), file entries first.
    pub hbreaks: Vec<Location>,
    /// Hardware data watchpoints (`--watch SYM[+OFF]|ADDR:LEN:w|rw`), file entries first.
    pub watches: Vec<WatchSpec>,
    /// Where events are written (`--events FILE`, created or truncated). `None`: stderr.
    pub events: Option<PathBuf>,
    /// How events are written (`--format`).
    pub format: EventFormat,
}

impl Instrumentation {
    /// No probes, hardware breakpoints or watchpoints (`events` and `format` alone arm
    /// nothing, so they do not count).
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty() && self.hbreaks.is_empty() && self.watches.is_empty()
    }
}

/// A code or data location as the user wrote it: `SYM[+OFF]` or `ADDR`.
///
/// ```
/// use vmm::config::Location;
/// let at: Location = "foo.isra.0+0x10".parse().unwrap();
/// assert_eq!(at, Location::Symbol { name: "foo.isra.0".into(), offset: 16 });
/// assert_eq!(at.to_string(), "foo.isra.0+0x10");
/// assert_eq!("0xffffffff81000000".parse(), Ok(Location::Address(0xffff_ffff_8100_0000)));
/// assert_eq!("4096".parse::<Location>().unwrap().to_string(), "0x1000");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// A symbol of the guest kernel and a byte offset from its start (`SYM+OFF`; 0 if none).
    Symbol {
        /// The symbol's name (`[A-Za-z_.$][A-Za-z0-9_.$]*`).
        name: String,
        /// Bytes past the symbol's address.
        offset: u64,
    },
    /// A guest-virtual address.
    Address(u64),
}

/// How a software probe is armed (`:int3`, `:jump`, `:auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProbeMode {
    /// A jump with an in-guest handler where the probed instructions allow one, else int3
    /// (the default).
    #[default]
    Auto,
    /// Always an int3 breakpoint.
    Int3,
    /// A jump to a trampoline whose handler records the hit in the guest (no exit); refused
    /// where the code cannot take a jump.
    Jump,
    /// A jump to a trampoline whose handler is one doorbell exit (host handlers, full
    /// registers); refused where the code cannot take a jump.
    JumpExit,
    /// A jump to a trampoline that calls the guest module's handler (Linux with
    /// `hvprobe_guest.ko`): it records pid, comm and the string the one FETCH register
    /// points to, no exit; refused where the code cannot take a jump.
    JumpCall,
}

/// One `--probe`: where, how it is armed, and what an in-guest handler records.
///
/// ```
/// use vmm::config::{FetchSpec, Location, ProbeMode, ProbeSpec};
/// let spec: ProbeSpec = "start_kernel:int3".parse().unwrap();
/// assert_eq!(spec.mode, ProbeMode::Int3);
/// assert_eq!("start_kernel".parse::<ProbeSpec>().unwrap().mode, ProbeMode::Auto);
/// let spec: ProbeSpec = "tk_leaf:jump:rdi,@jiffies".parse().unwrap();
/// assert_eq!(spec.fetches[0], FetchSpec::Reg("rdi".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// The probed instruction.
    pub at: Location,
    /// How it is armed.
    pub mode: ProbeMode,
    /// What an in-guest handler records per hit (`:jump` / `:auto` only; empty: RSP, RDI,
    /// RSI, RDX, RCX, RAX).
    pub fetches: Vec<FetchSpec>,
}

/// A value an in-guest probe handler records: a register, or 8 bytes of guest memory at a
/// fixed address (a global variable, checked to be mapped when the probe is armed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FetchSpec {
    /// A general-purpose register (`rax`..`r15`) or `rflags`.
    Reg(String),
    /// `@SYM[+OFF]` or `@ADDR`.
    Mem(Location),
}

/// The most values a record holds.
pub const MAX_FETCHES: usize = 6;

/// One `--watch`: a naturally aligned range of 1, 2, 4 or 8 bytes.
///
/// ```
/// use vmm::config::WatchSpec;
/// let spec: WatchSpec = "jiffies:8:rw".parse().unwrap();
/// assert_eq!((spec.len, spec.write_only), (8, false));
/// assert_eq!(spec.to_string(), "jiffies:8:rw");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchSpec {
    /// The first byte watched.
    pub at: Location,
    /// How many bytes: 1, 2, 4 or 8.
    pub len: u8,
    /// `w`: only writes hit; `rw`: reads and writes hit (x86 cannot watch reads alone).
    pub write_only: bool,
}

/// How events are written (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EventFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Jsonl,
}

/// Why a `--probe`, `--hbreak`, `--watch` or `--format` value was rejected. Messages name the
/// bad part and what is expected; the caller adds the flag (or file, line and field) and the
/// whole value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Nothing where a location should be.
    #[error("empty location: expected SYM[+OFF] or ADDR")]
    Empty,
    /// Starts with a digit but is not a number.
    #[error(
        "`{}` is not an address: expected hex with 0x (0xffffffff81000000) or decimal digits",
        one_line(.0)
    )]
    BadAddress(String),
    /// An address or offset of more than 64 bits.
    #[error("`{}` does not fit in 64 bits", one_line(.0))]
    TooLarge(String),
    /// A symbol name with a character symbols cannot have.
    #[error(
        "`{}` is not a symbol name: `{}` is not allowed (symbols are letters, digits, \
         `_`, `.` and `$`, not starting with a digit)",
        one_line(.name),
        .bad.escape_debug()
    )]
    BadSymbol {
        /// The name as written.
        name: String,
        /// Its first bad character.
        bad: char,
    },
    /// `+OFF` with nothing before it.
    #[error("no symbol before `+`: expected SYM+OFF")]
    MissingSymbol,
    /// The text after `+` is not a number.
    #[error(
        "`+{}` is not an offset: expected hex with 0x (+0x10) or decimal digits (+16)",
        one_line(.0)
    )]
    BadOffset(String),
    /// `ADDR+OFF`: offsets are for symbols.
    #[error("an offset goes after a symbol (SYM+OFF): give the address itself")]
    OffsetOnAddress,
    /// A fetch list on a probe whose handler does not record in the guest.
    #[error(
        "values to record (:{}) need the in-guest handler: use :jump or :auto",
        one_line(.0)
    )]
    FetchesNeedJump(String),
    /// A `:jump-call` argument that is not one register (other than rsp).
    #[error(
        "a jump-call probe takes one register whose value is its string argument (rax..r15 \
         but rsp), not {:?}",
        one_line(.0)
    )]
    BadCallArg(String),
    /// A fetch that is neither a register nor `@LOCATION`.
    #[error("{0:?} is not a register (rax..r15, rsp, rflags) or @SYMBOL / @ADDRESS")]
    BadFetch(String),
    /// More values than a record holds.
    #[error("at most 6 values per record, not {0}")]
    TooManyFetches(usize),
    /// The suffix of a probe is not a mode.
    #[error("probe mode must be auto, int3, jump, jump-exit or jump-call, not {0:?}")]
    BadProbeMode(String),
    /// A watch without both `:LEN` and `:MODE`.
    #[error("expected SYM[+OFF]|ADDR:LEN:w|rw (e.g. jiffies:8:w)")]
    WatchSyntax,
    /// A watch length other than 1, 2, 4 or 8.
    #[error("length must be 1, 2, 4 or 8")]
    BadWatchLen(String),
    /// A watch access other than `w` or `rw`.
    #[error("access must be w (writes) or rw (reads and writes), not {0:?}")]
    BadWatchAccess(String),
    /// `:r`: the debug registers cannot watch reads alone.
    #[error(
        "x86 debug registers cannot watch reads alone: use rw (reads and writes) or w (writes)"
    )]
    ReadOnlyWatch,
    /// A watched address that is not a multiple of the length.
    #[error(
        "address {addr:#x} is not aligned to the length {len}: debug registers watch naturally \
         aligned ranges (use {:#x})", addr & !(u64::from(*len) - 1)
    )]
    MisalignedWatch {
        /// The address.
        addr: u64,
        /// The length.
        len: u8,
    },
    /// An event format other than `text` or `jsonl`.
    #[error("event format must be text or jsonl")]
    BadFormat(String),
    /// A trace target that is neither a device name nor `GPA:LEN[:w]` (empty, or an address
    /// without a length).
    #[error(
        "expected a device ({}) or a guest RAM range GPA:LEN[:w] (e.g. 0x200000:4K:w)",
        TRACE_DEVICES.join(", ")
    )]
    TraceSyntax,
    /// A trace target name that is not one of [`TRACE_DEVICES`].
    #[error(
        "unknown device `{}`: the devices are {devices} (or give a guest RAM range GPA:LEN[:w])",
        one_line(.0),
        devices = TRACE_DEVICES.join(", ")
    )]
    UnknownDevice(String),
    /// `DEVICE:...`: devices take no suffix.
    #[error("a device takes no suffix: `:w` (writes only) is for guest RAM ranges; give `{0}`")]
    DeviceSuffix(String),
    /// The length of a traced RAM range is not a number with an optional K/M/G suffix.
    #[error(
        "`{}` is not a length: expected hex with 0x (0x1000), decimal digits (4096), or a K, M \
         or G suffix (4K, 2M)",
        one_line(.0)
    )]
    BadTraceLen(String),
    /// A traced RAM range of zero bytes.
    #[error("length must not be zero")]
    ZeroTraceLen,
    /// A traced RAM range whose length is not a whole number of pages.
    #[error("length must be a multiple of 4 KiB")]
    UnalignedTraceLen(u64),
    /// A traced RAM range that does not start on a page boundary.
    #[error(
        "address {0:#x} is not 4 KiB-aligned (use {aligned:#x})",
        aligned = .0 & !(TRACE_ALIGN - 1)
    )]
    UnalignedTraceGpa(u64),
    /// A traced RAM range that runs past the top of the 64-bit address space.
    #[error("the range runs past the end of the 64-bit address space")]
    TraceRangeWraps,
    /// Something other than `w` after `GPA:LEN:`.
    #[error("only `w` (trace writes only) may follow the length, not {0:?}")]
    BadTraceAccess(String),
    /// A trace format other than `mmiotrace`, `jsonl`, `chrome` or `ctf`.
    #[error("trace format must be mmiotrace, jsonl, chrome or ctf")]
    BadTraceFormat(String),
}

/// `0x` hex (`0X` too) or decimal digits, nothing else (no sign, no spaces).
fn parse_number(text: &str) -> Option<Result<u64, SpecError>> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Only digits remain, so the only way parsing fails is overflow.
    Some(u64::from_str_radix(digits, radix).map_err(|_| SpecError::TooLarge(text.to_owned())))
}

fn is_symbol_start(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '$')
}

fn is_symbol_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$')
}

impl FromStr for Location {
    type Err = SpecError;

    /// `SYM[+OFF]` or `ADDR`: ADDR and OFF are `0x` hex or decimal; SYM is
    /// `[A-Za-z_.$][A-Za-z0-9_.$]*`.
    fn from_str(text: &str) -> Result<Location, SpecError> {
        let Some(first) = text.chars().next() else {
            return Err(SpecError::Empty);
        };
        if first.is_ascii_digit() {
            if text.contains('+') {
                return Err(SpecError::OffsetOnAddress);
            }
            return parse_number(text)
                .unwrap_or_else(|| Err(SpecError::BadAddress(text.to_owned())))
                .map(Location::Address);
        }
        let (name, offset) = match text.split_once('+') {
            Some((name, offset)) => (name, Some(offset)),
            None => (text, None),
        };
        if name.is_empty() {
            return Err(SpecError::MissingSymbol);
        }
        let bad = name.chars().enumerate().find(|&(i, c)| {
            if i == 0 {
                !is_symbol_start(c)
            } else {
                !is_symbol_char(c)
            }
        });
        if let Some((_, bad)) = bad {
            return Err(SpecError::BadSymbol {
                name: name.to_owned(),
                bad,
            });
        }
        let offset = match offset {
            None => 0,
            Some(offset) => parse_number(offset)
                .unwrap_or_else(|| Err(SpecError::BadOffset(offset.to_owned())))?,
        };
        Ok(Location::Symbol {
            name: name.to_owned(),
            offset,
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Symbol { name, offset: 0 } => f.write_str(name),
            Location::Symbol { name, offset } => write!(f, "{name}+{offset:#x}"),
            Location::Address(addr) => write!(f, "{addr:#x}"),
        }
    }
}

impl FromStr for ProbeMode {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<ProbeMode, SpecError> {
        match text {
            "auto" => Ok(ProbeMode::Auto),
            "int3" => Ok(ProbeMode::Int3),
            "jump" => Ok(ProbeMode::Jump),
            "jump-exit" => Ok(ProbeMode::JumpExit),
            "jump-call" => Ok(ProbeMode::JumpCall),
            other => Err(SpecError::BadProbeMode(other.to_owned())),
        }
    }
}

impl fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeMode::Auto => "auto",
            ProbeMode::Int3 => "int3",
            ProbeMode::Jump => "jump",
            ProbeMode::JumpExit => "jump-exit",
            ProbeMode::JumpCall => "jump-call",
        })
    }
}

impl FromStr for ProbeSpec {
    type Err = SpecError;

    /// `LOCATION[:MODE[:FETCH,...]]` (symbols have no `:`).
    fn from_str(text: &str) -> Result<ProbeSpec, SpecError> {
        let mut parts = text.splitn(3, ':');
        let at = parts.next().unwrap_or_default();
        let mode = match parts.next() {
            Some(m) => m.parse()?,
            None => ProbeMode::Auto,
        };
        let fetches = match parts.next() {
            None => Vec::new(),
            Some(list) => {
                if !matches!(
                    mode,
                    ProbeMode::Jump | ProbeMode::Auto | ProbeMode::JumpCall
                ) {
                    return Err(SpecError::FetchesNeedJump(list.to_owned()));
                }
                if mode == ProbeMode::JumpCall
                    && (list == "rsp" || disasm::Gpr::from_name(list).is_none())
                {
                    return Err(SpecError::BadCallArg(list.to_owned()));
                }
                let fetches = list
                    .split(',')
                    .map(|f| match f.strip_prefix('@') {
                        Some(loc) => loc.parse().map(FetchSpec::Mem),
                        None if f == "rflags" || disasm::Gpr::from_name(f).is_some() => {
                            Ok(FetchSpec::Reg(f.to_owned()))
                        }
                        None => Err(SpecError::BadFetch(f.to_owned())),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if fetches.len() > MAX_FETCHES {
                    return Err(SpecError::TooManyFetches(fetches.len()));
                }
                fetches
            }
        };
        Ok(ProbeSpec {
            at: at.parse()?,
            mode,
            fetches,
        })
    }
}

impl fmt::Display for ProbeSpec {
    /// The location, then `:MODE` (nothing for the default, auto, without fetches), then
    /// `:FETCH,...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode, self.fetches.is_empty()) {
            (ProbeMode::Auto, true) => write!(f, "{}", self.at)?,
            (mode, _) => write!(f, "{}:{mode}", self.at)?,
        }
        for (i, fetch) in self.fetches.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            match fetch {
                FetchSpec::Reg(r) => f.write_str(r)?,
                FetchSpec::Mem(loc) => write!(f, "@{loc}")?,
            }
        }
        Ok(())
    }
}

impl FromStr for WatchSpec {
    type Err = SpecError;

    /// `LOCATION:LEN:w|rw`; a literal address must be a multiple of LEN.
    fn from_str(text: &str) -> Result<WatchSpec, SpecError> {
        let mut parts = text.rsplitn(3, ':');
        let (Some(access), Some(len), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SpecError::WatchSyntax);
        };
        let at: Location = at.parse()?;
        let len = match len {
            "1" => 1,
            "2" => 2,
            "4" => 4,
            "8" => 8,
            other => return Err(SpecError::BadWatchLen(other.to_owned())),
        };
        let write_only = match access {
            "w" => true,
            "rw" => false,
            "r" => return Err(SpecError::ReadOnlyWatch),
            other => return Err(SpecError::BadWatchAccess(other.to_owned())),
        };
        if let Location::Address(addr) = at {
            if addr % u64::from(len) != 0 {
                return Err(SpecError::MisalignedWatch { addr, len });
            }
        }
        Ok(WatchSpec {
            at,
            len,
            write_only,
        })
    }
}

impl fmt::Display for WatchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = if self.write_only { "w" } else { "rw" };
        write!(f, "{}:{}:{access}", self.at, self.len)
    }
}

impl FromStr for EventFormat {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<EventFormat, SpecError> {
        match text {
            "text" => Ok(EventFormat::Text),
            "jsonl" => Ok(EventFormat::Jsonl),
            other => Err(SpecError::BadFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for EventFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventFormat::Text => "text",
            EventFormat::Jsonl => "jsonl",
        })
    }
}

/// The emulated devices `--mmiotrace` knows by name: `edu` (the PCI device's memory BAR),
/// `uart` (COM1's ports 0x3f8-0x3ff) and `testdev` (the test device's ports and MMIO page).
pub const TRACE_DEVICES: [&str; 3] = ["edu", "uart", "testdev"];

/// Traced guest RAM ranges start and end on this boundary (the page size).
pub const TRACE_ALIGN: u64 = 4096;

/// What accesses to trace and where the trace goes (`--mmiotrace`, `--trace`,
/// `--trace-format`, or the keys `mmiotrace`, `trace`, `trace_format` in the config file).
/// Only syntax is checked here: ranges are checked against the guest when the VM is set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// What to trace (`--mmiotrace DEVICE|GPA:LEN[:w]`), file entries first, then the flags'.
    pub targets: Vec<TraceTarget>,
    /// Where the trace is written (`--trace FILE`, created or truncated). `None`: stderr.
    pub file: Option<PathBuf>,
    /// How the trace is written (`--trace-format`).
    pub format: TraceFormatChoice,
}

impl TraceConfig {
    /// Nothing is traced (a file or format alone traces nothing, so they do not count).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// One `--mmiotrace`: an emulated device, or a range of guest RAM.
///
/// ```
/// use vmm::config::TraceTarget;
/// assert_eq!("edu".parse(), Ok(TraceTarget::Device("edu".into())));
/// let ram: TraceTarget = "0x200000:4K:w".parse().unwrap();
/// assert_eq!(ram, TraceTarget::Ram { gpa: 0x20_0000, len: 4096, writes_only: true });
/// assert_eq!(ram.to_string(), "0x200000:0x1000:w");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TraceTarget {
    /// A named emulated device, one of [`TRACE_DEVICES`]: every access to it is traced at
    /// the bus (MMIO and port I/O).
    Device(String),
    /// A guest RAM range (`GPA:LEN[:w]`), both 4 KiB-aligned: taken out of KVM's memory
    /// slots so every access exits and is traced.
    Ram {
        /// Guest-physical address of the first byte.
        gpa: u64,
        /// Length in bytes (non-zero, a multiple of 4 KiB).
        len: u64,
        /// `:w`: only writes are traced (reads run at native speed).
        writes_only: bool,
    },
}

/// How the trace is written (`--trace-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TraceFormatChoice {
    /// The kernel's mmiotrace text (the default).
    #[default]
    Mmiotrace,
    /// One JSON object per line.
    Jsonl,
    /// Chrome's Trace Event Format (JSON; pid = VM, tid = vCPU): accesses and probe hits on
    /// one timeline.
    Chrome,
    /// CTF 1.8, a directory (`--trace DIR`) with a TSDL `metadata` file and a binary stream:
    /// every event kind, for high rates (read with `babeltrace2 DIR`).
    Ctf,
}

/// A length: `0x` hex or decimal, optionally with a binary unit (K, M, G, KiB, MiB, GiB;
/// case-insensitive).
fn parse_trace_len(text: &str) -> Result<u64, SpecError> {
    const UNITS: [(&str, u32); 6] = [
        ("kib", 10),
        ("mib", 20),
        ("gib", 30),
        ("k", 10),
        ("m", 20),
        ("g", 30),
    ];
    let lower = text.to_ascii_lowercase();
    let (digits, shift) = UNITS
        .iter()
        .find_map(|&(unit, shift)| {
            lower
                .strip_suffix(unit)
                .map(|rest| (&text[..rest.len()], shift))
        })
        .unwrap_or((text, 0));
    let count = parse_number(digits)
        .unwrap_or_else(|| Err(SpecError::BadTraceLen(text.to_owned())))
        .map_err(|err| match err {
            SpecError::TooLarge(_) => SpecError::TooLarge(text.to_owned()),
            other => other,
        })?;
    count
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SpecError::TooLarge(text.to_owned()))
}

impl FromStr for TraceTarget {
    type Err = SpecError;

    /// `DEVICE` (one of [`TRACE_DEVICES`]) or `GPA:LEN[:w]`.
    fn from_str(text: &str) -> Result<TraceTarget, SpecError> {
        let (head, rest) = match text.split_once(':') {
            Some((head, rest)) => (head, Some(rest)),
            None => (text, None),
        };
        if TRACE_DEVICES.contains(&head) {
            return match rest {
                None => Ok(TraceTarget::Device(head.to_owned())),
                Some(_) => Err(SpecError::DeviceSuffix(head.to_owned())),
            };
        }
        let Some(rest) = rest else {
            return match head.chars().next() {
                None => Err(SpecError::TraceSyntax),
                Some(c) if c.is_ascii_digit() => Err(SpecError::TraceSyntax),
                Some(_) => Err(SpecError::UnknownDevice(head.to_owned())),
            };
        };
        let (len, access) = match rest.split_once(':') {
            Some((len, access)) => (len, Some(access)),
            None => (rest, None),
        };
        if head.is_empty() {
            return Err(SpecError::TraceSyntax);
        }
        let gpa =
            parse_number(head).unwrap_or_else(|| Err(SpecError::BadAddress(head.to_owned())))?;
        let len = parse_trace_len(len)?;
        let writes_only = match access {
            None => false,
            Some("w") => true,
            Some(other) => return Err(SpecError::BadTraceAccess(other.to_owned())),
        };
        if len == 0 {
            return Err(SpecError::ZeroTraceLen);
        }
        if len % TRACE_ALIGN != 0 {
            return Err(SpecError::UnalignedTraceLen(len));
        }
        if gpa % TRACE_ALIGN != 0 {
            return Err(SpecError::UnalignedTraceGpa(gpa));
        }
        if gpa.checked_add(len - 1).is_none() {
            return Err(SpecError::TraceRangeWraps);
        }
        Ok(TraceTarget::Ram {
            gpa,
            len,
            writes_only,
        })
    }
}

impl fmt::Display for TraceTarget {
    /// The device name, or `GPA:LEN[:w]` in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceTarget::Device(name) => f.write_str(name),
            TraceTarget::Ram {
                gpa,
                len,
                writes_only,
            } => {
                write!(f, "{gpa:#x}:{len:#x}")?;
                if *writes_only {
                    f.write_str(":w")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for TraceFormatChoice {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<TraceFormatChoice, SpecError> {
        match text {
            "mmiotrace" => Ok(TraceFormatChoice::Mmiotrace),
            "jsonl" => Ok(TraceFormatChoice::Jsonl),
            "chrome" => Ok(TraceFormatChoice::Chrome),
            "ctf" => Ok(TraceFormatChoice::Ctf),
            other => Err(SpecError::BadTraceFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for TraceFormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormatChoice::Mmiotrace => "mmiotrace",
            TraceFormatChoice::Jsonl => "jsonl",
            TraceFormatChoice::Chrome => "chrome",
            TraceFormatChoice::Ctf => "ctf",
        })
    }
}

/// One setting read from a config file, with the line it was on (1-based), for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    /// The value as written (paths already resolved against the file's directory).
    pub value: T,
    /// The line of the value in the file.
    pub line: usize,
}

/// A TOML config file for `hvprobe run`, as written: the same settings as the flags
/// (`kernel`, `initrd`, `cmdline`, `mem`, `cpus`, `timeout`, `serial_log`, `quiet`, `probe`,
/// `hbreak`, `watch`, `events`, `format`, `mmiotrace`, `trace`, `trace_format`), every one
/// optional. Values are checked when merged with the flags (`cli`), so errors can name the
/// file, the line and the field; unknown keys and type errors are rejected here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// The file it was read from.
    pub path: PathBuf,
    /// `kernel`: path to the kernel, resolved against the file's directory.
    pub kernel: Option<Setting<PathBuf>>,
    /// `initrd`: path to the initrd, resolved against the file's directory.
    pub initrd: Option<Setting<PathBuf>>,
    /// `cmdline`: the kernel command line.
    pub cmdline: Option<Setting<String>>,
    /// `mem`: guest RAM as written, a string (`"256M"`) or an integer (bytes), unparsed.
    pub mem: Option<Setting<String>>,
    /// `cpus`: number of vCPUs, unchecked.
    pub cpus: Option<Setting<i64>>,
    /// `timeout`: seconds, unchecked.
    pub timeout: Option<Setting<f64>>,
    /// `serial_log`: file for the serial console, resolved against the file's directory.
    pub serial_log: Option<Setting<PathBuf>>,
    /// `quiet`: silence boot phases on stderr.
    pub quiet: Option<Setting<bool>>,
    /// `steering`: the software-KVM command-line steering for Linux guests (default true).
    pub steering: Option<Setting<bool>>,
    /// `api_socket`: the control API's Unix socket, resolved against the file's directory.
    pub api_socket: Option<Setting<PathBuf>>,
    /// `probe`: software probes as written (`"SYM[+OFF]|ADDR[:MODE]"`), each with its line;
    /// empty if absent.
    pub probe: Vec<Setting<String>>,
    /// `hbreak`: hardware execute breakpoints as written, each with its line.
    pub hbreak: Vec<Setting<String>>,
    /// `watch`: hardware watchpoints as written (`"SYM|ADDR:LEN:w|rw"`), each with its line.
    pub watch: Vec<Setting<String>>,
    /// `events`: file for the events, resolved against the file's directory.
    pub events: Option<Setting<PathBuf>>,
    /// `format`: event format as written (`text` or `jsonl`), unchecked.
    pub format: Option<Setting<String>>,
    /// `mmiotrace`: trace targets as written (`"DEVICE"` or `"GPA:LEN[:w]"`), each with its
    /// line; empty if absent.
    pub mmiotrace: Vec<Setting<String>>,
    /// `trace`: file for the trace, resolved against the file's directory.
    pub trace: Option<Setting<PathBuf>>,
    /// `trace_format`: trace format as written (`mmiotrace`, `jsonl` or `chrome`), unchecked.
    pub trace_format: Option<Setting<String>>,
}

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{}{}: {message}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the error (1-based), when TOML reports where.
        line: Option<usize>,
        /// TOML's message on one line, with the key named when TOML does not.
        message: String,
    },
}

/// A memory size as written in TOML: a string or an integer.
struct MemValue(String);

impl<'de> serde::Deserialize<'de> for MemValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MemValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"256M\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MemValue, E> {
                Ok(MemValue(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MemValue, E> {
                Ok(MemValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MemValue, E> {
                Ok(MemValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The file as serde sees it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigFile {
    kernel: Option<toml::Spanned<PathBuf>>,
    initrd: Option<toml::Spanned<PathBuf>>,
    cmdline: Option<toml::Spanned<String>>,
    mem: Option<toml::Spanned<MemValue>>,
    cpus: Option<toml::Spanned<i64>>,
    timeout: Option<toml::Spanned<f64>>,
    serial_log: Option<toml::Spanned<PathBuf>>,
    quiet: Option<toml::Spanned<bool>>,
    steering: Option<toml::Spanned<bool>>,
    api_socket: Option<toml::Spanned<PathBuf>>,
    #[serde(default)]
    probe: Vec<toml::Spanned<String>>,
    #[serde(default)]
    hbreak: Vec<toml::Spanned<String>>,
    #[serde(default)]
    watch: Vec<toml::Spanned<String>>,
    events: Option<toml::Spanned<PathBuf>>,
    format: Option<toml::Spanned<String>>,
    #[serde(default)]
    mmiotrace: Vec<toml::Spanned<String>>,
    trace: Option<toml::Spanned<PathBuf>>,
    trace_format: Option<toml::Spanned<String>>,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        ConfigFile::parse(&text, path)
    }

    /// Parses config text that was read from `path` (relative paths in it are resolved
    /// against `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let raw: RawConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            let mut message = e.message().trim().replace('\n', "; ");
            if let Some(key) = e.span().and_then(|span| key_at(text, span.start)) {
                if !message.contains(&format!("`{key}`")) {
                    message = format!("{key}: {message}");
                }
            }
            ConfigFileError::Parse {
                path: path.to_owned(),
                line,
                message,
            }
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let path_setting = |spanned: toml::Spanned<PathBuf>| {
            let Setting { value, line } = setting(text, spanned);
            Setting {
                value: dir.join(value),
                line,
            }
        };
        Ok(ConfigFile {
            path: path.to_owned(),
            kernel: raw.kernel.map(path_setting),
            initrd: raw.initrd.map(path_setting),
            cmdline: raw.cmdline.map(|s| setting(text, s)),
            mem: raw.mem.map(|s| {
                let Setting { value, line } = setting(text, s);
                Setting {
                    value: value.0,
                    line,
                }
            }),
            cpus: raw.cpus.map(|s| setting(text, s)),
            timeout: raw.timeout.map(|s| setting(text, s)),
            serial_log: raw.serial_log.map(path_setting),
            quiet: raw.quiet.map(|s| setting(text, s)),
            steering: raw.steering.map(|s| setting(text, s)),
            api_socket: raw.api_socket.map(path_setting),
            probe: raw.probe.into_iter().map(|s| setting(text, s)).collect(),
            hbreak: raw.hbreak.into_iter().map(|s| setting(text, s)).collect(),
            watch: raw.watch.into_iter().map(|s| setting(text, s)).collect(),
            events: raw.events.map(path_setting),
            format: raw.format.map(|s| setting(text, s)),
            mmiotrace: raw
                .mmiotrace
                .into_iter()
                .map(|s| setting(text, s))
                .collect(),
            trace: raw.trace.map(path_setting),
            trace_format: raw.trace_format.map(|s| setting(text, s)),
        })
    }
}

/// A spanned TOML value as a [`Setting`].
fn setting<T>(text: &str, spanned: toml::Spanned<T>) -> Setting<T> {
    let line = line_of(text, spanned.span().start);
    Setting {
        value: spanned.into_inner(),
        line,
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key of a `key = value` line containing `offset`, if the line looks like one.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let end = offset.min(text.len());
    let start = text[..end].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    is_key.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with control characters is escaped in messages, which stay one line (a fuzzer
    /// find: `"\no"` as a location printed a newline).
    #[test]
    fn messages_about_bad_values_stay_one_line() {
        for err in [
            "\0\n\u{1b}x".parse::<Location>().unwrap_err(),
            "a\n+1".parse::<Location>().unwrap_err(),
            "a+1\n".parse::<Location>().unwrap_err(),
            "1\n".parse::<Location>().unwrap_err(),
            "a:int3:\n".parse::<ProbeSpec>().unwrap_err(),
            "ed\nu".parse::<TraceTarget>().unwrap_err(),
            "0x1000:4\nK".parse::<TraceTarget>().unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(!text.contains(['\n', '\u{1b}', '\0']), "{text}");
            assert!(text.contains("\\n") || text.contains("\\u{1b}"), "{text}");
        }
        assert_eq!(
            "\0\n".parse::<Location>().unwrap_err().to_string(),
            "`\\0\\n` is not a symbol name: `\\0` is not allowed (symbols are letters, digits, \
             `_`, `.` and `$`, not starting with a digit)"
        );
        let size = parse_mem_size("1\n2M").unwrap_err().to_string();
        assert!(size.starts_with("`1\\n2M` is not a size"), "{size}");
    }

    #[test]
    fn meminfo_total() {
        let meminfo = "MemFree:  1 kB\nMemTotal:       24683880 kB\nSwapTotal: 0 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(24_683_880 * 1024));
        assert_eq!(parse_meminfo_total("MemTotal: 5 MB\n"), None);
        assert_eq!(parse_meminfo_total("MemFree: 5 kB\n"), None);
    }

    #[test]
    fn sizes_format_for_messages() {
        assert_eq!(fmt_size(256 << 20), "256 MiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
        assert_eq!(fmt_size(4097), "4.0 KiB (4097 bytes)");
        assert_eq!(fmt_size(100), "100 bytes");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let file = ConfigFile::parse(
            "kernel = \"k\"\ninitrd = \"/abs/i\"\nserial_log = \"../log\"\n",
            Path::new("/etc/hv/vm.toml"),
        )
        .unwrap();
        let value = |s: &Option<Setting<PathBuf>>| s.as_ref().unwrap().value.clone();
        assert_eq!(value(&file.kernel), PathBuf::from("/etc/hv/k"));
        assert_eq!(value(&file.initrd), PathBuf::from("/abs/i"));
        assert_eq!(value(&file.serial_log), PathBuf::from("/etc/hv/../log"));
        let bare = ConfigFile::parse("kernel = \"k\"\n", Path::new("vm.toml")).unwrap();
        assert_eq!(value(&bare.kernel), PathBuf::from("./k"));
    }

    #[test]
    fn mem_accepts_strings_and_integers_only() {
        let path = Path::new("m.toml");
        let mem = |text| ConfigFile::parse(text, path).map(|f| f.mem.unwrap().value);
        assert_eq!(mem("mem = \"1G\"").unwrap(), "1G");
        assert_eq!(mem("mem = 16777216").unwrap(), "16777216");
        assert!(matches!(
            mem("mem = 1.5"),
            Err(ConfigFileError::Parse { line: Some(1), .. })
        ));
    }

    fn sym(name: &str, offset: u64) -> Location {
        Location::Symbol {
            name: name.into(),
            offset,
        }
    }

    #[test]
    fn locations() {
        for (text, at, shown) in [
            ("start_kernel", sym("start_kernel", 0), "start_kernel"),
            ("foo.cold", sym("foo.cold", 0), "foo.cold"),
            (
                "foo.isra.0+0x1f",
                sym("foo.isra.0", 0x1f),
                "foo.isra.0+0x1f",
            ),
            ("_text+16", sym("_text", 16), "_text+0x10"),
            ("$x", sym("$x", 0), "$x"),
            (".LC0+0", sym(".LC0", 0), ".LC0"),
            (
                "__x64_sys_read+0X8",
                sym("__x64_sys_read", 8),
                "__x64_sys_read+0x8",
            ),
            (
                "0xffffffff81000000",
                Location::Address(0xffff_ffff_8100_0000),
                "0xffffffff81000000",
            ),
            ("0XABCdef", Location::Address(0xabcdef), "0xabcdef"),
            ("4096", Location::Address(4096), "0x1000"),
            ("0", Location::Address(0), "0x0"),
            (
                "0xffffffffffffffff",
                Location::Address(u64::MAX),
                "0xffffffffffffffff",
            ),
        ] {
            assert_eq!(text.parse::<Location>(), Ok(at.clone()), "{text}");
            assert_eq!(at.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<Location>(), Ok(at), "{text} round trip");
        }
        for (text, err) in [
            ("", SpecError::Empty),
            ("0x", SpecError::BadAddress("0x".into())),
            ("0xfg", SpecError::BadAddress("0xfg".into())),
            ("12ab", SpecError::BadAddress("12ab".into())),
            ("1foo", SpecError::BadAddress("1foo".into())),
            ("0x 10", SpecError::BadAddress("0x 10".into())),
            ("0x1_000", SpecError::BadAddress("0x1_000".into())),
            (
                "0x10000000000000000",
                SpecError::TooLarge("0x10000000000000000".into()),
            ),
            (
                "99999999999999999999",
                SpecError::TooLarge("99999999999999999999".into()),
            ),
            ("0x1000+8", SpecError::OffsetOnAddress),
            ("+8", SpecError::MissingSymbol),
            ("foo+", SpecError::BadOffset("".into())),
            ("foo+x", SpecError::BadOffset("x".into())),
            ("foo+-1", SpecError::BadOffset("-1".into())),
            ("foo++1", SpecError::BadOffset("+1".into())),
            ("foo+1+2", SpecError::BadOffset("1+2".into())),
            (
                "foo+0x10000000000000000",
                SpecError::TooLarge("0x10000000000000000".into()),
            ),
            (
                "foo-bar",
                SpecError::BadSymbol {
                    name: "foo-bar".into(),
                    bad: '-',
                },
            ),
            (
                "foo:int3",
                SpecError::BadSymbol {
                    name: "foo:int3".into(),
                    bad: ':',
                },
            ),
            (
                " foo",
                SpecError::BadSymbol {
                    name: " foo".into(),
                    bad: ' ',
                },
            ),
            (
                "-1",
                SpecError::BadSymbol {
                    name: "-1".into(),
                    bad: '-',
                },
            ),
            (
                "füß",
                SpecError::BadSymbol {
                    name: "füß".into(),
                    bad: 'ü',
                },
            ),
        ] {
            assert_eq!(text.parse::<Location>(), Err(err), "{text:?}");
        }
        let message = "foo-bar".parse::<Location>().unwrap_err().to_string();
        assert!(message.contains("`-` is not allowed"), "{message}");
    }

    #[test]
    fn probes() {
        for (text, at, mode, shown) in [
            (
                "start_kernel",
                sym("start_kernel", 0),
                ProbeMode::Auto,
                "start_kernel",
            ),
            (
                "start_kernel:auto",
                sym("start_kernel", 0),
                ProbeMode::Auto,
                "start_kernel",
            ),
            ("f+4:int3", sym("f", 4), ProbeMode::Int3, "f+0x4:int3"),
            (
                "0xffffffff81000000:jump",
                Location::Address(0xffff_ffff_8100_0000),
                ProbeMode::Jump,
                "0xffffffff81000000:jump",
            ),
            (
                "f+5:jump-call",
                sym("f", 5),
                ProbeMode::JumpCall,
                "f+0x5:jump-call",
            ),
        ] {
            let spec = ProbeSpec {
                at,
                mode,
                fetches: Vec::new(),
            };
            assert_eq!(text.parse::<ProbeSpec>(), Ok(spec.clone()), "{text}");
            assert_eq!(spec.to_string(), shown);
            assert_eq!(shown.parse::<ProbeSpec>(), Ok(spec));
        }
        for (text, err) in [
            ("f:", SpecError::BadProbeMode("".into())),
            ("f:INT3", SpecError::BadProbeMode("INT3".into())),
            ("f:kprobe", SpecError::BadProbeMode("kprobe".into())),
            ("f:int3:rdi", SpecError::FetchesNeedJump("rdi".into())),
            (
                "f:jump-call:rdi,rsi",
                SpecError::BadCallArg("rdi,rsi".into()),
            ),
            ("f:jump-call:rsp", SpecError::BadCallArg("rsp".into())),
            (
                "f:jump-call:@jiffies",
                SpecError::BadCallArg("@jiffies".into()),
            ),
            ("f:jump:rdi,xmm0", SpecError::BadFetch("xmm0".into())),
            (
                "f:jump:rax,rbx,rcx,rdx,rsi,rdi,rsp",
                SpecError::TooManyFetches(7),
            ),
            ("f:jump:@", SpecError::Empty),
            (":int3", SpecError::Empty),
            ("", SpecError::Empty),
        ] {
            assert_eq!(text.parse::<ProbeSpec>(), Err(err), "{text:?}");
        }
        let message = "f:kprobe".parse::<ProbeSpec>().unwrap_err().to_string();
        assert!(
            message.contains("auto, int3, jump, jump-exit or jump-call"),
            "{message}"
        );
    }

    #[test]
    fn watches() {
        for (text, at, len, write_only) in [
            ("jiffies:8:rw", sym("jiffies", 0), 8, false),
            ("jiffies+4:4:w", sym("jiffies", 4), 4, true),
            ("x.y+1:2:w", sym("x.y", 1), 2, true),
            ("0x1001:1:w", Location::Address(0x1001), 1, true),
            ("0x1002:2:rw", Location::Address(0x1002), 2, false),
            ("4096:8:w", Location::Address(4096), 8, true),
        ] {
            let spec = WatchSpec {
                at,
                len,
                write_only,
            };
            assert_eq!(text.parse::<WatchSpec>(), Ok(spec.clone()), "{text}");
            assert_eq!(spec.to_string().parse::<WatchSpec>(), Ok(spec));
        }
        for (text, err) in [
            ("jiffies", SpecError::WatchSyntax),
            ("jiffies:8", SpecError::WatchSyntax),
            ("", SpecError::WatchSyntax),
            ("::", SpecError::Empty),
            ("jiffies:3:w", SpecError::BadWatchLen("3".into())),
            ("jiffies:16:w", SpecError::BadWatchLen("16".into())),
            ("jiffies:0x8:w", SpecError::BadWatchLen("0x8".into())),
            ("jiffies::w", SpecError::BadWatchLen("".into())),
            ("jiffies:8:", SpecError::BadWatchAccess("".into())),
            ("jiffies:8:x", SpecError::BadWatchAccess("x".into())),
            ("jiffies:8:W", SpecError::BadWatchAccess("W".into())),
            ("jiffies:8:r", SpecError::ReadOnlyWatch),
            (
                "a:b:8:w",
                SpecError::BadSymbol {
                    name: "a:b".into(),
                    bad: ':',
                },
            ),
            (
                "0x1004:8:w",
                SpecError::MisalignedWatch {
                    addr: 0x1004,
                    len: 8,
                },
            ),
            (
                "0x1001:2:rw",
                SpecError::MisalignedWatch {
                    addr: 0x1001,
                    len: 2,
                },
            ),
        ] {
            assert_eq!(text.parse::<WatchSpec>(), Err(err), "{text:?}");
        }
        assert_eq!(
            SpecError::BadWatchLen("3".into()).to_string(),
            "length must be 1, 2, 4 or 8"
        );
        let message = SpecError::MisalignedWatch {
            addr: 0x1006,
            len: 4,
        }
        .to_string();
        assert!(
            message.contains("0x1006") && message.contains("use 0x1004"),
            "{message}"
        );
    }

    #[test]
    fn event_formats() {
        assert_eq!("text".parse(), Ok(EventFormat::Text));
        assert_eq!("jsonl".parse(), Ok(EventFormat::Jsonl));
        assert_eq!(EventFormat::default(), EventFormat::Text);
        for f in [EventFormat::Text, EventFormat::Jsonl] {
            assert_eq!(f.to_string().parse(), Ok(f));
        }
        for bad in ["json", "JSONL", "", "xml"] {
            assert_eq!(
                bad.parse::<EventFormat>(),
                Err(SpecError::BadFormat(bad.into()))
            );
        }
    }

    #[test]
    fn instrumentation_is_empty() {
        let mut i = Instrumentation::default();
        assert!(i.is_empty());
        assert_eq!(i.format, EventFormat::Text);
        assert_eq!(i.events, None);
        i.events = Some("e.jsonl".into());
        assert!(i.is_empty(), "an events file alone arms nothing");
        i.hbreaks.push(sym("start_kernel", 0));
        assert!(!i.is_empty());
    }

    #[test]
    fn instrumentation_keys() {
        let file = ConfigFile::parse(
            "probe = [\"a\",\n  \"0x1000:int3\"]\nhbreak = []\nwatch = [\"j:8:w\"]\n\
             events = \"ev/e.jsonl\"\nformat = \"xml\"\n",
            Path::new("/etc/hv/vm.toml"),
        )
        .unwrap();
        let lines = |v: &[Setting<String>]| {
            v.iter()
                .map(|s| (s.value.clone(), s.line))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(&file.probe),
            [("a".to_owned(), 1), ("0x1000:int3".to_owned(), 2)]
        );
        assert!(file.hbreak.is_empty());
        assert_eq!(lines(&file.watch), [("j:8:w".to_owned(), 4)]);
        assert_eq!(
            file.events,
            Some(Setting {
                value: PathBuf::from("/etc/hv/ev/e.jsonl"),
                line: 5
            })
        );
        assert_eq!(
            file.format.map(|f| f.value),
            Some("xml".into()),
            "checked later"
        );
        for bad in [
            "probe = \"start_kernel\"",
            "watch = [1]",
            "format = 1",
            "probes = []",
        ] {
            assert!(
                matches!(
                    ConfigFile::parse(bad, Path::new("x.toml")),
                    Err(ConfigFileError::Parse { line: Some(1), .. })
                ),
                "{bad}"
            );
        }
    }

    fn ram(gpa: u64, len: u64, writes_only: bool) -> TraceTarget {
        TraceTarget::Ram {
            gpa,
            len,
            writes_only,
        }
    }

    #[test]
    fn trace_targets() {
        for (text, target, shown) in [
            ("edu", TraceTarget::Device("edu".into()), "edu"),
            ("uart", TraceTarget::Device("uart".into()), "uart"),
            ("testdev", TraceTarget::Device("testdev".into()), "testdev"),
            (
                "0x200000:4K:w",
                ram(0x20_0000, 4096, true),
                "0x200000:0x1000:w",
            ),
            (
                "0x200000:4k",
                ram(0x20_0000, 4096, false),
                "0x200000:0x1000",
            ),
            ("0x1000:0x1000", ram(0x1000, 0x1000, false), "0x1000:0x1000"),
            ("4096:8192", ram(4096, 8192, false), "0x1000:0x2000"),
            ("0:2M", ram(0, 2 << 20, false), "0x0:0x200000"),
            (
                "0X100000:1MiB:w",
                ram(0x10_0000, 1 << 20, true),
                "0x100000:0x100000:w",
            ),
            (
                "0x40000000:1G",
                ram(1 << 30, 1 << 30, false),
                "0x40000000:0x40000000",
            ),
            ("0x8000:8kib", ram(0x8000, 8192, false), "0x8000:0x2000"),
            (
                "0xfffffffffffff000:4K",
                ram(0xffff_ffff_ffff_f000, 4096, false),
                "0xfffffffffffff000:0x1000",
            ),
        ] {
            assert_eq!(text.parse::<TraceTarget>(), Ok(target.clone()), "{text}");
            assert_eq!(target.to_string(), shown, "{text}");
            assert_eq!(
                shown.parse::<TraceTarget>(),
                Ok(target),
                "{text} round trip"
            );
        }
        for (text, err) in [
            ("", SpecError::TraceSyntax),
            ("0x1000", SpecError::TraceSyntax),
            (":4K", SpecError::TraceSyntax),
            ("serial", SpecError::UnknownDevice("serial".into())),
            ("EDU", SpecError::UnknownDevice("EDU".into())),
            ("edu ", SpecError::UnknownDevice("edu ".into())),
            ("edu:w", SpecError::DeviceSuffix("edu".into())),
            ("uart:0x1000", SpecError::DeviceSuffix("uart".into())),
            ("foo:4K", SpecError::BadAddress("foo".into())),
            ("0xzz:4K", SpecError::BadAddress("0xzz".into())),
            ("0x1000:", SpecError::BadTraceLen("".into())),
            ("0x1000:K", SpecError::BadTraceLen("K".into())),
            ("0x1000:4KB", SpecError::BadTraceLen("4KB".into())),
            ("0x1000:-4K", SpecError::BadTraceLen("-4K".into())),
            ("0x1000:4T", SpecError::BadTraceLen("4T".into())),
            ("0x1000:1.5M", SpecError::BadTraceLen("1.5M".into())),
            (
                "0x10000000000000000:4K",
                SpecError::TooLarge("0x10000000000000000".into()),
            ),
            (
                "0x1000:99999999999999999999",
                SpecError::TooLarge("99999999999999999999".into()),
            ),
            (
                "0x1000:0x10000000000000000K",
                SpecError::TooLarge("0x10000000000000000K".into()),
            ),
            (
                "0x1000:17179869184G",
                SpecError::TooLarge("17179869184G".into()),
            ),
            ("0x1000:0", SpecError::ZeroTraceLen),
            ("0x1000:0K", SpecError::ZeroTraceLen),
            ("0x1000:0x800", SpecError::UnalignedTraceLen(0x800)),
            ("0x8000:0x2K", SpecError::UnalignedTraceLen(0x800)),
            ("0x1000:4097", SpecError::UnalignedTraceLen(4097)),
            ("0x1800:4K", SpecError::UnalignedTraceGpa(0x1800)),
            ("0x1000:4K:r", SpecError::BadTraceAccess("r".into())),
            ("0x1000:4K:rw", SpecError::BadTraceAccess("rw".into())),
            ("0x1000:4K:W", SpecError::BadTraceAccess("W".into())),
            ("0x1000:4K:", SpecError::BadTraceAccess("".into())),
            ("0x1000:4K:w:w", SpecError::BadTraceAccess("w:w".into())),
            ("0xfffffffffffff000:8K", SpecError::TraceRangeWraps),
        ] {
            assert_eq!(text.parse::<TraceTarget>(), Err(err), "{text:?}");
        }
        assert_eq!(
            SpecError::UnalignedTraceLen(0x800).to_string(),
            "length must be a multiple of 4 KiB"
        );
        let message = SpecError::UnknownDevice("serial".into()).to_string();
        assert!(message.contains("edu, uart, testdev"), "{message}");
        let message = SpecError::UnalignedTraceGpa(0x1800).to_string();
        assert!(
            message.contains("0x1800") && message.contains("use 0x1000"),
            "{message}"
        );
    }

    #[test]
    fn trace_formats() {
        assert_eq!(TraceFormatChoice::default(), TraceFormatChoice::Mmiotrace);
        for (text, format) in [
            ("mmiotrace", TraceFormatChoice::Mmiotrace),
            ("jsonl", TraceFormatChoice::Jsonl),
            ("chrome", TraceFormatChoice::Chrome),
        ] {
            assert_eq!(text.parse(), Ok(format));
            assert_eq!(format.to_string(), text);
        }
        for bad in ["text", "json", "Chrome", "", "mmio"] {
            assert_eq!(
                bad.parse::<TraceFormatChoice>(),
                Err(SpecError::BadTraceFormat(bad.into()))
            );
        }
        assert_eq!(
            SpecError::BadTraceFormat("x".into()).to_string(),
            "trace format must be mmiotrace, jsonl, chrome or ctf"
        );
    }

    #[test]
    fn trace_config_is_empty() {
        let mut t = TraceConfig::default();
        assert!(t.is_empty());
        assert_eq!(t.file, None);
        assert_eq!(t.format, TraceFormatChoice::Mmiotrace);
        t.file = Some("t.txt".into());
        t.format = TraceFormatChoice::Chrome;
        assert!(t.is_empty(), "a trace file alone traces nothing");
        t.targets.push(TraceTarget::Device("edu".into()));
        assert!(!t.is_empty());
        assert!(VmConfig::default().trace.is_empty());
    }

    #[test]
    fn trace_keys() {
        let file = ConfigFile::parse(
            "mmiotrace = [\"edu\",\n  \"0x200000:4K:w\"]\ntrace = \"out/t.txt\"\n\
             trace_format = \"yaml\"\n",
            Path::new("/etc/hv/vm.toml"),
        )
        .unwrap();
        let lines = file
            .mmiotrace
            .iter()
            .map(|s| (s.value.as_str(), s.line))
            .collect::<Vec<_>>();
        assert_eq!(lines, [("edu", 1), ("0x200000:4K:w", 2)]);
        assert_eq!(
            file.trace,
            Some(Setting {
                value: PathBuf::from("/etc/hv/out/t.txt"),
                line: 3
            })
        );
        assert_eq!(
            file.trace_format.map(|f| (f.value, f.line)),
            Some(("yaml".into(), 4)),
            "checked later"
        );
        let empty = ConfigFile::parse("", Path::new("x.toml")).unwrap();
        assert!(empty.mmiotrace.is_empty() && empty.trace.is_none());
        for bad in [
            "mmiotrace = \"edu\"",
            "mmiotrace = [1]",
            "trace = 1",
            "trace_format = [\"chrome\"]",
            "trace-format = \"chrome\"",
            "mmio_trace = []",
        ] {
            assert!(
                matches!(
                    ConfigFile::parse(bad, Path::new("x.toml")),
                    Err(ConfigFileError::Parse { line: Some(1), .. })
                ),
                "{bad}"
            );
        }
    }
}
