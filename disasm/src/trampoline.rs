//! Trampolines (kprobes' "detour buffers") for jump-optimized probes: the code a probed
//! address's `jmp rel32` leads to.
//!
//! ```text
//! site:  jmp slot                  slot:  handler part (below)
//!        <rest of the function>           relocated displaced instructions
//!                                          jmp site+len
//! ```
//! Two handler parts:
//! - [`Handler::Exit`]: one `mov dword ptr [rip+doorbell], TAG`. The doorbell page is not
//!   guest RAM, so the write exits to the VMM, which reads the registers KVM saved at the exit:
//!   the instruction changes no register and no flag, so they are the probed context exactly
//!   (only RIP differs). Saving and restoring registers is what the exit itself does.
//! - [`Handler::InGuest`]: no exit. Skips the 128-byte red zone, saves RFLAGS, RAX, RCX, RDX
//!   and RBX on the stack, reads the TSC and the CPU number with `rdtscp` (TSC_AUX: Linux
//!   keeps `node << 12 | cpu` there, hvprobe sets the vCPU index for its own guests), reserves
//!   a record in that CPU's ring with `lock cmpxchg` on the ring's head (safe against an
//!   interrupt on the same CPU re-entering the trampoline, and against migration), fills it
//!   (tag, TSC, up to [`MAX_FETCHES`] chosen registers or memory words) and commits it by
//!   writing its sequence number last. A full ring (or a CPU number beyond the rings) counts
//!   in the slot's `lost` counter instead. Then it restores everything.
//!
//! Ring layout (the host side reads the same): a ring is a 128-byte header (`head` at +0,
//! written by trampolines; `tail` at +[`RING_TAIL`], written by the host) followed by
//! `capacity` records of [`RECORD_SIZE`] bytes: +0 u32 sequence (reservation index + 1,
//! written last), +4 u32 tag, +8 u64 TSC, +16 the fetched values (u64 each).

use iced_x86::code_asm::{
    AsmRegister64, CodeAssembler, dword_ptr, ecx, get_gpr64, qword_ptr, rax, rbx, rcx, rdx, rsp,
};
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand, Register};

use crate::{Gpr, JUMP_LEN, RelocateError, relocate};

/// Bytes of one ring record.
pub const RECORD_SIZE: u64 = 64;
/// Offset of the first record in a ring (after the header).
pub const RING_RECORDS: u64 = 128;
/// Offset of a ring's `tail` word.
pub const RING_TAIL: u64 = 64;
/// Offset of the fetched values in a record.
pub const RECORD_VALUES: u64 = 16;
/// How many values a record holds.
pub const MAX_FETCHES: usize = 6;
/// The red zone below RSP that x86-64 user code may use without moving RSP: the in-guest
/// handler leaves it alone.
const RED_ZONE: i32 = 128;
/// [`RING_TAIL`], [`RING_RECORDS`] and [`RECORD_VALUES`] as displacements.
const TAIL_DISP: i32 = 64;
const RECORDS_DISP: i32 = 128;
const VALUES_DISP: i32 = 16;
const _: () = assert!(
    TAIL_DISP as u64 == RING_TAIL
        && RECORDS_DISP as u64 == RING_RECORDS
        && VALUES_DISP as u64 == RECORD_VALUES
);

/// A value an in-guest handler records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fetch {
    /// A register's value at the probed instruction.
    Reg(Gpr),
    /// RFLAGS at the probed instruction.
    Rflags,
    /// The 8 bytes at a guest-virtual address (a global variable). The trampoline reads it
    /// without a fault handler: the caller checks that it is mapped.
    Mem(u64),
}

/// How an in-guest handler finds its CPU's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuSource {
    /// `rdtscp`: TSC and TSC_AUX (the CPU number) in one instruction.
    #[default]
    Rdtscp,
    /// `rdtsc`, and every CPU writes ring 0 (the reservation is safe for several writers):
    /// for guests whose ring-0 code runs on an instruction emulator without `rdtscp` (our
    /// software KVM). Records then do not say which vCPU wrote them.
    SharedRing,
}

