//! The `syscall` relay for guest ring 3 on the software KVM.
//!
//! On `kvm_pvm`, `syscall` from guest ring 3 loads RIP from LSTAR (`entry_SYSCALL_64`) but
//! leaves CS at the user selector (CPL 3), so the next instruction fetch takes a page fault
//! (user fetch from a supervisor page) with the fault's RIP equal to LSTAR (measured, see
//! `shared/PLATFORM.md`). The relay catches the guest's page-fault entry, recognises that
//! frame, and gives the vCPU the state `syscall` would have made: RIP = LSTAR in ring 0 (CS
//! and SS from STAR), RSP = the user stack pointer, RFLAGS masked with SFMASK; RCX and R11
//! hold the return address and flags as `syscall` left them. `entry_SYSCALL_64` then runs as
//! on hardware (its `swapgs` and stack switch included); `sysretq` back works unaided.
//!
//! The catch is an int3 on the `cld` that opens `asm_exc_page_fault` (after the CLAC
//! alternative's bytes, which Linux patches at boot), so no debug register is taken from the
//! user; int3 in ring 0 surfaces here as an emulation failure with RIP on it. Every other page
//! fault goes on with the `cld` done by the host (DF cleared, RIP + 1): one exit per fault.

use std::sync::atomic::{AtomicU64, Ordering};

use introspect::paging::{PageWalker, PagingContext};
use introspect::{Gpa, Gva};

/// Why the relay could not be armed, or could not handle a hit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// A symbol the relay needs is not in the kernel's symbol table.
    #[error("No symbol {0} in the kernel")]
    NoSymbol(&'static str),
    /// `asm_exc_page_fault` does not start the way the relay expects.
    #[error(
        "asm_exc_page_fault does not open with CLAC padding and `cld` (bytes {bytes}): \
         the relay cannot place its int3"
    )]
    UnexpectedEntry {
        /// The first bytes, in hex.
        bytes: String,
    },
    /// Guest memory could not be read or written.
    #[error("Guest memory at {0}: {1}")]
    Memory(Gpa, String),
    /// The vCPU state could not be read or set.
    #[error("vCPU state: {0}")]
    Vcpu(String),
    /// The page-fault frame is not readable through the guest's page tables.
    #[error("The page-fault frame at {rsp:#x} is not readable: {reason}")]
    Frame {
        /// The stack pointer at the entry.
        rsp: u64,
        /// Why.
        reason: String,
    },
}

/// The part of the CPU's exception frame the relay reads (what the CPU pushed for #PF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultFrame {
    /// The page-fault error code.
    pub error_code: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// SS at the fault.
    pub ss: u64,
}

impl FaultFrame {
    /// The frame from its six words as they lie on the stack.
    pub fn from_words(w: [u64; 6]) -> Self {
        FaultFrame {
            error_code: w[0],
            rip: w[1],
            cs: w[2],
            rflags: w[3],
            rsp: w[4],
            ss: w[5],
        }
    }
}

/// The MSRs `syscall` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallMsrs {
    /// IA32_STAR: bits 47:32 are the kernel CS (SS is that + 8).
    pub star: u64,
    /// IA32_LSTAR: the 64-bit entry point.
    pub lstar: u64,
    /// IA32_FMASK: RFLAGS bits cleared on entry.
    pub sfmask: u64,
}

/// MSR numbers.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_FMASK.
pub const MSR_SFMASK: u32 = 0xc000_0084;

const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_RESERVED1: u64 = 1 << 1;
const RFLAGS_RF: u64 = 1 << 16;

/// What the relay does with a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDecision {
    /// A ring-3 `syscall` that did not enter ring 0: resume at LSTAR in ring 0 with this
    /// state.
    Syscall {
        /// The new RIP (LSTAR).
        rip: u64,
        /// The new RSP (the user's).
        rsp: u64,
        /// The new RFLAGS.
        rflags: u64,
        /// The kernel code selector (STAR[47:32]).
        cs: u16,
        /// The kernel stack selector (STAR[47:32] + 8).
        ss: u16,
    },
    /// Any other page fault: do the `cld` and go on.
    PassThrough,
}

/// Whether a page-fault frame is the relay's case, and the state `syscall` would have made.
///
/// The case: the fault came from CPL 3 with RIP = LSTAR (nothing in user space can run at a
/// kernel address, so a ring-3 fetch fault there is this platform's unfinished `syscall`).
pub fn decide(frame: &FaultFrame, msrs: &SyscallMsrs) -> RelayDecision {
    if frame.cs & 3 != 3 || frame.rip != msrs.lstar || msrs.lstar == 0 {
        return RelayDecision::PassThrough;
    }
    let kernel_cs = u16::try_from((msrs.star >> 32) & 0xfffc).unwrap_or(0x10);
    RelayDecision::Syscall {
        rip: msrs.lstar,
        rsp: frame.rsp,
        rflags: (frame.rflags & !msrs.sfmask & !RFLAGS_RF) | RFLAGS_RESERVED1,
        cs: kernel_cs,
        ss: kernel_cs.wrapping_add(8),
    }
}

