//! What a VM is made of: [`VmConfig`], built from the command line and an optional TOML file
//! (flags win over the file; see `cli` for the merge).

use std::path::{Path, PathBuf};
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
        }
    }
}

/// The most vCPUs a VM may have.
pub const MAX_CPUS: u8 = 64;

/// Guest RAM must be a multiple of this (the page size).
pub const MEM_ALIGN: u64 = 4096;

/// Why a memory size was rejected. Messages name the value, not the setting: the caller adds
/// which flag or config field it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size (use bytes or a K/M/G/T suffix: 268435456, 4096K, 256M, 1GiB)")]
    Empty,
    /// Not a number with an optional binary unit.
    #[error("`{0}` is not a size (use bytes or a K/M/G/T suffix: 268435456, 4096K, 256M, 1GiB)")]
    Invalid(String),
    /// The size is zero.
    #[error("the size must not be zero")]
    Zero,
    /// The size does not fit in 64 bits.
    #[error("`{0}` is too large (more than 2^64 bytes)")]
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

/// One setting read from a config file, with the line it was on (1-based), for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    /// The value as written (paths already resolved against the file's directory).
    pub value: T,
    /// The line of the value in the file.
    pub line: usize,
}

/// A TOML config file for `hvprobe run`, as written: the same settings as the flags
/// (`kernel`, `initrd`, `cmdline`, `mem`, `cpus`, `timeout`, `serial_log`, `quiet`), every one
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
}
