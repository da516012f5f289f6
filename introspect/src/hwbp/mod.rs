//! Hardware breakpoints and watchpoints: a slot manager over the four debug registers
//! (DR0-DR3), the hypervisor-level counterpart of the kernel's perf hardware-breakpoint layer
//! (seed 004).
//!
//! - [`Request`]: what a user asks for (address, [`BreakpointKind`], [`BreakpointLen`], pinned
//!   or flexible, and who asked), checked by [`Request::validate`].
//! - [`SlotManager`]: which request holds which slot. Pinned requests take a slot or fail with
//!   [`HwbpError::NoSlot`] naming the holders; flexible ones take a free slot or wait and share
//!   the slots pinned ones leave round-robin ([`SlotManager::rotate`], like perf's flexible
//!   groups). [`SlotManager::modify`] keeps a breakpoint's slot (the FIXME in seed 004).
//!   [`SlotManager::debug_state`] encodes DR0-DR3 / DR7, applied to every vCPU with
//!   [`SlotManager::apply_all`] (and to one reset vCPU with [`SlotManager::apply_to`]).
//! - [`decode_dr6`] / [`SlotManager::hit_breakpoints`]: which slots fired at a debug exit.
//! - [`ExecStepper`]: gets one vCPU past an execute breakpoint, with RFLAGS.RF where the
//!   hypervisor honours it and by disabling the slot for one single-step where it does not
//!   (our software KVM's emulated ring 0), detected automatically.
//!
//! Everything here is pure logic over the [`crate::target`] seam: data watchpoints never fire
//! on our software KVM, so their encoding and dispatch are tested against a mock.

mod dr7;
mod slots;
mod step;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::addr::Gva;

pub use dr7::{DR6_BS, DR7_FIXED_1, Dr6Hits, decode_dr6, dr7_slot_bits, dr7_slot_enable};
pub use slots::{SLOTS, SlotManager};
pub use step::{ExecStepper, StepMode, StepOutcome};

/// What access a debug register slot traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakpointKind {
    /// Instruction fetch: fires before the instruction at the address runs (a fault).
    Execute,
    /// Data writes: fires after the writing instruction (a trap).
    Write,
    /// Data reads or writes: fires after the accessing instruction (a trap).
    ReadWrite,
}

impl fmt::Display for BreakpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakpointKind::Execute => "execute",
            BreakpointKind::Write => "write",
            BreakpointKind::ReadWrite => "read/write",
        })
    }
}

/// How many bytes a slot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakpointLen {
    /// 1 byte (the only length for execute breakpoints).
    One,
    /// 2 bytes, 2-byte aligned.
    Two,
    /// 4 bytes, 4-byte aligned.
    Four,
    /// 8 bytes, 8-byte aligned.
    Eight,
}

impl BreakpointLen {
    /// The length in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            BreakpointLen::One => 1,
            BreakpointLen::Two => 2,
            BreakpointLen::Four => 4,
            BreakpointLen::Eight => 8,
        }
    }

    /// The length for `bytes`, or [`HwbpError::BadLength`] unless it is 1, 2, 4 or 8.
    pub const fn from_bytes(bytes: u64) -> Result<Self, HwbpError> {
        match bytes {
            1 => Ok(BreakpointLen::One),
            2 => Ok(BreakpointLen::Two),
            4 => Ok(BreakpointLen::Four),
            8 => Ok(BreakpointLen::Eight),
            len => Err(HwbpError::BadLength { len }),
        }
    }
}

impl TryFrom<u64> for BreakpointLen {
    type Error = HwbpError;
    fn try_from(bytes: u64) -> Result<Self, HwbpError> {
        BreakpointLen::from_bytes(bytes)
    }
}

impl fmt::Display for BreakpointLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

/// A hardware breakpoint or watchpoint as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The guest-virtual (linear) address.
    pub addr: Gva,
    /// What access fires.
    pub kind: BreakpointKind,
    /// How many bytes it covers (1 for execute).
    pub len: BreakpointLen,
    /// Pinned requests hold a slot or fail; flexible ones may wait and share slots.
    pub pinned: bool,
    /// Who asked, for messages: e.g. `--hbreak start_kernel`, `--watch jiffies`.
    pub owner: String,
}