/// Finds the relay's int3 site in the first bytes of `asm_exc_page_fault`: the `cld` after
/// nops, `endbr64` and `clac` (the CLAC alternative). Returns its offset.
pub fn find_site(code: &[u8], ip: u64) -> Option<usize> {
    let mut off = 0usize;
    while off < code.len() {
        let rest = code.get(off..)?;
        if rest.first() == Some(&0xfc) {
            return Some(off);
        }
        if rest.starts_with(&[0x0f, 0x01, 0xca]) {
            off += 3;
            continue;
        }
        let insn = disasm::decode(rest, ip + off as u64).ok()?;
        if insn.emulation() != Some(disasm::Emulation::Nop) {
            return None;
        }
        off += insn.len;
    }
    None
}

/// The relay, armed in one guest kernel.
#[derive(Debug)]
pub struct SyscallRelay {
    site: u64,
    entry_symbol: u64,
    relayed: AtomicU64,
    passed: AtomicU64,
}

/// Where kernel text lies in guest-physical memory, for a kernel hvprobe loaded at its link
/// address: `gva - __START_KERNEL_map`.
fn text_gpa(gva: u64) -> Gpa {
    Gpa(gva.wrapping_sub(crate::boot::paging::KERNEL_MAP_START))
}

impl SyscallRelay {
    /// Places the relay's int3 in `asm_exc_page_fault` (found in `symbols`) in guest memory,
    /// before the guest runs.
    pub fn arm(
        mem: &crate::memory::GuestMem,
        symbols: &introspect::symbols::SymbolTable,
    ) -> Result<SyscallRelay, RelayError> {
        let entry = symbols
            .addr_of("asm_exc_page_fault")
            .ok_or(RelayError::NoSymbol("asm_exc_page_fault"))?;
        let entry_symbol = symbols
            .addr_of("entry_SYSCALL_64")
            .ok_or(RelayError::NoSymbol("entry_SYSCALL_64"))?;
        let mut code = [0u8; 16];
        let gpa = text_gpa(entry);
        mem.read(gpa, &mut code)
            .map_err(|e| RelayError::Memory(gpa, e.to_string()))?;
        let off = find_site(&code, entry).ok_or_else(|| RelayError::UnexpectedEntry {
            bytes: code
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let site = entry + off as u64;
        mem.write(text_gpa(site), &[0xcc])
            .map_err(|e| RelayError::Memory(text_gpa(site), e.to_string()))?;
        Ok(SyscallRelay {
            site,
            entry_symbol,
            relayed: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        })
    }

    /// The guest-virtual address of the int3.
    pub fn site(&self) -> u64 {
        self.site
    }

    /// Syscalls relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Page faults passed through so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Whether an emulation failure at `rip` is the relay's int3 (its byte still in place).
    pub fn is_hit(&self, rip: u64, mem: &crate::memory::GuestMem) -> bool {
        let mut b = [0u8; 1];
        rip == self.site && mem.read(text_gpa(rip), &mut b).is_ok() && b[0] == 0xcc
    }

    /// Handles a hit on vCPU `vcpu`: relays a ring-3 `syscall`, or does the `cld` of every
    /// other page fault. Returns whether it was a syscall.
    pub fn on_hit(
        &self,
        vcpu: &crate::vcpu::VcpuCtx<'_>,
        mem: &crate::memory::GuestMem,
        walker: &mut PageWalker,
    ) -> Result<bool, RelayError> {
        let verr = |e: kvm_ioctls::Error| RelayError::Vcpu(e.to_string());
        let mut regs = vcpu.regs().map_err(verr)?;
        // The frame is read only when the fault may be the relay's case (cheap test first:
        // the CS word of the frame says CPL 3).
        let sregs = vcpu.sregs().map_err(verr)?;
        let ctx = PagingContext {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            max_phys_bits: 52,
        };
        let mut words = [0u8; 48];
        walker
            .read_virt(mem, &ctx, Gva(regs.rsp), &mut words)
            .map_err(|e| RelayError::Frame {
                rsp: regs.rsp,
                reason: e.to_string(),
            })?;
        let mut w = [0u64; 6];
        for (i, c) in words.chunks_exact(8).enumerate() {
            w[i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        }
        let frame = FaultFrame::from_words(w);
        let decision = if frame.cs & 3 == 3 && frame.rip == self.entry_symbol {
            decide(&frame, &read_msrs(vcpu)?)
        } else {
            RelayDecision::PassThrough
        };
        match decision {
            RelayDecision::PassThrough => {
                regs.rflags &= !RFLAGS_DF;
                regs.rip = self.site + 1;
                vcpu.set_regs(&regs).map_err(verr)?;
                self.passed.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            RelayDecision::Syscall {
                rip,
                rsp,
                rflags,
                cs,
                ss,
            } => {
                let mut s = sregs;
                flat_ring0(&mut s.cs, cs, true);
                flat_ring0(&mut s.ss, ss, false);
                vcpu.set_sregs(&s).map_err(verr)?;
                regs.rip = rip;
                regs.rsp = rsp;
                regs.rflags = rflags;
                vcpu.set_regs(&regs).map_err(verr)?;
                self.relayed.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }
}

/// A flat 64-bit ring-0 segment as `syscall` loads it: code (execute/read, long mode) or
/// stack (read/write).
fn flat_ring0(seg: &mut kvm_bindings::kvm_segment, selector: u16, code: bool) {
    seg.selector = selector;
    seg.dpl = 0;
    seg.l = u8::from(code);
    seg.db = u8::from(!code);
    seg.s = 1;
    seg.type_ = if code { 0xb } else { 0x3 };
    seg.present = 1;
    seg.base = 0;
    seg.limit = 0xffff_ffff;
    seg.g = 1;
}

fn read_msrs(vcpu: &crate::vcpu::VcpuCtx<'_>) -> Result<SyscallMsrs, RelayError> {
    let entries = [MSR_STAR, MSR_LSTAR, MSR_SFMASK].map(|index| kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    });
    let mut msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|e| RelayError::Vcpu(format!("MSR list: {e:?}")))?;
    let n = vcpu
        .fd()
        .get_msrs(&mut msrs)
        .map_err(|e| RelayError::Vcpu(e.to_string()))?;
    if n != entries.len() {
        return Err(RelayError::Vcpu(format!(
            "KVM_GET_MSRS read {n} of the 3 syscall MSRs"
        )));
    }
    let v = msrs.as_slice();
    Ok(SyscallMsrs {
        star: v[0].data,
        lstar: v[1].data,
        sfmask: v[2].data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSTAR: u64 = 0xffff_ffff_81c0_0080;
    fn msrs() -> SyscallMsrs {
        SyscallMsrs {
            // Linux: __KERNEL_CS 0x10 in 47:32, __USER32_CS 0x23 in 63:48
            star: 0x0023_0010_0000_0000,
            lstar: LSTAR,
            // TF DF IF IOPL AC NT
            sfmask: 0x4_7700,
        }
    }

    #[test]
    fn a_ring3_fetch_fault_at_lstar_is_relayed_with_syscalls_state() {
        let frame =
            FaultFrame::from_words([0x15, LSTAR, 0x33, 0x246 | RFLAGS_RF, 0x7ffd_1000, 0x2b]);
        assert_eq!(
            decide(&frame, &msrs()),
            RelayDecision::Syscall {
                rip: LSTAR,
                rsp: 0x7ffd_1000,
                // IF (0x200) masked, RF dropped, bit 1 kept
                rflags: 0x046,
                cs: 0x10,
                ss: 0x18,
            }
        );
    }

    #[test]
    fn other_faults_pass_through() {
        // kernel-mode fault at LSTAR (CPL 0)
        let k = FaultFrame::from_words([0x0, LSTAR, 0x10, 0x46, 0xffff_c900_0000_0000, 0x18]);
        assert_eq!(decide(&k, &msrs()), RelayDecision::PassThrough);
        // user fault elsewhere
        let u = FaultFrame::from_words([0x6, 0x40_1000, 0x33, 0x246, 0x7ffd_1000, 0x2b]);
        assert_eq!(decide(&u, &msrs()), RelayDecision::PassThrough);
        // LSTAR not set up yet
        let mut m = msrs();
        m.lstar = 0;
        let z = FaultFrame::from_words([0x15, 0, 0x33, 0x246, 0x7ffd_1000, 0x2b]);
        assert_eq!(decide(&z, &m), RelayDecision::PassThrough);
    }

    #[test]
    fn the_site_is_the_cld_after_clac_padding() {
        // Debian 6.1: three nops (the CLAC alternative), then cld
        assert_eq!(
            find_site(&[0x90, 0x90, 0x90, 0xfc, 0xe8, 0, 0, 0, 0], 0),
            Some(3)
        );
        // patched to clac
        assert_eq!(find_site(&[0x0f, 0x01, 0xca, 0xfc], 0), Some(3));
        // endbr64 and a 3-byte nop
        assert_eq!(
            find_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x00, 0xfc], 0),
            Some(7)
        );
        // an unexpected instruction first: refused
        assert_eq!(find_site(&[0x48, 0x89, 0xe7, 0xfc], 0), None);
        assert_eq!(find_site(&[0x90, 0x90], 0), None);
    }
}
