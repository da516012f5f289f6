//! `popcnt r, r/m` (16, 32 and 64 bits).

use super::operands::{Ctx, Stop, read_gpr, write_gpr};
use super::{ARITH_FLAGS, FLAG_ZF};

/// `popcnt`: the number of set bits of the source into the destination. OF, SF, AF, CF and
/// PF are cleared; ZF is set when the source is zero (SDM, POPCNT).
pub fn popcnt(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let (dst, size) = c.reg_operand(0)?;
    let src = match c.insn.op_kind(1) {
        iced_x86::OpKind::Register => {
            let (r, _) = c.reg_operand(1)?;
            read_gpr(&c.regs, r).ok_or_else(|| Stop::Refuse(format!("cannot read {r:?}")))?
        }
        _ => match size {
            2 => u64::from(u16::from_le_bytes(c.read_mem::<2>(1)?)),
            4 => u64::from(u32::from_le_bytes(c.read_mem::<4>(1)?)),
            _ => u64::from_le_bytes(c.read_mem::<8>(1)?),
        },
    };
    write_gpr(&mut c.regs, dst, u64::from(src.count_ones()))?;
    c.regs.rflags &= !ARITH_FLAGS;
    if src == 0 {
        c.regs.rflags |= FLAG_ZF;
    }
    Ok(())
}