impl Request {
    /// A flexible request; see [`Request::pinned`].
    pub fn new(
        addr: Gva,
        kind: BreakpointKind,
        len: BreakpointLen,
        owner: impl Into<String>,
    ) -> Self {
        Request {
            addr,
            kind,
            len,
            pinned: false,
            owner: owner.into(),
        }
    }

    /// A flexible execute breakpoint (length 1) at `addr`.
    pub fn execute(addr: Gva, owner: impl Into<String>) -> Self {
        Request::new(addr, BreakpointKind::Execute, BreakpointLen::One, owner)
    }

    /// A flexible data watchpoint (`kind` write or read/write) of `len` bytes at `addr`.
    pub fn watch(
        addr: Gva,
        kind: BreakpointKind,
        len: BreakpointLen,
        owner: impl Into<String>,
    ) -> Self {
        Request::new(addr, kind, len, owner)
    }

    /// This request, pinned.
    #[must_use]
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// Checks what the hardware requires: execute breakpoints have length 1, data watchpoints
    /// are naturally aligned, the address is canonical (57-bit if `la57`, else 48-bit).
    pub fn validate(&self, la57: bool) -> Result<(), HwbpError> {
        if !self.addr.is_canonical(la57) {
            return Err(HwbpError::NonCanonical {
                owner: self.owner.clone(),
                addr: self.addr,
            });
        }
        let len = self.len.bytes();
        if self.kind == BreakpointKind::Execute && len != 1 {
            return Err(HwbpError::ExecuteLength {
                owner: self.owner.clone(),
                len,
            });
        }
        if self.addr.raw() % len != 0 {
            return Err(HwbpError::Misaligned {
                owner: self.owner.clone(),
                addr: self.addr,
                len,
                aligned_down: Gva(self.addr.raw() & !(len - 1)),
            });
        }
        Ok(())
    }
}

/// The stable id of a registered breakpoint: it survives [`SlotManager::modify`], eviction
/// and rotation, and is never reused by one [`SlotManager`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BreakpointId(u64);

impl BreakpointId {
    /// The id as a number.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BreakpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hwbp#{}", self.0)
    }
}

/// Errors of the hardware breakpoint slot manager.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HwbpError {
    /// An execute breakpoint with a length other than 1.
    #[error(
        "{owner}: an execute breakpoint covers 1 byte, not {len}; to watch {len} bytes use a \
         write or read/write watchpoint"
    )]
    ExecuteLength {
        /// Who asked.
        owner: String,
        /// The length asked for.
        len: u64,
    },
    /// A length the debug registers cannot watch.
    #[error("Debug registers watch 1, 2, 4 or 8 bytes, not {len}")]
    BadLength {
        /// The length asked for.
        len: u64,
    },
    /// A data watchpoint not aligned to its length.
    #[error(
        "{owner}: a {len}-byte watchpoint needs a {len}-byte aligned address (address % {len} \
         == 0), and {addr} is not; watch {aligned_down} or use a shorter length"
    )]
    Misaligned {
        /// Who asked.
        owner: String,
        /// The address asked for.
        addr: Gva,
        /// The length asked for.
        len: u64,
        /// The nearest aligned address below.
        aligned_down: Gva,
    },
    /// An address no access can reach.
    #[error("{owner}: {addr} is not a canonical address, so no access can ever reach it")]
    NonCanonical {
        /// Who asked.
        owner: String,
        /// The address asked for.
        addr: Gva,
    },
    /// A pinned request found every slot held by pinned breakpoints.
    #[error("No debug register slot free: held by {}", held_by.join(", "))]
    NoSlot {
        /// The owners of the pinned breakpoints in DR0-DR3, in slot order.
        held_by: Vec<String>,
    },
    /// No breakpoint has this id (never registered, or removed).
    #[error("No hardware breakpoint has id {0}")]
    UnknownId(BreakpointId),
}
