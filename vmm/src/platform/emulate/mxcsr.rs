//! `ldmxcsr m32` and `stmxcsr m32`: MXCSR from and to memory (KVM_GET_FPU / KVM_SET_FPU).

use super::operands::{Ctx, Stop};
use super::{CR0_EM, CR0_TS, CR4_OSFXSR, Exception};

/// The MXCSR bits the guest may set (the MXCSR_MASK hvprobe reports: all 16 low bits,
/// DAZ included); setting any other bit with `ldmxcsr` or `fxrstor` is #GP(0).
pub const MXCSR_MASK: u32 = 0xffff;

/// The checks of SSE state instructions: #UD without OS support (CR4.OSFXSR) or with
/// CR0.EM, #NM with CR0.TS.
pub fn check_sse(c: &Ctx<'_>) -> Result<(), Stop> {
    if c.sregs.cr0 & CR0_EM != 0 || c.sregs.cr4 & CR4_OSFXSR == 0 {
        return Err(Stop::Fault(Exception::InvalidOpcode));
    }
    if c.sregs.cr0 & CR0_TS != 0 {
        return Err(Stop::Fault(Exception::DeviceNotAvailable));
    }
    Ok(())
}

/// `ldmxcsr m32`: loads MXCSR; reserved bits set (outside [`MXCSR_MASK`]) is #GP(0).
pub fn ldmxcsr(c: &mut Ctx<'_>) -> Result<(), Stop> {
    check_sse(c)?;
    let value = u32::from_le_bytes(c.read_mem::<4>(0)?);
    if value & !MXCSR_MASK != 0 {
        return Err(Stop::Fault(Exception::GeneralProtection));
    }
    let mut fpu = c.cpu.fpu()?;
    fpu.mxcsr = value;
    c.cpu.set_fpu(&fpu)?;
    Ok(())
}

/// `stmxcsr m32`: stores MXCSR.
pub fn stmxcsr(c: &mut Ctx<'_>) -> Result<(), Stop> {
    check_sse(c)?;
    let addr = c.mem_address(0)?;
    let fpu = c.cpu.fpu()?;
    c.guest.write(addr, 4, &fpu.mxcsr.to_le_bytes())?;
    Ok(())
}
