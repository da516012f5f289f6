//! A VM: KVM objects, guest memory, devices and vCPU threads, from [`VmConfig`] to an
//! [`Outcome`].
//!
//! [`Vm::new`] does the boot path (memory, kernel, boot structures, devices, vCPU setup);
//! [`Vm::start`] spawns the vCPU threads; [`Vm::wait`] waits for the end; [`Vm::pause_all`]
//! and [`Vm::resume_all`] stop and restart every vCPU (returning only when all are out of
//! KVM_RUN), which introspection builds on.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError, cpu::CpuidMask, params::BootParamsInput};
use crate::config::{DEFAULT_LINUX_CMDLINE, KernelSource, SerialOutput, VmConfig};
use crate::devices::edu;
use crate::devices::legacy::I8042;
use crate::devices::pci::{PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_PORTS_LEN, PciBus};
use crate::devices::serial::{COM1_IRQ, COM1_PORT, ConsoleCapture, ConsoleSink, SerialDevice};
use crate::devices::test_device::{
    Point, TEST_DEVICE_MMIO_LEN, TEST_DEVICE_PORT, TEST_DEVICE_PORT_LEN, TestDevice,
};
use crate::layout::TEST_DEVICE_MMIO_BASE;
use crate::loader::{self, KernelFormat, LoadError, LoadedKernel};
use crate::memory::{Gpa, GuestMem, MemoryError};
use crate::outcome::Outcome;
use crate::phases::Phases;
use crate::vcpu::{DebugHook, VcpuError, VcpuEvent, VcpuHandle, VcpuMsg, VcpuRunner, kick};

/// Identity-map and TSS pages Intel VT-x needs below 4 GiB (unused on AMD).
const TSS_ADDRESS: usize = 0xfffb_d000;
pub use crate::vcpu::PAUSE_TIMEOUT;

pub use crate::devices::IoDevices;

/// Turns guest RAM pages into device pages while the VM runs ([`Vm::ram_control`]).
#[derive(Clone)]
pub struct RamControl {
    slots: Arc<Mutex<crate::memslots::Memslots>>,
    vm_fd: Arc<VmFd>,
    io: Arc<IoDevices>,
}

impl RamControl {
    /// Carves `[start, start+len)` out of the memory slots (all of it, or only its writes
    /// with [`crate::memslots::TraceMode::WritesOnly`]) and maps `device` over it on the MMIO
    /// bus. It does not pause the vCPUs: callers pause them ([`Vm::trace_ram`]) or carve a
    /// page the guest does not touch yet (the probe doorbell, before any trampoline that
    /// writes it exists). `what` names the user in errors.
    pub fn carve(
        &self,
        start: u64,
        len: u64,
        mode: crate::memslots::TraceMode,
        device: crate::devices::bus::SharedDevice,
        what: &'static str,
    ) -> Result<(), VmError> {
        let dev_err = |e: &dyn std::fmt::Display| VmError::Device {
            what,
            reason: e.to_string(),
        };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .add(start, len, mode)
            .map_err(|e| VmError::Config(e.to_string()))?;
        let result = self
            .io
            .mmio
            .insert(start, len, device)
            .map_err(|e| dev_err(&e))
            .and_then(|()| slots.apply(&self.vm_fd).map_err(|e| dev_err(&e)));
        if result.is_err() {
            let _ = slots.remove(start);
            let _ = self.io.mmio.remove(start);
            let _ = slots.apply(&self.vm_fd);
        }
        result
    }

    /// Gives a range [`RamControl::carve`]d at `start` back to guest RAM (the guest module
    /// releases its arena, whose pages the guest kernel frees next).
    pub fn uncarve(&self, start: u64, what: &'static str) -> Result<(), VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .remove(start)
            .map_err(|e| VmError::Config(e.to_string()))?;
        let _ = self.io.mmio.remove(start);
        slots.apply(&self.vm_fd).map_err(|e| VmError::Device {
            what,
            reason: e.to_string(),
        })
    }
}

