//! System instructions: `xgetbv`, `clac` and `stac`.

use super::access::RFLAGS_AC;
use super::operands::{Ctx, Stop};
use super::{CR4_OSXSAVE, Exception};

/// `xgetbv`: ECX=0 gives XCR0 in EDX:EAX (upper halves of RDX/RAX zeroed). #UD unless
/// CR4.OSXSAVE; any other ECX is #GP(0) (hvprobe does not offer XGETBV with ECX=1).
pub fn xgetbv(c: &mut Ctx<'_>) -> Result<(), Stop> {
    if c.sregs.cr4 & CR4_OSXSAVE == 0 {
        return Err(Stop::Fault(Exception::InvalidOpcode));
    }
    if c.regs.rcx & 0xffff_ffff != 0 {
        return Err(Stop::Fault(Exception::GeneralProtection));
    }
    let xcr0 = c.cpu.xcr0()?;
    c.regs.rax = xcr0 & 0xffff_ffff;
    c.regs.rdx = xcr0 >> 32;
    Ok(())
}

/// `clac` (`set` false) / `stac` (`set` true): RFLAGS.AC. #UD outside CPL 0.
pub fn set_ac(c: &mut Ctx<'_>, set: bool) -> Result<(), Stop> {
    if c.cpl != 0 {
        return Err(Stop::Fault(Exception::InvalidOpcode));
    }
    if set {
        c.regs.rflags |= RFLAGS_AC;
    } else {
        c.regs.rflags &= !RFLAGS_AC;
    }
    Ok(())
}
