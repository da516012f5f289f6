//! vCPU threads: one per vCPU, each an explicit state machine (running / paused / stopped)
//! driven through a [`VcpuHandle`] with typed [`VcpuMsg`]s.
//!
//! The loop: `KVM_RUN` -> convert the exit into [`exit::Exit`] -> [`exit::dispatch`] -> act.
//! Debug exits and internal errors go to the VM's [`DebugHook`] (the introspection layer),
//! called on the vCPU thread with the vCPU at hand. A kick (see [`kick`]) brings the vCPU out
//! of KVM_RUN to read its messages; [`crate::vm::Vm::pause_all`] builds on it.

pub mod context;
pub mod exit;
pub mod kick;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::outcome::Outcome;
use exit::{DebugExit, Exit, ExitAction, InternalError, IoBuses, StopReason};

/// How long pause-all waits for a vCPU to leave KVM_RUN.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`DebugHook`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Resume the guest.
    Continue,
    /// End the VM.
    Stop(StopReason),
    /// Keep this vCPU paused until a [`VcpuMsg::Resume`] (a client's single-step ended).
    Pause,
}

/// The introspection layer's entry points on the vCPU thread.
pub trait DebugHook: Send + Sync {
    /// A debug exit (single-step, hardware breakpoint, int3 on hardware KVM).
    fn on_debug(&self, vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction;

    /// An internal error. Return `None` if it is not yours: the VM then ends as crashed.
    fn on_internal_error(
        &self,
        _vcpu: &mut VcpuCtx<'_>,
        _err: &InternalError,
    ) -> Option<HookAction> {
        None
    }

    /// A guest request a device passed on (trampoline arena, probe doorbell). The default
    /// ignores it.
    fn on_request(
        &self,
        _vcpu: &mut VcpuCtx<'_>,
        _request: &crate::devices::GuestRequest,
    ) -> HookAction {
        HookAction::Continue
    }
}

/// What the platform layer does about an emulation failure before the [`DebugHook`] sees
/// it (`crate::platform::accommodation` on the software KVM): `None` when it is not its
/// business.
pub trait Accommodate: Send + Sync {
    /// An emulation failure on `vcpu` with RIP at `rip`.
    fn on_emulation_failure(&self, vcpu: &mut VcpuCtx<'_>, rip: u64) -> Option<HookAction>;
}

/// A vCPU, lent to code running on its thread (hooks, [`VcpuMsg::With`] closures).
pub struct VcpuCtx<'a> {
    /// vCPU index (0 is the boot vCPU).
    pub index: u8,
    fd: &'a mut VcpuFd,
    /// The registers KVM synced into kvm_run at this exit are current (no KVM_GET_REGS
    /// needed); false once anything sets registers, and outside an exit.
    synced: std::cell::Cell<bool>,
}

impl<'a> VcpuCtx<'a> {
    /// Lends vCPU `index` (its thread not started, or from the thread itself).
    pub fn new(index: u8, fd: &'a mut VcpuFd) -> Self {
        VcpuCtx {
            index,
            fd,
            synced: std::cell::Cell::new(false),
        }
    }

    /// Lends the vCPU at an exit after which KVM synced its registers into kvm_run.
    fn at_exit(index: u8, fd: &'a mut VcpuFd, synced: bool) -> Self {
        VcpuCtx {
            index,
            fd,
            synced: std::cell::Cell::new(synced),
        }
    }

    /// General-purpose registers (from kvm_run when KVM synced them at this exit).
    pub fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
        if self.synced.get() {
            Ok(self.fd.sync_regs().regs)
        } else {
            self.fd.get_regs()
        }
    }
    /// Sets general-purpose registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error> {
        self.synced.set(false);
        self.fd.set_regs(regs)
    }
    /// Segment and control registers.
    pub fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        self.fd.get_sregs()
    }
    /// Sets segment and control registers.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_sregs(sregs)
    }
    /// KVM_SET_GUEST_DEBUG (single-step, hardware breakpoints).
    pub fn set_guest_debug(&self, dbg: &kvm_guest_debug) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_guest_debug(dbg)
    }
    /// The vCPU file descriptor, for anything else.
    pub fn fd(&self) -> &VcpuFd {
        self.fd
    }
}

