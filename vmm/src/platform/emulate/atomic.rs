//! `cmpxchg16b m128`, made atomic by pausing every other vCPU around the compare and write.
//!
//! Only one vCPU at a time may be in here: two vCPUs pausing each other from their exit
//! handlers would each wait for the other forever. A vCPU that finds the section taken (or
//! cannot pause the others) leaves everything unchanged and asks to be retried.

use super::access::Kind;
use super::operands::{Ctx, Stop};
use super::{Exception, FLAG_ZF};

/// `cmpxchg16b m128`: if RDX:RAX equals the 16 bytes, store RCX:RBX there and set ZF;
/// otherwise load them into RDX:RAX and clear ZF (the memory is written back unchanged, so
/// the access is a write either way). Other flags are unchanged. #GP(0) unless 16-byte
/// aligned.
pub fn cmpxchg16b(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let addr = c.mem_address(0)?;
    if addr % 16 != 0 {
        return Err(Stop::Fault(Exception::GeneralProtection));
    }
    let atomic = c.atomic;
    let _section = match atomic.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return Err(Stop::Retry(
                "another vCPU is inside an emulated atomic".into(),
            ));
        }
    };
    // Faults first (a locked access checks for write even when the compare fails), before
    // anyone is paused.
    c.guest.check(addr, 16, Kind::Write)?;
    let paused = c
        .cpu
        .pause_others()
        .map_err(|e| Stop::Retry(e.to_string()))?;
    let mut old = [0u8; 16];
    c.guest.read(addr, &mut old, Kind::Write)?;
    let lo = u64::from_le_bytes(old[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(old[8..].try_into().unwrap_or_default());
    let equal = lo == c.regs.rax && hi == c.regs.rdx;
    let new = if equal {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&c.regs.rbx.to_le_bytes());
        n[8..].copy_from_slice(&c.regs.rcx.to_le_bytes());
        n
    } else {
        old
    };
    let written = c.guest.write(addr, 16, &new);
    drop(paused);
    written?;
    if equal {
        c.regs.rflags |= FLAG_ZF;
    } else {
        c.regs.rflags &= !FLAG_ZF;
        c.regs.rax = lo;
        c.regs.rdx = hi;
    }
    Ok(())
}
