//! [`ProbeError`]: why a probe could not be placed, armed, disarmed or handled.

use disasm::CannotProbe;

use super::ProbeId;
use crate::addr::{Gpa, Gva};
use crate::paging::{PhysMemError, VirtError, WalkError};
use crate::symbols::ResolveError;
use crate::target::TargetError;

/// Why a probe operation failed. Every refusal says why, in a line a CLI can print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The address expression did not resolve (unknown symbol, bad syntax).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The symbol at the address is not code.
    #[error(
        "{addr} ({symbol}) is data (symbol type '{kind}'), not code: probes go on instructions"
    )]
    Data {
        /// The address.
        addr: Gva,
        /// `symbol+offset`.
        symbol: String,
        /// The symbol's `nm` type letter.
        kind: char,
    },
    /// The address is outside the kernel text (checked when the symbols have no types).
    #[error("{addr} is outside the kernel text (_stext {stext:#x} .. _etext {etext:#x}): not code")]
    OutsideText {
        /// The address.
        addr: Gva,
        /// `_stext`.
        stext: u64,
        /// `_etext`.
        etext: u64,
    },
    /// The page holding the address is not executable.
    #[error("{addr} is on a non-executable page: not code")]
    NotExecutable {
        /// The address.
        addr: Gva,
    },
    /// No symbol at or below the address: its function, hence its instruction boundaries,
    /// are unknown.
    #[error(
        "{addr} has no symbol at or below it: cannot find its function to check instruction boundaries"
    )]
    NoFunction {
        /// The address.
        addr: Gva,
    },
    /// The address is past the end of the function its symbol names.
    #[error("{addr} ({symbol}) is past the end of {function} ({size:#x} bytes)")]
    NotInFunction {
        /// The address.
        addr: Gva,
        /// `symbol+offset`.
        symbol: String,
        /// The function's name.
        function: String,
        /// The function's size.
        size: u64,
    },
    /// The address is in code the guest's int3 / debug / NMI handling (or hvprobe) runs.
    #[error("Refusing to probe {addr} ({symbol}): {why}")]
    Denied {
        /// The address.
        addr: Gva,
        /// `symbol+offset`.
        symbol: String,
        /// Why that code must not be probed.
        why: String,
    },
    /// The instruction analysis refused the address (not on an instruction boundary,
    /// undecodable bytes, already an int3).
    #[error("Cannot probe {symbol}: {reason}")]
    CannotProbe {
        /// The address.
        addr: Gva,
        /// `symbol+offset`, or the address when there are no symbols.
        symbol: String,
        /// What the analysis found.
        reason: CannotProbe,
    },
    /// A jump was asked for (`:jump`) where one cannot go.
    #[error("{symbol}: cannot be jump-optimized: {reason} (use :int3 or :auto)")]
    CannotJump {
        /// The address.
        addr: Gva,
        /// `symbol+offset`, or the address when there are no symbols.
        symbol: String,
        /// Why.
        reason: String,
    },
    /// Another probed address maps to the same guest-physical byte.
    #[error("{addr} maps to {gpa}, already probed through {other}")]
    Alias {
        /// The address.
        addr: Gva,
        /// The probed alias.
        other: Gva,
        /// The byte both map to.
        gpa: Gpa,
    },
    /// No probe is registered at the address.
    #[error("No probe is registered at {0}")]
    NoProbeAt(Gva),
    /// The probe does not exist (never registered, or unregistered).
    #[error("There is no {0}")]
    UnknownProbe(ProbeId),
    /// The address does not translate with vCPU 0's page tables.
    #[error("Cannot translate {addr} with vCPU 0's page tables")]
    Translate {
        /// The address.
        addr: Gva,
        /// Why.
        #[source]
        source: WalkError,
    },
    /// The code around the address could not be read.
    #[error("Cannot read the code at {addr}")]
    Read {
        /// The address.
        addr: Gva,
        /// Why.
        #[source]
        source: VirtError,
    },
    /// Guest memory could not be patched (or its byte read).
    #[error("Cannot patch guest memory at {gpa}")]
    Patch {
        /// The byte.
        gpa: Gpa,
        /// Why.
        #[source]
        source: PhysMemError,
    },
    /// The VM refused an operation (pause, registers, debug state).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The trampoline arena cannot be used.
    #[error(transparent)]
    Arena(#[from] super::arena::ArenaError),
}