/// Where an in-guest handler writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSpec {
    /// How the trampoline picks its ring.
    pub cpu: CpuSource,
    /// Guest-virtual address of ring 0.
    pub rings: u64,
    /// How many rings (one per CPU number).
    pub ring_count: u32,
    /// Bytes from one ring to the next.
    pub ring_stride: u32,
    /// Records per ring: a power of two.
    pub capacity: u32,
    /// Guest-virtual address of the slot's u64 `lost` counter.
    pub lost: u64,
    /// What each record holds, in order (at most [`MAX_FETCHES`]).
    pub fetches: Vec<Fetch>,
}

/// What a trampoline does before the relocated instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Write the tag to the doorbell at this guest-virtual address (one exit).
    Exit {
        /// The doorbell's address.
        doorbell: u64,
    },
    /// Write a record to a per-CPU ring buffer (no exit).
    InGuest(RingSpec),
    /// Call a C-ABI handler in the guest (the guest module's, within +/-2 GiB) with the
    /// probed registers (no exit); the handler writes the record. See [`call_handler`].
    Call {
        /// The handler's guest-virtual address.
        func: u64,
        /// The register whose value the handler takes as its string argument.
        arg: Option<Gpr>,
        /// The rings it writes (its `fetches` are unused: the handler decides).
        ring: RingSpec,
    },
}

/// Everything a trampoline is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrampolineSpec<'a> {
    /// Where the trampoline goes (guest-virtual).
    pub at: u64,
    /// Its tag: what the doorbell receives and records carry. Unique per optimization (not
    /// per slot), so a hit from a trampoline that was just given up is still told apart from
    /// one of the slot's next occupant.
    pub tag: u32,
    /// The probed address.
    pub site: u64,
    /// The original bytes of the displaced instructions (from `can_optimize`'s window).
    pub displaced: &'a [u8],
    /// The handler part.
    pub handler: Handler,
    /// The most bytes the trampoline may take.
    pub max_len: usize,
}

/// A built trampoline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trampoline {
    /// The code, to be written at [`TrampolineSpec::at`].
    pub code: Vec<u8>,
    /// Where the relocated instructions start.
    pub relocated_at: u64,
    /// For each displaced instruction, its original address and its address in the
    /// trampoline.
    pub map: Vec<(u64, u64)>,
}

/// Why a trampoline cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrampolineError {
    /// The displaced instructions cannot be relocated to the slot.
    #[error(transparent)]
    Relocate(#[from] RelocateError),
    /// The code does not fit in the slot.
    #[error("the trampoline takes {len} bytes, more than a slot's {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The slot size.
        max: usize,
    },
    /// A jump between the two addresses does not fit in a rel32.
    #[error("{to:#x} is beyond +/-2 GiB of {from:#x}: a 5-byte jump cannot reach it")]
    OutOfReach {
        /// Where the jump is.
        from: u64,
        /// Where it goes.
        to: u64,
    },
    /// More values than a record holds, or a bad ring geometry.
    #[error("{0}")]
    Spec(String),
    /// iced's assembler refused the handler code (a bug in hvprobe).
    #[error("cannot assemble the trampoline: {0}")]
    Assemble(String),
}

fn asm_err(e: iced_x86::IcedError) -> TrampolineError {
    TrampolineError::Assemble(e.to_string())
}

/// `jmp rel32` at `from` to `to`.
pub fn jump_patch(from: u64, to: u64) -> Result<[u8; JUMP_LEN], TrampolineError> {
    let next = from.wrapping_add(JUMP_LEN as u64);
    let rel = i64::try_from(i128::from(to) - i128::from(next))
        .ok()
        .and_then(|r| i32::try_from(r).ok())
        .ok_or(TrampolineError::OutOfReach { from, to })?;
    let r = rel.to_le_bytes();
    Ok([0xe9, r[0], r[1], r[2], r[3]])
}

/// A RIP-relative memory operand for the absolute address `addr` (iced's convention: with
/// base RIP, the displacement is the target address).
fn rip_abs(addr: u64) -> MemoryOperand {
    MemoryOperand::with_base_displ(Register::RIP, i64::from_ne_bytes(addr.to_ne_bytes()))
}

