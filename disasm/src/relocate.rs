//! Relocation of displaced instructions into a trampoline with iced's `BlockEncoder`, which
//! fixes relative branches and RIP-relative operands.

use iced_x86::{BlockEncoder, BlockEncoderOptions, InstructionBlock};

use crate::{DecodeError, InsnKind, decode, offset};

/// How far (in bytes) a relocated instruction may land from `to` when checking reach: more
/// than any relocated block of displaced instructions grows to.
const BLOCK_SLACK: i64 = 4096;

/// Displaced instructions re-encoded at a new address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocated {
    /// The new code, to be placed at the `to` address given to [`relocate`].
    pub code: Vec<u8>,
    /// For each instruction, its original address and its address in the new code (in
    /// order): where a vCPU stopped inside the new code would have been in the original.
    pub map: Vec<(u64, u64)>,
}

/// Why instructions cannot be relocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    /// The bytes do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A branch target or RIP-relative operand would be beyond +/-2 GiB of the new code.
    #[error(
        "`{insn_text}` at {insn_ip:#x} refers to {target:#x}, beyond +/-2 GiB of {to:#x}: \
         place the trampoline closer"
    )]
    OutOfRange {
        /// The instruction's original address.
        insn_ip: u64,
        /// It, in Intel syntax.
        insn_text: String,
        /// The address it jumps to or accesses.
        target: u64,
        /// Where the code was to go.
        to: u64,
    },
    /// iced's block encoder refused the code.
    #[error("Cannot re-encode the instructions at {to:#x}: {message}")]
    Encode {
        /// Where the code was to go.
        to: u64,
        /// The encoder's message.
        message: String,
    },
}

/// Decodes all of `insns_bytes` (instructions at address `from`) and re-encodes them at `to`,
/// keeping every relative branch and RIP-relative operand pointing where it did. Short
/// branches that no longer reach become near ones. A target beyond +/-2 GiB of `to` is an
/// [`RelocateError::OutOfRange`] (never turned into an indirect jump).
pub fn relocate(insns_bytes: &[u8], from: u64, to: u64) -> Result<Relocated, RelocateError> {
    let end = from.saturating_add(insns_bytes.len() as u64);
    let mut instrs = Vec::new();
    let mut ips = Vec::new();
    let mut ip = from;
    while ip < end {
        let insn = decode(&insns_bytes[offset(from, ip)..], ip)?;
        let target = match insn.kind {
            InsnKind::RelJmp { target }
            | InsnKind::RelJcc { target }
            | InsnKind::RelCall { target }
            | InsnKind::RipRelative { target } => Some(target),
            _ => None,
        };
        if let Some(target) = target {
            let distance = i128::from(target) - i128::from(to);
            let reach = i128::from(i32::MAX) - i128::from(BLOCK_SLACK);
            if !(-reach..=reach).contains(&distance) {
                return Err(RelocateError::OutOfRange {
                    insn_ip: insn.ip,
                    insn_text: insn.to_string(),
                    target,
                    to,
                });
            }
        }
        ips.push(insn.ip);
        instrs.push(insn.instr);
        ip = insn.next_ip();
    }
    let block = InstructionBlock::new(&instrs, to);
    let result = BlockEncoder::encode(
        64,
        block,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )
    .map_err(|e| RelocateError::Encode {
        to,
        message: e.to_string(),
    })?;
    // The new code must not run past the top of the address space (its addresses would wrap).
    let last = (result.code_buffer.len() as u64).saturating_sub(1);
    if to.checked_add(last).is_none() {
        return Err(RelocateError::Encode {
            to,
            message: format!(
                "{} bytes of code at {to:#x} would run past the top of the address space",
                result.code_buffer.len()
            ),
        });
    }
    // An instruction the encoder had to rewrite into several (`jrcxz` or `loop` whose target
    // is out of a short branch's reach) has no offset of its own (u32::MAX): no address in
    // the new code stands for it, so such code is not relocated.
    if let Some(i) = result
        .new_instruction_offsets
        .iter()
        .position(|&off| off == u32::MAX)
    {
        return Err(RelocateError::Encode {
            to,
            message: format!(
                "the instruction at {:#x} would be rewritten into several instructions",
                ips.get(i).copied().unwrap_or(from)
            ),
        });
    }
    let map = ips
        .into_iter()
        .zip(result.new_instruction_offsets)
        .map(|(old, off)| (old, to.wrapping_add(u64::from(off))))
        .collect();
    Ok(Relocated {
        code: result.code_buffer,
        map,
    })
}
