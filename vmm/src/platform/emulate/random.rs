//! `rdrand` and `rdseed`: random numbers from the host kernel (getrandom(2)).

use super::operands::{Ctx, Stop, write_gpr};
use super::{ARITH_FLAGS, FLAG_CF};

/// `rdrand r` / `rdseed r` (16, 32, 64 bits): a random value and CF=1; OF, SF, ZF, AF and
/// PF cleared. If the host has no randomness to give, the destination is 0 and CF=0, which
/// is the architectural "try again" answer.
pub fn rdrand(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let (dst, size) = c.reg_operand(0)?;
    let mut buf = [0u8; 8];
    let ok = host_random(&mut buf[..size]);
    let value = if ok { u64::from_le_bytes(buf) } else { 0 };
    write_gpr(&mut c.regs, dst, value)?;
    c.regs.rflags &= !ARITH_FLAGS;
    if ok {
        c.regs.rflags |= FLAG_CF;
    }
    Ok(())
}

/// Fills `buf` from getrandom(2) without blocking; false if it could not be filled.
fn host_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable byte slice that
        // getrandom fills at most `rest.len()` bytes of.
        let n = unsafe {
            libc::getrandom(
                rest.as_mut_ptr().cast::<libc::c_void>(),
                rest.len(),
                libc::GRND_NONBLOCK,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => done += n,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return false,
        }
    }
    true
}