fn add(
    a: &mut CodeAssembler,
    i: Result<Instruction, iced_x86::IcedError>,
) -> Result<(), TrampolineError> {
    a.add_instruction(i.map_err(asm_err)?).map_err(asm_err)
}

/// Where a register saved by the in-guest prologue sits, relative to RSP after it.
fn saved_slot(g: Gpr) -> Option<i32> {
    match g {
        Gpr::Rbx => Some(0),
        Gpr::Rdx => Some(8),
        Gpr::Rcx => Some(16),
        Gpr::Rax => Some(24),
        _ => None,
    }
}

/// Bytes the in-guest prologue moves RSP by (red zone, RFLAGS, four registers).
const SAVED_BYTES: i32 = RED_ZONE + 5 * 8;

fn in_guest(a: &mut CodeAssembler, tag: u32, ring: &RingSpec) -> Result<(), TrampolineError> {
    if ring.fetches.len() > MAX_FETCHES {
        return Err(TrampolineError::Spec(format!(
            "{} values asked, a record holds {MAX_FETCHES}",
            ring.fetches.len()
        )));
    }
    if !ring.capacity.is_power_of_two() || ring.ring_count == 0 {
        return Err(TrampolineError::Spec(format!(
            "ring capacity {} is not a power of two (or no rings)",
            ring.capacity
        )));
    }
    let cap_mask = ring.capacity - 1;
    let e = asm_err;
    let mut retry = a.create_label();
    let mut full = a.create_label();
    let mut done = a.create_label();
    a.lea(rsp, qword_ptr(rsp - RED_ZONE)).map_err(e)?;
    a.pushfq().map_err(e)?;
    a.push(rax).map_err(e)?;
    a.push(rcx).map_err(e)?;
    a.push(rdx).map_err(e)?;
    a.push(rbx).map_err(e)?;
    match ring.cpu {
        CpuSource::Rdtscp => {
            a.rdtscp().map_err(e)?;
            a.and(rcx, 0xfff).map_err(e)?;
        }
        CpuSource::SharedRing => {
            a.rdtsc().map_err(e)?;
            a.xor(ecx, ecx).map_err(e)?;
        }
    }
    a.shl(rdx, 32).map_err(e)?;
    a.or(rax, rdx).map_err(e)?;
    a.cmp(rcx, i32::try_from(ring.ring_count).unwrap_or(i32::MAX))
        .map_err(e)?;
    a.jae(full).map_err(e)?;
    a.imul_3(
        rcx,
        rcx,
        i32::try_from(ring.ring_stride).unwrap_or(i32::MAX),
    )
    .map_err(e)?;
    add(
        a,
        Instruction::with2(Code::Lea_r64_m, Register::RBX, rip_abs(ring.rings)),
    )?;
    a.add(rbx, rcx).map_err(e)?;
    a.mov(rcx, rax).map_err(e)?;
    a.set_label(&mut retry).map_err(e)?;
    a.mov(rax, qword_ptr(rbx)).map_err(e)?;
    a.mov(rdx, rax).map_err(e)?;
    a.sub(rdx, qword_ptr(rbx + TAIL_DISP)).map_err(e)?;
    a.cmp(rdx, i32::try_from(ring.capacity).unwrap_or(i32::MAX))
        .map_err(e)?;
    a.jae(full).map_err(e)?;
    a.lea(rdx, qword_ptr(rax + 1)).map_err(e)?;
    a.lock().cmpxchg(qword_ptr(rbx), rdx).map_err(e)?;
    a.jne(retry).map_err(e)?;
    // rax: the reserved index; rdx: index + 1, the sequence number committed last.
    a.and(rax, i32::try_from(cap_mask).unwrap_or(i32::MAX))
        .map_err(e)?;
    a.shl(rax, 6).map_err(e)?;
    a.lea(rbx, qword_ptr(rbx + rax + RECORDS_DISP)).map_err(e)?;
    a.mov(dword_ptr(rbx + 4), tag).map_err(e)?;
    a.mov(qword_ptr(rbx + 8), rcx).map_err(e)?;
    for (i, f) in ring.fetches.iter().enumerate() {
        let dst = VALUES_DISP + 8 * i32::try_from(i).unwrap_or(0);
        match *f {
            Fetch::Reg(Gpr::Rsp) => {
                a.lea(rax, qword_ptr(rsp + SAVED_BYTES)).map_err(e)?;
                a.mov(qword_ptr(rbx + dst), rax).map_err(e)?;
            }
            Fetch::Rflags => {
                a.mov(rax, qword_ptr(rsp + 32)).map_err(e)?;
                a.mov(qword_ptr(rbx + dst), rax).map_err(e)?;
            }
            Fetch::Reg(g) => match saved_slot(g) {
                Some(off) => {
                    a.mov(rax, qword_ptr(rsp + off)).map_err(e)?;
                    a.mov(qword_ptr(rbx + dst), rax).map_err(e)?;
                }
                None => {
                    let r: AsmRegister64 = get_gpr64(g.iced())
                        .ok_or_else(|| TrampolineError::Assemble(format!("no register {g:?}")))?;
                    a.mov(qword_ptr(rbx + dst), r).map_err(e)?;
                }
            },
            Fetch::Mem(addr) => {
                add(
                    a,
                    Instruction::with2(Code::Mov_r64_rm64, Register::RAX, rip_abs(addr)),
                )?;
                a.mov(qword_ptr(rbx + dst), rax).map_err(e)?;
            }
        }
    }
    a.mov(dword_ptr(rbx), iced_x86::code_asm::edx).map_err(e)?;
    a.jmp(done).map_err(e)?;
    a.set_label(&mut full).map_err(e)?;
    let mut inc = Instruction::with1(Code::Inc_rm64, rip_abs(ring.lost)).map_err(e)?;
    inc.set_has_lock_prefix(true);
    a.add_instruction(inc).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.pop(rbx).map_err(e)?;
    a.pop(rdx).map_err(e)?;
    a.pop(rcx).map_err(e)?;
    a.pop(rax).map_err(e)?;
    a.popfq().map_err(e)?;
    a.lea(rsp, qword_ptr(rsp + RED_ZONE)).map_err(e)?;
    Ok(())
}

