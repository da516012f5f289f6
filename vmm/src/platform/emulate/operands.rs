//! Operands of the decoded instruction: general-purpose registers by iced name, memory operand
//! addresses, and the per-instruction context the instruction families work on.

use iced_x86::{Instruction, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

use super::Exception;
use super::access::{Guest, Kind, MemFault};
use super::cpu::{CpuError, EmuCpu};

/// Why an instruction did not complete.
#[derive(Debug)]
pub enum Stop {
    /// The CPU would raise this exception (RIP stays on the instruction).
    Fault(Exception),
    /// hvprobe does not (or will not) run this; the reason says why.
    Refuse(String),
    /// Not now (another vCPU holds the atomic section): resume the guest unchanged so it
    /// executes the instruction again.
    Retry(String),
}

impl From<CpuError> for Stop {
    fn from(e: CpuError) -> Self {
        Stop::Refuse(e.to_string())
    }
}

impl From<MemFault> for Stop {
    fn from(f: MemFault) -> Self {
        match f {
            MemFault::Page { cr2, error_code } => {
                Stop::Fault(Exception::PageFault { cr2, error_code })
            }
            MemFault::NonCanonical(_) => Stop::Fault(Exception::GeneralProtection),
            MemFault::Mmio { gva, gpa } => Stop::Refuse(format!(
                "memory operand {gva:#x} maps to {gpa:#x}, which is not guest RAM (MMIO)"
            )),
            MemFault::Unsupported(why) => Stop::Refuse(why),
        }
    }
}

/// One instruction being emulated: the vCPU, a working copy of its registers (written back
/// with RIP advanced when the instruction completes), and its view of memory.
pub struct Ctx<'c> {
    /// The vCPU.
    pub cpu: &'c mut dyn EmuCpu,
    /// General registers; changes take effect when the instruction completes.
    pub regs: kvm_regs,
    /// Segment and control registers (read-only here).
    pub sregs: kvm_sregs,
    /// The decoded instruction (its IP is the guest's RIP).
    pub insn: Instruction,
    /// Memory through the vCPU's page tables.
    pub guest: Guest<'c>,
    /// Current privilege level.
    pub cpl: u8,
    /// Serializes emulated atomics across vCPUs (see `atomic`).
    pub atomic: &'c std::sync::Mutex<()>,
}

impl Ctx<'_> {
    /// The linear address of memory operand `op`, checked canonical (#GP(0), or #SS(0) for
    /// an RSP/RBP-based address, as the CPU does).
    pub fn mem_address(&self, op: u32) -> Result<u64, Stop> {
        if self.insn.op_kind(op) != OpKind::Memory {
            return Err(Stop::Refuse(format!(
                "operand {op} is not a memory operand"
            )));
        }
        let regs = &self.regs;
        let sregs = &self.sregs;
        let addr = self
            .insn
            .virtual_address(op, 0, |reg, _, _| match reg {
                Register::FS => Some(sregs.fs.base),
                Register::GS => Some(sregs.gs.base),
                // In 64-bit mode the other segment bases are treated as 0.
                Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
                r => read_gpr(regs, r),
            })
            .ok_or_else(|| Stop::Refuse("cannot compute the memory operand's address".into()))?;
        if !is_canonical(addr, self.sregs.cr4 & CR4_LA57 != 0) {
            let stack = matches!(
                self.insn.memory_base(),
                Register::RSP | Register::RBP | Register::ESP | Register::EBP
            );
            return Err(Stop::Fault(if stack {
                Exception::StackFault
            } else {
                Exception::GeneralProtection
            }));
        }
        Ok(addr)
    }

    /// Reads `N` bytes of memory operand `op`.
    pub fn read_mem<const N: usize>(&mut self, op: u32) -> Result<[u8; N], Stop> {
        let addr = self.mem_address(op)?;
        let mut buf = [0u8; N];
        self.guest.read(addr, &mut buf, Kind::Read)?;
        Ok(buf)
    }

    /// The value of register operand `op` (16, 32 or 64 bits) and its size in bytes.
    pub fn reg_operand(&self, op: u32) -> Result<(Register, usize), Stop> {
        if self.insn.op_kind(op) != OpKind::Register {
            return Err(Stop::Refuse(format!("operand {op} is not a register")));
        }
        let r = self.insn.op_register(op);
        match r.size() {
            2 | 4 | 8 if r.is_gpr() => Ok((r, r.size())),
            _ => Err(Stop::Refuse(format!("unexpected register operand {r:?}"))),
        }
    }
}

/// CR4.LA57.
const CR4_LA57: u64 = 1 << 12;

/// Whether `addr` is canonical with 48-bit (or, with LA57, 57-bit) linear addresses.
pub fn is_canonical(addr: u64, la57: bool) -> bool {
    let bits = if la57 { 57 } else { 48 };
    let top = addr >> (bits - 1);
    top == 0 || top == (u64::MAX >> (bits - 1))
}

/// The 64-bit register slot of a general-purpose register.
fn slot(regs: &mut kvm_regs, full: Register) -> Option<&mut u64> {
    Some(match full {
        Register::RAX => &mut regs.rax,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RBX => &mut regs.rbx,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return None,
    })
}

/// The mask of a register `size` bytes wide.
fn mask(size: usize) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The value of a general-purpose register of any width (AH..BH included).
pub fn read_gpr(regs: &kvm_regs, r: Register) -> Option<u64> {
    let mut copy = *regs;
    let v = *slot(&mut copy, r.full_register())?;
    if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) {
        return Some((v >> 8) & 0xff);
    }
    Some(v & mask(r.size()))
}

/// Writes a general-purpose register as the CPU does: 32-bit writes zero the upper half,
/// 16- and 8-bit writes keep the other bits.
pub fn write_gpr(regs: &mut kvm_regs, r: Register, value: u64) -> Result<(), Stop> {
    let size = r.size();
    let high_byte = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let s = slot(regs, r.full_register())
        .ok_or_else(|| Stop::Refuse(format!("cannot write register {r:?}")))?;
    *s = match size {
        _ if high_byte => (*s & !0xff00) | ((value & 0xff) << 8),
        4 => value & 0xffff_ffff,
        8 => value,
        n => (*s & !mask(n)) | (value & mask(n)),
    };
    Ok(())
}