/// A job run on the vCPU thread.
pub type VcpuJob = Box<dyn FnOnce(&mut VcpuCtx<'_>) + Send>;

/// Messages to a vCPU thread.
pub enum VcpuMsg {
    /// Leave KVM_RUN and wait; the sender learns when the vCPU is out. Pauses nest: each
    /// needs its own [`VcpuMsg::Resume`].
    Pause(Sender<u8>),
    /// Run again.
    Resume,
    /// End the thread.
    Stop,
    /// Run a job on the vCPU thread (registers, guest debug), then carry on in the same state.
    With(VcpuJob),
}

/// A vCPU's run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// In (or about to enter) KVM_RUN.
    Running,
    /// Out of KVM_RUN, waiting for messages.
    Paused,
    /// Finished; the thread ends.
    Stopped,
}

/// What a vCPU thread tells the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The VM is over as far as this vCPU can tell.
    Ended(Outcome),
    /// The vCPU failed for a reason that is hvprobe's, not the guest's.
    Failed {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
}

/// Errors of vCPU control.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuError {
    /// The vCPU thread has ended.
    #[error("vCPU {0} has stopped")]
    Gone(u8),
    /// The vCPU did not answer in time.
    #[error("vCPU {0} did not leave KVM_RUN within {1:?}")]
    Timeout(u8, Duration),
    /// Starting the thread failed.
    #[error("Cannot start the thread of vCPU {0}: {1}")]
    Spawn(u8, String),
}

/// A cloneable, thread-safe way to talk to one vCPU thread: send messages and kick it. Held by
/// the VM's handle and by introspection targets (which may act from other vCPU threads).
#[derive(Clone)]
pub struct VcpuControl {
    index: u8,
    tx: Sender<VcpuMsg>,
    /// The thread to signal; `None` once the thread is being joined (no signal may target a
    /// thread id after the join, when the id can be reused).
    thread: Arc<std::sync::RwLock<Option<libc::pthread_t>>>,
}

impl VcpuControl {
    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Sends a message and kicks the vCPU out of KVM_RUN so it reads it.
    pub fn send(&self, msg: VcpuMsg) -> Result<(), VcpuError> {
        self.tx.send(msg).map_err(|_| VcpuError::Gone(self.index))?;
        self.kick();
        Ok(())
    }

    /// Interrupts KVM_RUN on the vCPU thread.
    pub fn kick(&self) {
        let guard = self.thread.read().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = *guard {
            // SAFETY: the id belongs to a thread that has not been joined yet (the write lock
            // is taken before the join), so it is a valid target for pthread_kill; the signal's
            // handler only stores a byte.
            let _ = unsafe { libc::pthread_kill(t, kick::kick_signal()) };
        }
    }

    /// Runs `f` on the vCPU thread and returns its result.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuCtx<'_>) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, VcpuError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(VcpuMsg::With(Box::new(move |ctx| {
            let _ = tx.send(f(ctx));
        })))?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => VcpuError::Timeout(self.index, timeout),
            RecvTimeoutError::Disconnected => VcpuError::Gone(self.index),
        })
    }
}

