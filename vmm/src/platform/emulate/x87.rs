//! x87 control: `fwait` (report a pending x87 error), `fninit` and `fnclex`.
//!
//! The state lives in KVM's `kvm_fpu` (KVM_GET_FPU / KVM_SET_FPU): FCW, FSW (with TOP), the
//! abridged tag word, the last opcode and instruction/data pointers.

use super::operands::{Ctx, Stop};
use super::{CR0_EM, CR0_MP, CR0_NE, CR0_TS, Exception};

/// FSW.ES: an unmasked x87 exception is pending.
pub const FSW_ES: u16 = 1 << 7;
/// The FSW bits `fnclex` clears: exception flags (IE..PE), SF, ES and B.
pub const FSW_CLEX: u16 = 0x80ff;
/// FCW after `fninit`: every exception masked, 64-bit precision, round to nearest.
pub const FCW_INIT: u16 = 0x037f;

/// `fwait`/`wait`: #NM when CR0.TS and CR0.MP are both set; #MF when an unmasked x87
/// exception is pending (FSW.ES) and CR0.NE says to report it that way; otherwise nothing.
pub fn fwait(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let cr0 = c.sregs.cr0;
    if cr0 & CR0_TS != 0 && cr0 & CR0_MP != 0 {
        return Err(Stop::Fault(Exception::DeviceNotAvailable));
    }
    let fpu = c.cpu.fpu()?;
    if fpu.fsw & FSW_ES != 0 {
        if cr0 & CR0_NE != 0 {
            return Err(Stop::Fault(Exception::MathFault));
        }
        return Err(Stop::Refuse(
            "x87 exception pending with CR0.NE=0: legacy FERR# reporting is not emulated".into(),
        ));
    }
    Ok(())
}

/// #NM for the x87 instructions that do not wait: CR0.EM or CR0.TS.
fn check_x87(c: &Ctx<'_>) -> Result<(), Stop> {
    if c.sregs.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Stop::Fault(Exception::DeviceNotAvailable));
    }
    Ok(())
}

/// `fninit`: the x87 unit's default state (FCW 0x37F, FSW 0, all registers empty, pointers
/// and opcode 0). Register contents and SSE state are kept.
pub fn fninit(c: &mut Ctx<'_>) -> Result<(), Stop> {
    check_x87(c)?;
    let mut fpu = c.cpu.fpu()?;
    fpu.fcw = FCW_INIT;
    fpu.fsw = 0;
    fpu.ftwx = 0;
    fpu.last_opcode = 0;
    fpu.last_ip = 0;
    fpu.last_dp = 0;
    c.cpu.set_fpu(&fpu)?;
    Ok(())
}

/// `fnclex`: clears the exception flags, SF, ES and B of FSW (TOP and C0-C3 stay).
pub fn fnclex(c: &mut Ctx<'_>) -> Result<(), Stop> {
    check_x87(c)?;
    let mut fpu = c.cpu.fpu()?;
    fpu.fsw &= !FSW_CLEX;
    c.cpu.set_fpu(&fpu)?;
    Ok(())
}
