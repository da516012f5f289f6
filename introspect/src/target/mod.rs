//! The narrow seam between introspection and a VM.
//!
//! - [`Target`]: what the controlling thread uses: guest physical memory (through
//!   [`PhysMemMut`]), pause-all / resume-all, and a way to run code on one vCPU.
//! - [`VcpuAccess`]: one vCPU, lent to introspection either on its own thread at an exit (a
//!   breakpoint hit) or through [`Target::with_vcpu`] while it is paused.
//!
//! The VMM implements both for its VM; tests implement them with mocks (`target::mock`) for
//! the logic this platform cannot reach (data watchpoints never fire on our software KVM).
//! No KVM type appears here: registers and debug state are introspection's own types.

use crate::paging::{PagingContext, PhysMemMut};

/// General-purpose registers of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// RFLAGS.TF (trap flag).
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.IF (interrupts enabled).
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.RF (resume flag: suppresses instruction breakpoints for one instruction).
pub const RFLAGS_RF: u64 = 1 << 16;

/// The hypervisor-side debug state of one vCPU (KVM_SET_GUEST_DEBUG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestDebug {
    /// Single-step: an exit after every instruction.
    pub single_step: bool,
    /// Intercept the guest's #BP (int3) so hvprobe sees it first (hardware KVM).
    pub intercept_int3: bool,
    /// Use DR0-DR3 / DR7 below.
    pub hw_breakpoints: bool,
    /// DR0-DR3.
    pub dr: [u64; 4],
    /// DR7.
    pub dr7: u64,
}

/// Errors of a target operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The vCPU does not exist or has stopped.
    #[error("vCPU {0} is not available")]
    NoVcpu(usize),
    /// The VM refused the operation (an ioctl failed, a vCPU did not pause in time).
    #[error("The VM refused {what}: {reason}")]
    Vm {
        /// The operation.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A job run with one vCPU ([`Target::with_vcpu`]).
pub type VcpuJob = Box<dyn FnOnce(&mut dyn VcpuAccess) + Send>;

/// One vCPU, lent to introspection.
pub trait VcpuAccess {
    /// vCPU index (0 is the boot vCPU).
    fn index(&self) -> usize;
    /// General-purpose registers.
    fn regs(&self) -> Result<Regs, TargetError>;
    /// Sets general-purpose registers.
    fn set_regs(&mut self, regs: &Regs) -> Result<(), TargetError>;
    /// The control registers that decide address translation.
    fn paging(&self) -> Result<PagingContext, TargetError>;
    /// Sets the hypervisor-side debug state (single-step, int3 intercept, DR0-DR3, DR7).
    fn set_debug(&mut self, debug: &GuestDebug) -> Result<(), TargetError>;
    /// Delivers a #BP to the guest as if no debugger were there (a guest's own int3).
    fn inject_breakpoint(&mut self) -> Result<(), TargetError>;
}

/// A VM as introspection sees it from the controlling thread.
pub trait Target: PhysMemMut + Send + Sync {
    /// Number of vCPUs.
    fn vcpu_count(&self) -> usize;
    /// Takes every vCPU out of guest mode; returns when all are out.
    fn pause_all(&self) -> Result<(), TargetError>;
    /// Lets every vCPU run again.
    fn resume_all(&self) -> Result<(), TargetError>;
    /// From vCPU `me`'s own thread (inside an exit): takes every *other* vCPU out of guest
    /// mode; returns when all are out. A vCPU that is itself inside an exit handler waiting
    /// for something counts as out only once it returns to its loop, so callers must never
    /// hold a lock another vCPU's handler can wait for (see the probe engine's step lock).
    fn pause_others(&self, me: usize) -> Result<(), TargetError>;
    /// Undoes [`Target::pause_others`].
    fn resume_others(&self, me: usize) -> Result<(), TargetError>;
    /// Runs `f` with vCPU `index` on its thread. Never call it from vCPU `index`'s own
    /// thread (the job would wait for itself).
    fn with_vcpu(&self, index: usize, f: VcpuJob) -> Result<(), TargetError>;
}

#[cfg(any(test, feature = "mock"))]
pub mod mock;
