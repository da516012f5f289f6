//! The VMM side of introspection's seam: [`VmTarget`] implements `introspect::target::Target`
//! for a running VM, and [`VcpuCtx`] implements `VcpuAccess`, so the probe engine and the
//! breakpoint slot manager drive real vCPUs.

use std::time::{Duration, Instant};

use introspect::paging::PagingContext;
use introspect::target::{GuestDebug, Regs, Target, TargetError, VcpuAccess, VcpuJob};
use introspect::{Gpa, PhysMem, PhysMemError, PhysMemMut};
use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug, kvm_regs,
};

use crate::memory::GuestMem;
use crate::vcpu::PAUSE_TIMEOUT;
use crate::vcpu::{VcpuControl, VcpuCtx, VcpuMsg};

/// A running VM for introspection: guest memory plus the vCPU controls. Cheap to clone,
/// usable from any thread (including vCPU threads, for `pause_others`).
#[derive(Clone)]
pub struct VmTarget {
    mem: GuestMem,
    vcpus: std::sync::Arc<Vec<VcpuControl>>,
}

fn vm_err(what: &'static str) -> impl FnOnce(crate::vcpu::VcpuError) -> TargetError {
    move |e| TargetError::Vm {
        what,
        reason: e.to_string(),
    }
}

impl VmTarget {
    /// A target over `mem` and the started vCPUs' controls.
    pub fn new(mem: GuestMem, vcpus: Vec<VcpuControl>) -> Self {
        VmTarget {
            mem,
            vcpus: std::sync::Arc::new(vcpus),
        }
    }

    fn pause_where(&self, skip: Option<usize>) -> Result<(), TargetError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut waiting = Vec::new();
        for c in self
            .vcpus
            .iter()
            .filter(|c| Some(usize::from(c.index())) != skip)
        {
            // A vCPU whose thread has ended is as paused as it gets.
            if c.send(VcpuMsg::Pause(tx.clone())).is_ok() {
                waiting.push(c.index());
            }
        }
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while !waiting.is_empty() {
            match rx.recv_deadline(deadline) {
                Ok(i) => waiting.retain(|&w| w != i),
                Err(_) => {
                    return Err(TargetError::Vm {
                        what: "pausing the vCPUs",
                        reason: format!(
                            "vCPU {} did not leave KVM_RUN within {PAUSE_TIMEOUT:?}",
                            waiting[0]
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn resume_where(&self, skip: Option<usize>) -> Result<(), TargetError> {
        for c in self
            .vcpus
            .iter()
            .filter(|c| Some(usize::from(c.index())) != skip)
        {
            // Ignore vCPUs that have ended.
            let _ = c.send(VcpuMsg::Resume);
        }
        Ok(())
    }
}

impl VmTarget {
    /// Lets vCPU `index` alone run again (undoes one pause of it): a client's single-step.
    pub fn resume_one(&self, index: usize) -> Result<(), TargetError> {
        let c = self.vcpus.get(index).ok_or(TargetError::NoVcpu(index))?;
        c.send(VcpuMsg::Resume).map_err(vm_err("resuming a vCPU"))
    }
}

impl PhysMem for VmTarget {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        self.mem.read_phys(gpa, buf)
    }
}

impl PhysMemMut for VmTarget {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        self.mem.write_phys(gpa, buf)
    }
}

impl Target for VmTarget {
    fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    fn pause_all(&self) -> Result<(), TargetError> {
        self.pause_where(None)
    }

    fn resume_all(&self) -> Result<(), TargetError> {
        self.resume_where(None)
    }

    fn pause_others(&self, me: usize) -> Result<(), TargetError> {
        self.pause_where(Some(me))
    }

    fn resume_others(&self, me: usize) -> Result<(), TargetError> {
        self.resume_where(Some(me))
    }

    fn with_vcpu(&self, index: usize, f: VcpuJob) -> Result<(), TargetError> {
        let c = self.vcpus.get(index).ok_or(TargetError::NoVcpu(index))?;
        c.with(move |ctx| f(ctx), Duration::from_secs(5))
            .map_err(vm_err("running a job on a vCPU"))
    }
}

fn to_regs(r: &kvm_regs) -> Regs {
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn from_regs(r: &Regs) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// The KVM_SET_GUEST_DEBUG argument for `d`. Interrupts are blocked while single-stepping
/// so a step ends after the stepped instruction, not inside an interrupt handler.
pub fn guest_debug(d: &GuestDebug) -> kvm_guest_debug {
    let mut control = 0;
    if d.single_step {
        control |= KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ;
    }
    if d.intercept_int3 {
        control |= KVM_GUESTDBG_USE_SW_BP;
    }
    if d.hw_breakpoints {
        control |= KVM_GUESTDBG_USE_HW_BP;
    }
    if control != 0 {
        control |= KVM_GUESTDBG_ENABLE;
    }
    let mut dbg = kvm_guest_debug {
        control,
        ..Default::default()
    };
    dbg.arch.debugreg[..4].copy_from_slice(&d.dr);
    dbg.arch.debugreg[7] = d.dr7;
    dbg
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> TargetError {
    move |e| TargetError::Vm {
        what,
        reason: e.to_string(),
    }
}

impl VcpuAccess for VcpuCtx<'_> {
    fn index(&self) -> usize {
        usize::from(self.index)
    }

    fn regs(&self) -> Result<Regs, TargetError> {
        VcpuCtx::regs(self)
            .map(|r| to_regs(&r))
            .map_err(kvm("KVM_GET_REGS"))
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<(), TargetError> {
        VcpuCtx::set_regs(self, &from_regs(regs)).map_err(kvm("KVM_SET_REGS"))
    }

    fn paging(&self) -> Result<PagingContext, TargetError> {
        let s = self.sregs().map_err(kvm("KVM_GET_SREGS"))?;
        Ok(PagingContext {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            max_phys_bits: 52,
        })
    }

    fn set_debug(&mut self, debug: &GuestDebug) -> Result<(), TargetError> {
        let dbg = guest_debug(debug);
        match VcpuCtx::set_guest_debug(self, &dbg) {
            // Kernels before 5.17 lack BLOCKIRQ: step without it rather than not at all.
            Err(e) if e.errno() == libc::EINVAL && dbg.control & KVM_GUESTDBG_BLOCKIRQ != 0 => {
                let mut plain = dbg;
                plain.control &= !KVM_GUESTDBG_BLOCKIRQ;
                VcpuCtx::set_guest_debug(self, &plain).map_err(kvm("KVM_SET_GUEST_DEBUG"))
            }
            r => r.map_err(kvm("KVM_SET_GUEST_DEBUG")),
        }
    }

    fn inject_breakpoint(&mut self) -> Result<(), TargetError> {
        let mut ev = self
            .fd()
            .get_vcpu_events()
            .map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 1;
        ev.exception.nr = 3;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        self.fd()
            .set_vcpu_events(&ev)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))
    }
}
