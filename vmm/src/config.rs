//! What a VM is made of: [`VmConfig`], built from the command line and an optional TOML file
//! (flags win over the file; see `cli` for the merge).

use std::path::PathBuf;
use std::time::Duration;

/// Where the kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// The test kernel embedded in the hvprobe binary (`hvprobe run` with no `--kernel`).
    Embedded,
    /// A kernel file on the host: ELF vmlinux, ELF test kernel or bzImage.
    File(PathBuf),
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