/// Errors of building and running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device cannot be opened.
    #[error("Cannot open {path}: {reason}")]
    KvmUnavailable {
        /// The device path.
        path: String,
        /// Why, with what to do.
        reason: String,
    },
    /// A KVM ioctl failed.
    #[error("KVM refused {what}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A kernel or initrd file could not be read.
    #[error("Cannot read {what} {path}: {reason}")]
    ReadFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The kernel could not be loaded.
    #[error("Cannot load kernel {path}")]
    Kernel {
        /// The path (or "embedded test kernel").
        path: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// The initrd could not be loaded.
    #[error("Cannot load initrd {path}")]
    Initrd {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// Boot structures or vCPU setup.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A device could not be set up.
    #[error("Cannot set up {what}: {reason}")]
    Device {
        /// The device.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// vCPU control.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A vCPU failed for hvprobe's reasons.
    #[error("vCPU {vcpu} failed: {reason}")]
    VcpuFailed {
        /// The vCPU.
        vcpu: u8,
        /// Why.
        reason: String,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

impl VmError {
    /// Whether the user's input (arguments, files) is at fault (exit status 64) rather than
    /// hvprobe or the host (70).
    pub fn is_bad_input(&self) -> bool {
        match self {
            VmError::Memory(_)
            | VmError::ReadFile { .. }
            | VmError::Kernel { .. }
            | VmError::Initrd { .. }
            | VmError::Config(_) => true,
            VmError::Boot(b) => matches!(
                b,
                BootError::CmdlineTooLong { .. }
                    | BootError::CmdlineNul
                    | BootError::TooManyCpus(_)
            ),
            _ => false,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What [`run`] reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How the VM ended.
    pub outcome: Outcome,
    /// Wall time from VM creation to the end.
    pub elapsed: Duration,
    /// Test device points reached.
    pub points: Vec<Point>,
    /// Test device marker lines (MARK), in order.
    pub marks: Vec<String>,
}

enum VcpuSlot {
    Ready(VcpuFd),
    Started(VcpuHandle),
    Taken,
}

/// A VM built from a [`VmConfig`].
pub struct Vm {
    // Field order matters for drop: vCPU threads end (Drop) before the VM fd and memory go.
    vcpus: Vec<VcpuSlot>,
    io: Arc<IoDevices>,
    events_tx: Sender<VcpuEvent>,
    events_rx: Receiver<VcpuEvent>,
    hook: Option<Arc<dyn DebugHook>>,
    /// What Linux needs at run time on the software KVM (none elsewhere).
    accommodation: Option<Arc<crate::platform::accommodation::Accommodation>>,
    serial: Arc<Mutex<SerialDevice>>,
    console: ConsoleCapture,
    test_device: Arc<Mutex<TestDevice>>,
    /// The guest module's device (`devices::kmod`): the introspection layer's side.
    kmod: crate::devices::kmod::KmodHandle,
    kernel: LoadedKernel,
    memslots: Arc<Mutex<crate::memslots::Memslots>>,
    phases: Phases,
    mem: GuestMem,
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
}

/// Ends a run from another thread (a control API client's `vm.stop`): [`Vm::wait`] returns
/// [`Outcome::StoppedByClient`].
#[derive(Clone)]
pub struct Stopper {
    events: Sender<VcpuEvent>,
}

impl Stopper {
    /// Asks [`Vm::wait`] to end the run.
    pub fn stop_by_client(&self) {
        let _ = self.events.send(VcpuEvent::Ended(Outcome::StoppedByClient));
    }
}

/// The KVM device hvprobe opens: `/dev/kvm`, or `$HVPROBE_KVM_DEVICE` (tests use it to check
/// the error for a missing or inaccessible device).
pub fn kvm_device() -> std::path::PathBuf {
    std::env::var_os("HVPROBE_KVM_DEVICE").map_or_else(|| "/dev/kvm".into(), Into::into)
}

/// Opens the KVM device with an error that says what to do.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let path = kvm_device();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::KvmUnavailable {
            path: path.display().to_string(),
            reason: "the path contains a NUL byte".into(),
        }
    })?;
    Kvm::new_with_path(&c_path).map_err(|e| VmError::KvmUnavailable {
        path: path.display().to_string(),
        reason: match e.errno() {
            libc::ENOENT => {
                "no such device: load the kvm module (kvm_intel or kvm_amd) or run on a host with virtualization enabled"
                    .into()
            }
            libc::EACCES | libc::EPERM => "permission denied: run as root or add your user to the kvm group".into(),
            _ => e.to_string(),
        },
    })
}

impl Vm {
    /// Builds a VM ready to start: memory, kernel, boot structures, devices and vCPUs.
    pub fn new(config: &VmConfig, hook: Option<Arc<dyn DebugHook>>) -> Result<Vm, VmError> {
        let phases = Phases::new(config.quiet);
        if config.cpus == 0 {
            return Err(VmError::Config(
                "The VM needs at least one vCPU (--cpus 1 or more)".into(),
            ));
        }
        let kvm = open_kvm()?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = GuestMem::new(config.mem_size)?;
        let mut memslots = crate::memslots::Memslots::new(&mem);
        memslots.apply(&vm_fd).map_err(|e| VmError::Device {
            what: "guest memory slots",
            reason: e.to_string(),
        })?;
        vm_fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        // Bad input fails here, before any phase line, so the user sees exactly one line.
        let (kernel, is_linux, loaded) = load_kernel(&mem, config)?;
        phases.log(format_args!(
            "vm: created, {} MiB RAM, {} vCPU(s)",
            mem.size() >> 20,
            config.cpus
        ));
        phases.log(loaded);
        let mut cmdline = match (&config.cmdline, is_linux) {
            (Some(c), _) => c.clone(),
            (None, true) => DEFAULT_LINUX_CMDLINE.to_string(),
            (None, false) => String::new(),
        };
        if is_linux && config.steering && crate::platform::is_software_kvm() {
            let steered = crate::platform::steering::steer_linux_cmdline(&cmdline);
            if let Some(note) = crate::platform::steering::note(&steered) {
                phases.log(format_args!("note: {note}"));
            }
            cmdline = steered.cmdline;
        }
        let initrd = match &config.initrd {
            Some(path) => Some(load_initrd(&mem, path, &kernel, &phases)?),
            None => None,
        };
        boot::gdt::write_gdt(&mem)?;
        let cr3 = boot::paging::write_identity_map(&mem)?;
        let cmdline_len = boot::params::write_cmdline(&mem, &cmdline)?;
        let input = BootParamsInput {
            setup_header: kernel.setup_header,
            initrd,
            cmdline_len,
        };
        let boot_params = boot::params::write_boot_params(&mem, &input)?;
        boot::mptable::write(&mem, config.cpus)?;
        if !cmdline.is_empty() {
            phases.log(format_args!("boot: cmdline \"{cmdline}\""));
        }

        let console = ConsoleCapture::default();
        let (io, serial, test_device, kmod) =
            make_devices(&vm_fd, config, &console, &phases, &mem)?;

        let mask = if is_linux && config.steering {
            crate::platform::linux_cpuid_mask()
        } else {
            None
        };
        if let Some((_, why)) = &mask {
            phases.log(format_args!("note: {why}"));
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
        for index in 0..config.cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut this = cpuid.clone();
            boot::cpu::patch_cpuid(
                &mut this,
                index,
                config.cpus,
                mask.map(|m| m.0).unwrap_or(CpuidMask::default()),
            );
            boot::cpu::setup_common(&fd, index, &this)?;
            if index == 0 {
                boot::cpu::setup_boot_vcpu(&fd, kernel.entry, cr3, boot_params)?;
            } else if matches!(config.kernel, KernelSource::Raw { .. }) {
                // Test programs have no SMP bring-up: every vCPU starts at the entry in long
                // mode, with its own stack and its index in rdi.
                boot::cpu::setup_secondary_at_entry(&fd, index, kernel.entry, cr3, boot_params)?;
            }
            vcpus.push(VcpuSlot::Ready(fd));
        }
        let accommodation = (is_linux && crate::platform::is_software_kvm()).then(|| {
            Arc::new(crate::platform::accommodation::Accommodation::for_linux(
                &mem,
                symbols_in_guest(&mem, &kernel).map(Arc::new),
                usize::from(config.cpus),
                &phases,
            ))
        });
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        Ok(Vm {
            vcpus,
            io,
            events_tx,
            events_rx,
            hook,
            accommodation,
            serial,
            console,
            test_device,
            kmod,
            kernel,
            memslots: Arc::new(Mutex::new(memslots)),
            phases,
            mem,
            vm_fd: Arc::new(vm_fd),
            _kvm: kvm,
        })
    }

    /// Runs `f` on vCPU `index`: directly before [`Vm::start`], on its thread after.
    pub fn with_vcpu<R: Send + 'static>(
        &mut self,
        index: u8,
        f: impl FnOnce(&mut crate::vcpu::VcpuCtx<'_>) -> R + Send + 'static,
    ) -> Result<R, VmError> {
        match self.vcpus.get_mut(usize::from(index)) {
            Some(VcpuSlot::Ready(fd)) => Ok(f(&mut crate::vcpu::VcpuCtx::new(index, fd))),
            Some(VcpuSlot::Started(h)) => Ok(h.with(f, PAUSE_TIMEOUT)?),
            _ => Err(VmError::Vcpu(VcpuError::Gone(index))),
        }
    }

    /// Spawns the vCPU threads; the guest runs.
    pub fn start(&mut self) -> Result<(), VmError> {
        self.spawn_vcpus(false)
    }

    /// Spawns the vCPU threads paused: introspection can set up (through [`Vm::target`])
    /// before the guest's first instruction; [`Vm::resume_all`] lets it run.
    pub fn start_paused(&mut self) -> Result<(), VmError> {
        self.spawn_vcpus(true)
    }

    fn spawn_vcpus(&mut self, paused: bool) -> Result<(), VmError> {
        kick::install_handler().map_err(|e| VmError::Device {
            what: "the vCPU kick signal",
            reason: e.to_string(),
        })?;
        for (i, slot) in self.vcpus.iter_mut().enumerate() {
            if let VcpuSlot::Ready(_) = slot {
                let VcpuSlot::Ready(fd) = std::mem::replace(slot, VcpuSlot::Taken) else {
                    continue;
                };
                let mut runner = VcpuRunner::new(
                    u8::try_from(i).unwrap_or(u8::MAX),
                    fd,
                    self.io.clone(),
                    self.hook.clone(),
                    self.events_tx.clone(),
                );
                runner.accommodation = self
                    .accommodation
                    .clone()
                    .map(|a| a as Arc<dyn crate::vcpu::Accommodate>);
                *slot = VcpuSlot::Started(runner.spawn(paused)?);
            }
        }
        if let Some(a) = &self.accommodation {
            a.attach(self.target());
        }
        let how = if paused { " (paused)" } else { "" };
        self.phases
            .log(format_args!("vcpus: {} started{how}", self.vcpus.len()));
        Ok(())
    }

    /// A handle that ends the run from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            events: self.events_tx.clone(),
        }
    }

    /// The software-KVM accommodation (Linux guests on `kvm_pvm` only): its counters say
    /// how many syscalls were relayed and which instructions ran on the host.
    pub fn accommodation(&self) -> Option<&Arc<crate::platform::accommodation::Accommodation>> {
        self.accommodation.as_ref()
    }

    /// Waits until the guest ends or `timeout` passes (then the outcome is
    /// [`Outcome::Timeout`]). Stops every vCPU before returning.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Outcome, VmError> {
        let result = self.wait_event(timeout.map(|t| Instant::now() + t));
        self.stop();
        let outcome = match result {
            Some(VcpuEvent::Ended(o)) => o,
            Some(VcpuEvent::Failed { vcpu, reason }) => {
                return Err(VmError::VcpuFailed { vcpu, reason });
            }
            None => Outcome::Timeout,
        };
        if let Some(a) = &self.accommodation {
            self.phases.log(format_args!("{}", a.summary()));
        }
        self.phases.log(format_args!("vm: {outcome}"));
        Ok(outcome)
    }

    /// Waits until `cond` holds (checked every 20 ms), the guest ends, or `timeout` passes.
    /// Returns `Ok(None)` when the condition held, with the VM still running.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&Vm) -> bool,
    ) -> Result<Option<Outcome>, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Some(Outcome::Timeout));
            }
            let step = (deadline - now).min(Duration::from_millis(20));
            match self.events_rx.recv_timeout(step) {
                Ok(VcpuEvent::Ended(o)) => {
                    self.stop();
                    return Ok(Some(o));
                }
                Ok(VcpuEvent::Failed { vcpu, reason }) => {
                    self.stop();
                    return Err(VmError::VcpuFailed { vcpu, reason });
                }
                Err(_) => {}
            }
        }
    }

    fn wait_event(&self, deadline: Option<Instant>) -> Option<VcpuEvent> {
        match deadline {
            None => self.events_rx.recv().ok(),
            // A timeout and a disconnect both mean no vCPU will report an end.
            Some(d) => self.events_rx.recv_deadline(d).ok(),
        }
    }

    /// Takes every vCPU out of KVM_RUN; returns when all are paused.
    pub fn pause_all(&self) -> Result<(), VmError> {
        use introspect::target::Target;
        self.target().pause_all().map_err(|e| VmError::Device {
            what: "vCPU control",
            reason: e.to_string(),
        })
    }

    /// Lets every paused vCPU run again.
    pub fn resume_all(&self) -> Result<(), VmError> {
        use introspect::target::Target;
        self.target().resume_all().map_err(|e| VmError::Device {
            what: "vCPU control",
            reason: e.to_string(),
        })
    }

    /// Stops and joins every vCPU thread, and flushes the console.
    pub fn stop(&mut self) {
        for slot in &self.vcpus {
            if let VcpuSlot::Started(h) = slot {
                let _ = h.send(VcpuMsg::Stop);
            }
        }
        for slot in &mut self.vcpus {
            if let VcpuSlot::Started(h) = slot {
                h.join();
            }
        }
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
    }

    /// The VM as introspection sees it (guest memory, pause, per-vCPU access). Take it after
    /// [`Vm::start`] or [`Vm::start_paused`]: vCPUs not started yet are not in it.
    pub fn target(&self) -> crate::target::VmTarget {
        let controls = self
            .vcpus
            .iter()
            .filter_map(|s| match s {
                VcpuSlot::Started(h) => Some(h.control().clone()),
                _ => None,
            })
            .collect();
        crate::target::VmTarget::new(self.mem.clone(), controls)
    }

    /// Starts tracing guest RAM `[start, start+len)`: its memory slot goes (or becomes
    /// read-only for [`crate::memslots::TraceMode::WritesOnly`]), and `device`, mapped on the
    /// MMIO bus over the range, receives every access that now exits (it performs the access
    /// on the backing memory and records it). Safe while the guest runs: every vCPU is paused
    /// around the change, so no access is lost or unrecorded.
    pub fn trace_ram(
        &self,
        start: u64,
        len: u64,
        mode: crate::memslots::TraceMode,
        device: crate::devices::bus::SharedDevice,
    ) -> Result<(), VmError> {
        self.pause_all()?;
        self.io
            .tracing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let result = self
            .ram_control()
            .carve(start, len, mode, device, "RAM tracing");
        self.resume_all()?;
        result
    }

    /// Stops tracing the RAM range starting at `start`: its slot comes back, the device goes.
    pub fn untrace_ram(&self, start: u64) -> Result<(), VmError> {
        let mut slots = self.memslots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .remove(start)
            .map_err(|e| VmError::Config(e.to_string()))?;
        self.pause_all()?;
        let result = slots.apply(&self.vm_fd).map_err(|e| VmError::Device {
            what: "RAM tracing",
            reason: e.to_string(),
        });
        self.io.mmio.remove(start);
        self.resume_all()?;
        result
    }

    /// The introspection layer's side of the guest module's device (status, barriers).
    pub fn kmod(&self) -> crate::devices::kmod::KmodHandle {
        self.kmod.clone()
    }

    /// A handle that carves RAM pages into device pages from any thread (the probe doorbell
    /// is set up from the vCPU that reported the arena).
    pub fn ram_control(&self) -> RamControl {
        RamControl {
            slots: self.memslots.clone(),
            vm_fd: self.vm_fd.clone(),
            io: self.io.clone(),
        }
    }

    /// Calls `listener` with every complete MARK line the guest writes to the test device.
    pub fn set_mark_listener(&self, listener: crate::devices::test_device::MarkListener) {
        self.test_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_mark_listener(listener);
    }

    /// Everything the guest printed on the serial console (bounded).
    pub fn console(&self) -> &ConsoleCapture {
        &self.console
    }

    /// Test device points reached so far.
    pub fn points(&self) -> Vec<Point> {
        self.test_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .points()
            .to_vec()
    }

    /// Test device marker lines so far.
    pub fn marks(&self) -> Vec<String> {
        self.test_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .marks()
            .to_vec()
    }

    /// The trampoline arena the guest last reported through the test device's ARENA
    /// registers, as (guest-virtual base, length in bytes).
    pub fn arena_report(&self) -> Option<(u64, u64)> {
        self.test_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .arena()
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The devices (buses and unclaimed-access counters).
    pub fn io(&self) -> &Arc<IoDevices> {
        &self.io
    }

    /// The loaded kernel.
    pub fn kernel(&self) -> &LoadedKernel {
        &self.kernel
    }

    /// The phase logger (its clock started at VM creation).
    pub fn phases(&self) -> &Phases {
        &self.phases
    }

    /// The KVM VM file descriptor.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, VmError> {
    fs::read(path).map_err(|e| VmError::ReadFile {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads the configured kernel; also tells whether it is Linux (vs. our test kernel or a raw
/// test program).
fn load_kernel(mem: &GuestMem, config: &VmConfig) -> Result<(LoadedKernel, bool, String), VmError> {
    let t = Instant::now();
    let (name, image) = match &config.kernel {
        KernelSource::Embedded => (
            "embedded test kernel".to_string(),
            crate::test_kernel::TEST_KERNEL.to_vec(),
        ),
        KernelSource::File(p) => (p.display().to_string(), read_file("kernel", p)?),
        KernelSource::Raw {
            image,
            load_addr,
            entry,
        } => {
            mem.write(Gpa(*load_addr), image)?;
            let end = Gpa(load_addr + image.len() as u64);
            let k = LoadedKernel {
                entry: Gpa(*entry),
                load_start: Gpa(*load_addr),
                load_end: end,
                format: KernelFormat::Elf,
                setup_header: None,
                version: None,
            };
            let line = format!(
                "kernel: raw program, {} bytes at {:#x}",
                image.len(),
                load_addr
            );
            return Ok((k, false, line));
        }
    };
    let k = loader::load_kernel(mem, &image).map_err(|source| VmError::Kernel {
        path: name.clone(),
        source,
    })?;
    let is_linux = match &config.kernel {
        KernelSource::Embedded => false,
        _ => matches!(k.format, KernelFormat::BzImage { .. }) || k.entry.raw() >= 0x100_0000,
    };
    let line = format!(
        "kernel: {name}: {}{}, {} KiB loaded at {}..{}, entry {} ({} ms)",
        k.format,
        k.version
            .as_deref()
            .map(|v| format!(" \"{v}\""))
            .unwrap_or_default(),
        (k.load_end.raw() - k.load_start.raw()) >> 10,
        k.load_start,
        k.load_end,
        k.entry,
        t.elapsed().as_millis()
    );
    Ok((k, is_linux, line))
}

/// The kernel's symbols from the kallsyms tables in guest memory (where the loader put the
/// image), without decompressing the image a second time. `None` if it has none.
fn symbols_in_guest(
    mem: &GuestMem,
    kernel: &LoadedKernel,
) -> Option<introspect::symbols::SymbolTable> {
    let len = usize::try_from(kernel.load_end.raw().checked_sub(kernel.load_start.raw())?).ok()?;
    let mut bytes = vec![0u8; len];
    mem.read(kernel.load_start, &mut bytes).ok()?;
    let base = crate::boot::paging::KERNEL_MAP_START + kernel.load_start.raw();
    introspect::symbols::SymbolTable::from_kallsyms_bytes(&bytes, base).ok()
}

fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel: &LoadedKernel,
    phases: &Phases,
) -> Result<(Gpa, u64), VmError> {
    let bytes = read_file("initrd", path)?;
    let max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let (addr, size) =
        loader::load_initrd(mem, &bytes, kernel.load_end, max).map_err(|source| {
            VmError::Initrd {
                path: path.display().to_string(),
                source,
            }
        })?;
    phases.log(format_args!("initrd: {} KiB at {addr}", size >> 10));
    Ok((addr, size))
}

type Devices = (
    Arc<IoDevices>,
    Arc<Mutex<SerialDevice>>,
    Arc<Mutex<TestDevice>>,
    crate::devices::kmod::KmodHandle,
);

fn make_devices(
    vm_fd: &VmFd,
    config: &VmConfig,
    console: &ConsoleCapture,
    phases: &Phases,
    mem: &GuestMem,
) -> Result<Devices, VmError> {
    let dev_err = |what: &'static str| {
        move |e: &dyn std::fmt::Display| VmError::Device {
            what,
            reason: e.to_string(),
        }
    };
    let out: Option<Box<dyn Write + Send>> = match &config.serial {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::File(p) => {
            let f = fs::File::create(p).map_err(|e| VmError::ReadFile {
                what: "serial log",
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            Some(Box::new(std::io::LineWriter::new(f)))
        }
        SerialOutput::Sink => None,
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("the serial port")(&e))?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| dev_err("the serial port interrupt")(&e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq,
        ConsoleSink::new(out, console.clone()),
    )));
    let test_device = Arc::new(Mutex::new(TestDevice::new(phases.clone())));
    let edu_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("edu")(&e))?;
    vm_fd
        .register_irqfd(&edu_irq, u32::from(edu::EDU_IRQ))
        .map_err(|e| dev_err("the edu interrupt")(&e))?;
    let edu = Arc::new(Mutex::new(edu::EduDevice::new(mem.clone(), Some(edu_irq))));
    // The PCI bus maps BARs on the MMIO bus of the same IoDevices, which it holds weakly.
    let io = Arc::new_cyclic(|io: &std::sync::Weak<IoDevices>| IoDevices {
        pci: Some(Arc::new(PciBus::new(io.clone()))),
        ..IoDevices::default()
    });
    let pci = io
        .pci
        .clone()
        .ok_or_else(|| dev_err("the PCI bus")(&"missing"))?;
    edu::EduDevice::attach(edu, &pci).map_err(|e| dev_err("edu")(&e))?;
    let kmod_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err("kmod")(&e))?;
    vm_fd
        .register_irqfd(&kmod_irq, u32::from(crate::devices::kmod::KMOD_IRQ))
        .map_err(|e| dev_err("the kmod interrupt")(&e))?;
    let (kmod_dev, kmod) = crate::devices::kmod::KmodDevice::new(Some(kmod_irq));
    crate::devices::kmod::KmodDevice::attach(Arc::new(Mutex::new(kmod_dev)), &pci)
        .map_err(|e| dev_err("kmod")(&e))?;
    let bus_err = |what: &'static str| {
        move |e: crate::devices::bus::BusError| VmError::Device {
            what,
            reason: e.to_string(),
        }
    };
    io.pio
        .insert(u64::from(COM1_PORT), 8, serial.clone())
        .map_err(bus_err("COM1"))?;
    io.pio
        .insert(0x60, 5, Arc::new(Mutex::new(I8042)))
        .map_err(bus_err("i8042"))?;
    io.pio
        .insert(
            u64::from(PCI_CONFIG_ADDRESS_PORT),
            PCI_CONFIG_PORTS_LEN,
            pci.config_io(),
        )
        .map_err(bus_err("PCI config ports"))?;
    io.pio
        .insert(
            u64::from(TEST_DEVICE_PORT),
            TEST_DEVICE_PORT_LEN,
            test_device.clone(),
        )
        .map_err(bus_err("test device ports"))?;
    io.mmio
        .insert(
            TEST_DEVICE_MMIO_BASE,
            TEST_DEVICE_MMIO_LEN,
            test_device.clone(),
        )
        .map_err(bus_err("test device MMIO"))?;
    Ok((io, serial, test_device, kmod))
}
