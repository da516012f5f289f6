//! What the emulator needs from one vCPU ([`EmuCpu`]), and its implementation over a real
//! vCPU on its own thread ([`VcpuCpu`]).

use introspect::target::Target;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::Exception;
use crate::target::VmTarget;
use crate::vcpu::VcpuCtx;

/// A vCPU operation the emulator asked for failed: hvprobe's problem, not the guest's.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM ioctl on the vCPU failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The other vCPUs could not be paused (or resumed).
    #[error("Cannot pause the other vCPUs: {0}")]
    Pause(String),
    /// Anything else (test doubles use this).
    #[error("{0}")]
    Other(String),
}

/// The other vCPUs are paused while this lives; dropping it resumes them.
///
/// It owns its resume action (no borrow of the vCPU), so the emulator can keep using the vCPU
/// while the others are held.
#[must_use = "the other vCPUs resume when this is dropped"]
pub struct OthersPaused {
    resume: Option<Box<dyn FnOnce() + Send>>,
}

impl OthersPaused {
    /// A guard that calls `resume` when dropped.
    pub fn new(resume: impl FnOnce() + Send + 'static) -> Self {
        OthersPaused {
            resume: Some(Box::new(resume)),
        }
    }

    /// A guard with nothing to undo (a VM with one vCPU).
    pub fn nothing() -> Self {
        OthersPaused { resume: None }
    }
}

impl Drop for OthersPaused {
    fn drop(&mut self) {
        if let Some(resume) = self.resume.take() {
            resume();
        }
    }
}

impl std::fmt::Debug for OthersPaused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OthersPaused")
            .field("holds", &self.resume.is_some())
            .finish()
    }
}

/// One vCPU as the emulator sees it: registers, FPU/SSE state, XCR0, exception injection and
/// a way to hold the other vCPUs still for an atomic memory update.
pub trait EmuCpu {
    /// General-purpose registers, RIP and RFLAGS (KVM_GET_REGS).
    fn regs(&self) -> Result<kvm_regs, CpuError>;
    /// Sets them (KVM_SET_REGS).
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), CpuError>;
    /// Segment and control registers (KVM_GET_SREGS).
    fn sregs(&self) -> Result<kvm_sregs, CpuError>;
    /// Sets them (KVM_SET_SREGS); the emulator uses it only to set CR2 for a #PF.
    fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), CpuError>;
    /// x87 and SSE state, MXCSR included (a real vCPU reads it with KVM_GET_XSAVE: see
    /// [`super::xsave`] for why not KVM_GET_FPU).
    fn fpu(&self) -> Result<kvm_fpu, CpuError>;
    /// Sets it, MXCSR included (KVM_SET_XSAVE on a real vCPU).
    fn set_fpu(&mut self, fpu: &kvm_fpu) -> Result<(), CpuError>;
    /// XCR0 (KVM_GET_XCRS).
    fn xcr0(&self) -> Result<u64, CpuError>;
    /// Makes the guest take `exception` at its current RIP when it next runs (for #PF, CR2 is
    /// set first).
    fn inject(&mut self, exception: &Exception) -> Result<(), CpuError>;
    /// Takes every other vCPU out of KVM_RUN until the guard is dropped.
    fn pause_others(&mut self) -> Result<OthersPaused, CpuError>;
}

/// [`EmuCpu`] over a real vCPU, on that vCPU's thread (inside a [`crate::vcpu::DebugHook`]).
pub struct VcpuCpu<'a, 'b> {
    ctx: &'a mut VcpuCtx<'b>,
    target: Option<&'a VmTarget>,
}

impl<'a, 'b> VcpuCpu<'a, 'b> {
    /// The vCPU `ctx`; `target` is how the other vCPUs are paused for `cmpxchg16b`. Without
    /// a target nothing is paused, which is only right for a VM with one vCPU.
    pub fn new(ctx: &'a mut VcpuCtx<'b>, target: Option<&'a VmTarget>) -> Self {
        VcpuCpu { ctx, target }
    }
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

impl EmuCpu for VcpuCpu<'_, '_> {
    fn regs(&self) -> Result<kvm_regs, CpuError> {
        self.ctx.regs().map_err(kvm("KVM_GET_REGS"))
    }

    fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), CpuError> {
        self.ctx.set_regs(regs).map_err(kvm("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<kvm_sregs, CpuError> {
        self.ctx.sregs().map_err(kvm("KVM_GET_SREGS"))
    }

    fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), CpuError> {
        self.ctx.set_sregs(sregs).map_err(kvm("KVM_SET_SREGS"))
    }

    fn fpu(&self) -> Result<kvm_fpu, CpuError> {
        let x = self.ctx.fd().get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        Ok(super::xsave::fpu_from_xsave(&x))
    }

    fn set_fpu(&mut self, fpu: &kvm_fpu) -> Result<(), CpuError> {
        let fd = self.ctx.fd();
        let mut x = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        super::xsave::fpu_into_xsave(fpu, &mut x);
        // SAFETY: KVM_SET_XSAVE reads the VM's XSAVE size from the buffer, which exceeds the
        // 4096 bytes of `kvm_xsave` only when dynamically enabled XSTATE features (AMX) were
        // granted to the VM with arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM); hvprobe never asks for
        // them, and the buffer came from KVM_GET_XSAVE of this very vCPU.
        unsafe { fd.set_xsave(&x) }.map_err(kvm("KVM_SET_XSAVE"))
    }

    fn xcr0(&self) -> Result<u64, CpuError> {
        let xcrs = self.ctx.fd().get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let n = usize::try_from(xcrs.nr_xcrs)
            .unwrap_or(0)
            .min(xcrs.xcrs.len());
        xcrs.xcrs[..n]
            .iter()
            .find(|x| x.xcr == 0)
            .map(|x| x.value)
            .ok_or_else(|| CpuError::Other("KVM_GET_XCRS did not report XCR0".into()))
    }

    fn inject(&mut self, exception: &Exception) -> Result<(), CpuError> {
        if let Exception::PageFault { cr2, .. } = *exception {
            let mut sregs = self.sregs()?;
            sregs.cr2 = cr2;
            self.set_sregs(&sregs)?;
        }
        let fd = self.ctx.fd();
        let mut ev = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 1;
        ev.exception.pending = 0;
        ev.exception.nr = exception.vector();
        match exception.error_code() {
            Some(code) => {
                ev.exception.has_error_code = 1;
                ev.exception.error_code = code;
            }
            None => {
                ev.exception.has_error_code = 0;
                ev.exception.error_code = 0;
            }
        }
        fd.set_vcpu_events(&ev).map_err(kvm("KVM_SET_VCPU_EVENTS"))
    }

    fn pause_others(&mut self) -> Result<OthersPaused, CpuError> {
        let Some(target) = self.target else {
            return Ok(OthersPaused::nothing());
        };
        let me = usize::from(self.ctx.index);
        let resumer = target.clone();
        // The pause messages went to every other vCPU even when waiting for an
        // acknowledgement timed out, so a failed pause is undone with a resume as well.
        let guard = OthersPaused::new(move || {
            let _ = resumer.resume_others(me);
        });
        match target.pause_others(me) {
            Ok(()) => Ok(guard),
            Err(e) => {
                drop(guard);
                Err(CpuError::Pause(e.to_string()))
            }
        }
    }
}
