//! DR7 encoding and DR6 decoding (Intel SDM vol. 3, 18.2 "Debug Registers").

use super::{BreakpointKind, BreakpointLen, SLOTS};

/// DR7 bit 10: reserved, reads as 1 (DR7's reset value is `0x400`).
pub const DR7_FIXED_1: u64 = 1 << 10;
/// DR6.BS (bit 14): the exit is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;
/// DR6.B0-B3 (bits 0-3): which slot's condition was met.
const DR6_B_MASK: u64 = 0xf;

/// DR7.Ln (bit `2n`): the local enable bit of slot `n` (0-3).
pub const fn dr7_slot_enable(slot: u8) -> u64 {
    1 << (2 * (slot as u32))
}

/// The DR7 bits that enable slot `slot` (0-3) for `kind` and `len`: Ln, R/Wn at bits
/// `16 + 4n` (00 execute, 01 write, 11 read/write) and LENn at bits `18 + 4n` (00 one byte,
/// 01 two, 11 four, 10 eight).
pub const fn dr7_slot_bits(slot: u8, kind: BreakpointKind, len: BreakpointLen) -> u64 {
    let rw: u64 = match kind {
        BreakpointKind::Execute => 0b00,
        BreakpointKind::Write => 0b01,
        BreakpointKind::ReadWrite => 0b11,
    };
    let len: u64 = match len {
        BreakpointLen::One => 0b00,
        BreakpointLen::Two => 0b01,
        BreakpointLen::Four => 0b11,
        BreakpointLen::Eight => 0b10,
    };
    let shift = 16 + 4 * (slot as u32);
    dr7_slot_enable(slot) | ((rw | (len << 2)) << shift)
}

/// What a DR6 value reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dr6Hits {
    /// The slots (0-3) whose condition was met, ascending (B0-B3; several data watchpoints
    /// can fire on one instruction).
    pub slots: Vec<u8>,
    /// DR6.BS: a single-step trap.
    pub single_step: bool,
}

impl Dr6Hits {
    /// The fired slots as a bit mask (bit `n` for slot `n`).
    pub fn mask(&self) -> u8 {
        self.slots.iter().fold(0, |m, &s| m | (1 << s))
    }
}

/// Decodes the B0-B3 and BS bits of `dr6`; every other bit (the active-low reserved ones KVM
/// reports as 1, BD, BT, RTM) is ignored.
pub fn decode_dr6(dr6: u64) -> Dr6Hits {
    let b = dr6 & DR6_B_MASK;
    Dr6Hits {
        slots: (0..SLOTS)
            .filter_map(|s| u8::try_from(s).ok())
            .filter(|&s| b & (1 << s) != 0)
            .collect(),
        single_step: dr6 & DR6_BS != 0,
    }
}