/// Registers a handler-call trampoline saves, in push order (the handler sees them in the
/// reverse order from its first argument up: r15 first, RFLAGS last).
const CALL_SAVED: [Gpr; 15] = [
    Gpr::Rax,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rbx,
    Gpr::Rbp,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// x86 register number (rax 0 .. r15 15) of `g`: how a handler call names its string
/// argument.
pub fn gpr_number(g: Gpr) -> u8 {
    match g {
        Gpr::Rax => 0,
        Gpr::Rcx => 1,
        Gpr::Rdx => 2,
        Gpr::Rbx => 3,
        Gpr::Rsp => 4,
        Gpr::Rbp => 5,
        Gpr::Rsi => 6,
        Gpr::Rdi => 7,
        Gpr::R8 => 8,
        Gpr::R9 => 9,
        Gpr::R10 => 10,
        Gpr::R11 => 11,
        Gpr::R12 => 12,
        Gpr::R13 => 13,
        Gpr::R14 => 14,
        Gpr::R15 => 15,
    }
}

/// The handler-call part: skips the red zone, saves RFLAGS and every general register but RSP
/// (a 128-byte block: r15 at the lowest address, RFLAGS at +120; the probed RSP is the block's
/// address + 256), aligns the stack, and calls
/// `func(regs, tag | arg << 32, rings, ring_count | ring_stride << 32, capacity, lost)` with
/// `arg` the x86 number of the string register (0xff: none); then restores everything.
/// The handler is the guest module's `hvk_handler` (`guest-kmod/rust/src/lib.rs`).
fn call_handler(
    a: &mut CodeAssembler,
    tag: u32,
    func: u64,
    arg: Option<Gpr>,
    ring: &RingSpec,
) -> Result<(), TrampolineError> {
    use iced_x86::code_asm::{r8, r9, rbp, rdi, rsi};
    if !ring.capacity.is_power_of_two() || ring.ring_count == 0 {
        return Err(TrampolineError::Spec(format!(
            "ring capacity {} is not a power of two (or no rings)",
            ring.capacity
        )));
    }
    if arg == Some(Gpr::Rsp) {
        return Err(TrampolineError::Spec(
            "rsp cannot be a handler's string argument".into(),
        ));
    }
    let e = asm_err;
    a.lea(rsp, qword_ptr(rsp - RED_ZONE)).map_err(e)?;
    a.pushfq().map_err(e)?;
    for g in CALL_SAVED {
        let r: AsmRegister64 = get_gpr64(g.iced())
            .ok_or_else(|| TrampolineError::Assemble(format!("no register {g:?}")))?;
        a.push(r).map_err(e)?;
    }
    let arg = u64::from(arg.map_or(0xff, gpr_number));
    a.mov(rdi, rsp).map_err(e)?;
    a.mov(rsi, u64::from(tag) | arg << 32).map_err(e)?;
    a.mov(rdx, ring.rings).map_err(e)?;
    a.mov(
        rcx,
        u64::from(ring.ring_count) | u64::from(ring.ring_stride) << 32,
    )
    .map_err(e)?;
    a.mov(r8, u64::from(ring.capacity)).map_err(e)?;
    a.mov(r9, ring.lost).map_err(e)?;
    a.mov(rbp, rsp).map_err(e)?;
    a.and(rsp, -16).map_err(e)?;
    // A direct `call rel32`: the caller checked that the handler is within reach.
    a.call(func).map_err(e)?;
    a.mov(rsp, rbp).map_err(e)?;
    for g in CALL_SAVED.iter().rev() {
        let r: AsmRegister64 = get_gpr64(g.iced())
            .ok_or_else(|| TrampolineError::Assemble(format!("no register {g:?}")))?;
        a.pop(r).map_err(e)?;
    }
    a.popfq().map_err(e)?;
    a.lea(rsp, qword_ptr(rsp + RED_ZONE)).map_err(e)?;
    Ok(())
}

/// Builds the trampoline for `spec`: handler part, relocated displaced instructions, jump
/// back to the first byte after them.
pub fn build_trampoline(spec: &TrampolineSpec<'_>) -> Result<Trampoline, TrampolineError> {
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    match &spec.handler {
        Handler::Exit { doorbell } => {
            add(
                &mut a,
                Instruction::with2(Code::Mov_rm32_imm32, rip_abs(*doorbell), spec.tag),
            )?;
        }
        Handler::InGuest(ring) => in_guest(&mut a, spec.tag, ring)?,
        Handler::Call { func, arg, ring } => {
            let from = spec.at;
            if i64::try_from(i128::from(*func) - i128::from(from))
                .ok()
                .and_then(|d| i32::try_from(d).ok())
                .is_none()
            {
                return Err(TrampolineError::OutOfReach { from, to: *func });
            }
            call_handler(&mut a, spec.tag, *func, *arg, ring)?;
        }
    }
    let prefix = a
        .assemble_options(spec.at, BlockEncoderOptions::NONE)
        .map_err(asm_err)?
        .inner
        .code_buffer;
    let relocated_at = spec.at.wrapping_add(prefix.len() as u64);
    let relocated = relocate(spec.displaced, spec.site, relocated_at)?;
    let back_from = relocated_at.wrapping_add(relocated.code.len() as u64);
    let back_to = spec.site.wrapping_add(spec.displaced.len() as u64);
    let back = jump_patch(back_from, back_to)?;
    let mut code = prefix;
    code.extend_from_slice(&relocated.code);
    code.extend_from_slice(&back);
    if code.len() > spec.max_len {
        return Err(TrampolineError::TooLong {
            len: code.len(),
            max: spec.max_len,
        });
    }
    Ok(Trampoline {
        code,
        relocated_at,
        map: relocated.map,
    })
}