/// Owner side of a vCPU thread.
pub struct VcpuHandle {
    control: VcpuControl,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.control.index
    }

    /// The shareable control side.
    pub fn control(&self) -> &VcpuControl {
        &self.control
    }

    /// Sends a message and kicks the vCPU out of KVM_RUN so it reads it.
    pub fn send(&self, msg: VcpuMsg) -> Result<(), VcpuError> {
        self.control.send(msg)
    }

    /// Interrupts KVM_RUN on the vCPU thread.
    pub fn kick(&self) {
        self.control.kick();
    }

    /// Runs `f` on the vCPU thread and returns its result.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuCtx<'_>) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, VcpuError> {
        self.control.with(f, timeout)
    }

    /// Waits for the thread to end (no kick can reach it afterwards).
    pub fn join(&mut self) {
        *self
            .control
            .thread
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuRunner {
    /// vCPU index.
    pub index: u8,
    /// The vCPU.
    pub fd: VcpuFd,
    /// Devices.
    pub io: Arc<crate::devices::IoDevices>,
    /// Introspection hook.
    pub hook: Option<Arc<dyn DebugHook>>,
    /// The software-KVM accommodation, asked about emulation failures before the hook.
    pub accommodation: Option<Arc<dyn Accommodate>>,
    /// Where to report the end.
    pub events: Sender<VcpuEvent>,
    /// Pauses not yet undone by a resume (see [`VcpuMsg::Pause`]).
    pauses: u32,
    /// This vCPU ended the VM: it never runs again.
    ended: bool,
    /// KVM syncs the general registers into kvm_run at every exit (turned on with tracing).
    sync_regs: bool,
}

/// A traced device access copied out of kvm_run (see `run_once`).
#[derive(Clone, Copy)]
enum Pending {
    IoIn(u16, usize),
    IoOut(u16, usize),
    MmioRead(u64, usize),
    MmioWrite(u64, usize),
}

impl VcpuRunner {
    /// A runner for vCPU `index`.
    pub fn new(
        index: u8,
        fd: VcpuFd,
        io: Arc<crate::devices::IoDevices>,
        hook: Option<Arc<dyn DebugHook>>,
        events: Sender<VcpuEvent>,
    ) -> Self {
        VcpuRunner {
            index,
            fd,
            io,
            hook,
            accommodation: None,
            events,
            pauses: 0,
            ended: false,
            sync_regs: false,
        }
    }

    /// Starts the vCPU thread, running (or paused, waiting for [`VcpuMsg::Resume`]).
    pub fn spawn(self, paused: bool) -> Result<VcpuHandle, VcpuError> {
        use std::os::unix::thread::JoinHandleExt;
        let index = self.index;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run(rx, paused))
            .map_err(|e| VcpuError::Spawn(index, e.to_string()))?;
        let pthread = Arc::new(std::sync::RwLock::new(Some(thread.as_pthread_t())));
        Ok(VcpuHandle {
            control: VcpuControl {
                index,
                tx,
                thread: pthread,
            },
            thread: Some(thread),
        })
    }

    fn run(mut self, rx: Receiver<VcpuMsg>, paused: bool) {
        kick::publish(std::ptr::from_mut(self.fd.get_kvm_run()));
        context::set_vcpu(u32::from(self.index));
        self.pauses = u32::from(paused);
        let mut state = if paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        while state != VcpuState::Stopped {
            state = match state {
                VcpuState::Running => {
                    let mut s = self.drain(&rx, VcpuState::Running);
                    if s == VcpuState::Running {
                        s = self.step();
                    }
                    s
                }
                VcpuState::Paused => match rx.recv() {
                    Ok(msg) => self.apply(msg, VcpuState::Paused),
                    Err(_) => VcpuState::Stopped,
                },
                VcpuState::Stopped => VcpuState::Stopped,
            };
        }
        kick::publish(std::ptr::null_mut());
    }

    fn drain(&mut self, rx: &Receiver<VcpuMsg>, mut state: VcpuState) -> VcpuState {
        while state == VcpuState::Running {
            match rx.try_recv() {
                Ok(msg) => state = self.apply(msg, state),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return VcpuState::Stopped,
            }
        }
        state
    }

    fn apply(&mut self, msg: VcpuMsg, state: VcpuState) -> VcpuState {
        match msg {
            // Pauses nest: a pause-all can arrive while another vCPU has this one paused
            // for a probe step; the vCPU runs again only when every pause is undone.
            VcpuMsg::Pause(ack) => {
                self.pauses += 1;
                let _ = ack.send(self.index);
                VcpuState::Paused
            }
            VcpuMsg::Resume => {
                self.pauses = self.pauses.saturating_sub(1);
                if self.pauses == 0 && !self.ended {
                    VcpuState::Running
                } else {
                    VcpuState::Paused
                }
            }
            VcpuMsg::Stop => VcpuState::Stopped,
            VcpuMsg::With(job) => {
                job(&mut VcpuCtx::new(self.index, &mut self.fd));
                state
            }
        }
    }

    /// One KVM_RUN and its exit.
    fn step(&mut self) -> VcpuState {
        match self.run_once() {
            ExitAction::Continue => VcpuState::Running,
            ExitAction::Kicked => {
                self.fd.set_kvm_immediate_exit(0);
                VcpuState::Running
            }
            ExitAction::Stop(reason) => self.end(reason),
            ExitAction::Debug(d) => {
                let action = match &self.hook {
                    Some(h) => h.on_debug(
                        &mut VcpuCtx::at_exit(self.index, &mut self.fd, self.sync_regs),
                        &d,
                    ),
                    None => HookAction::Stop(StopReason::Crash(format!(
                        "unexpected debug exit (exception {}, pc {:#x}, dr6 {:#x}, dr7 {:#x}) with no debugger attached",
                        d.exception, d.pc, d.dr6, d.dr7
                    ))),
                };
                self.after_hook(action)
            }
            ExitAction::InternalError(e) => {
                if let Some(action) = self.accommodate(&e) {
                    return self.after_hook(action);
                }
                let claimed = self.hook.as_ref().and_then(|h| {
                    h.on_internal_error(
                        &mut VcpuCtx::at_exit(self.index, &mut self.fd, self.sync_regs),
                        &e,
                    )
                });
                let action = claimed.unwrap_or_else(|| {
                    HookAction::Stop(StopReason::Crash(format!(
                        "{} data {:x?}",
                        e.describe(),
                        e.data
                    )))
                });
                self.after_hook(action)
            }
            ExitAction::Request(r) => {
                let action = match &self.hook {
                    Some(h) => h.on_request(
                        &mut VcpuCtx::at_exit(self.index, &mut self.fd, self.sync_regs),
                        &r,
                    ),
                    None => HookAction::Continue,
                };
                self.after_hook(action)
            }
        }
    }

    /// The software-KVM accommodation's answer to an emulation failure, if it has one.
    fn accommodate(&mut self, e: &InternalError) -> Option<HookAction> {
        let acc = self.accommodation.as_ref()?;
        if e.suberror != InternalError::EMULATION {
            return None;
        }
        let mut ctx = VcpuCtx::at_exit(self.index, &mut self.fd, self.sync_regs);
        let rip = ctx.regs().ok()?.rip;
        acc.on_emulation_failure(&mut ctx, rip)
    }

    fn after_hook(&mut self, action: HookAction) -> VcpuState {
        match action {
            HookAction::Continue => VcpuState::Running,
            HookAction::Stop(reason) => self.end(reason),
            HookAction::Pause => {
                self.pauses += 1;
                VcpuState::Paused
            }
        }
    }

    fn end(&mut self, reason: StopReason) -> VcpuState {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let vcpu = self.index;
        let outcome = match reason {
            StopReason::GuestExit(code) => Outcome::GuestExit { code },
            StopReason::Reset => Outcome::Reset,
            StopReason::TripleFault => Outcome::TripleFault { vcpu, rip },
            StopReason::Crash(reason) => Outcome::Crash { vcpu, rip, reason },
            StopReason::Handler => Outcome::Stopped { vcpu, rip },
        };
        let _ = self.events.send(VcpuEvent::Ended(outcome));
        self.ended = true;
        VcpuState::Paused
    }

    fn run_once(&mut self) -> ExitAction {
        let tracing = self.io.tracing.load(std::sync::atomic::Ordering::Relaxed);
        // A debug hook reads registers at nearly every exit it sees: let KVM sync them into
        // kvm_run instead of paying a KVM_GET_REGS each time.
        if (tracing || self.hook.is_some()) && !self.sync_regs {
            self.fd.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
            self.sync_regs = true;
        }
        let io = IoBuses {
            pio: &self.io.pio,
            mmio: &self.io.mmio,
            unclaimed: &self.io.unclaimed,
            observer: self.io.observer.get().map(|o| o.as_ref()),
        };
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => Exit::IoIn { port, data },
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut { port, data },
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead { addr, data },
            Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite { addr, data },
            Ok(VcpuExit::Debug(d)) => Exit::Debug(DebugExit {
                exception: d.exception,
                pc: d.pc,
                dr6: d.dr6,
                dr7: d.dr7,
            }),
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Exit::FailEntry { reason },
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::InternalError) => return ExitAction::InternalError(self.internal_error()),
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => Exit::Other(format!("KVM_RUN failed: {e}")),
        };
        if !tracing {
            return exit::dispatch(exit, &io);
        }
        // Tracing: copy the access out of kvm_run so its borrow ends, read RIP from the
        // synced registers, dispatch on the copy, then put read data back into kvm_run.
        let mut buf = [0u8; 8];
        let pending = match exit {
            Exit::IoIn { port, data } if data.len() <= 8 => Pending::IoIn(port, data.len()),
            Exit::IoOut { port, data } if data.len() <= 8 => {
                buf[..data.len()].copy_from_slice(data);
                Pending::IoOut(port, data.len())
            }
            Exit::MmioRead { addr, data } if data.len() <= 8 => Pending::MmioRead(addr, data.len()),
            Exit::MmioWrite { addr, data } if data.len() <= 8 => {
                buf[..data.len()].copy_from_slice(data);
                Pending::MmioWrite(addr, data.len())
            }
            other => return exit::dispatch(other, &io),
        };
        context::set_rip(Some(self.fd.sync_regs().regs.rip));
        let action = match pending {
            Pending::IoIn(port, n) => exit::dispatch(
                Exit::IoIn {
                    port,
                    data: &mut buf[..n],
                },
                &io,
            ),
            Pending::IoOut(port, n) => exit::dispatch(
                Exit::IoOut {
                    port,
                    data: &buf[..n],
                },
                &io,
            ),
            Pending::MmioRead(addr, n) => exit::dispatch(
                Exit::MmioRead {
                    addr,
                    data: &mut buf[..n],
                },
                &io,
            ),
            Pending::MmioWrite(addr, n) => exit::dispatch(
                Exit::MmioWrite {
                    addr,
                    data: &buf[..n],
                },
                &io,
            ),
        };
        context::set_rip(None);
        let run = self.fd.get_kvm_run();
        match pending {
            Pending::IoIn(_, n) => {
                // SAFETY: KVM_RUN returned KVM_EXIT_IO, so `io` is the live union member and
                // `data_offset` points at `n` bytes (size * count, checked <= 8 above) inside
                // the kvm_run mapping, where KVM reads the result on the next KVM_RUN.
                unsafe {
                    let offset = usize::try_from(run.__bindgen_anon_1.io.data_offset).unwrap_or(0);
                    let dst = std::ptr::from_mut(run).cast::<u8>().add(offset);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, n);
                }
            }
            Pending::MmioRead(_, n) => {
                // SAFETY: KVM_RUN returned KVM_EXIT_MMIO, so `mmio` is the live union member;
                // its `data` holds 8 bytes and `n` <= 8.
                unsafe { run.__bindgen_anon_1.mmio.data[..n].copy_from_slice(&buf[..n]) };
            }
            Pending::IoOut(..) | Pending::MmioWrite(..) => {}
        }
        action
    }

    fn internal_error(&mut self) -> InternalError {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN just returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the member
        // of the exit union KVM filled in.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }
}
