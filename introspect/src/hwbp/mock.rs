//! A mock vCPU that interprets DR0-DR3 / DR7 the way the CPU does (Intel SDM vol. 3, 18.2),
//! runs a tiny straight-line program and records every call the code under test makes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::addr::Gpa;
use crate::paging::{PagingContext, PhysMem, PhysMemError, PhysMemMut};
use crate::target::{GuestDebug, RFLAGS_RF, Regs, Target, TargetError, VcpuAccess};

/// DR6 as KVM reports it: the active-low reserved bits read as 1.
pub(super) const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;
/// Every mock instruction is this long.
pub(super) const INSN_LEN: u64 = 4;

/// One call made on the mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Regs,
    SetRegs(Regs),
    SetDebug(GuestDebug),
}

pub(super) struct MockVcpu {
    pub index: usize,
    pub regs: Regs,
    pub debug: GuestDebug,
    /// Whether RFLAGS.RF suppresses instruction breakpoints (hardware KVM) or is ignored (our
    /// software KVM's emulated ring 0).
    pub honours_rf: bool,
    /// With `honours_rf` false: whether an ignored RF is cleared anyway when the breakpoint
    /// fires again (either is plausible for an emulator that does not implement RF).
    pub clears_ignored_rf: bool,
    /// The program runs from wherever RIP is up to `end` (then the vCPU "exits to the VMM").
    pub end: u64,
    /// Instructions that write memory: RIP -> (address, length).
    pub writes: BTreeMap<u64, (u64, u64)>,
    pub fail_set_debug: bool,
    pub calls: RefCell<Vec<Call>>,
}

impl MockVcpu {
    pub(super) fn new(index: usize) -> Self {
        MockVcpu {
            index,
            regs: Regs {
                rflags: 0x2,
                ..Regs::default()
            },
            debug: GuestDebug::default(),
            honours_rf: true,
            clears_ignored_rf: false,
            end: 0,
            writes: BTreeMap::new(),
            fail_set_debug: false,
            calls: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    /// The enabled slots as (address, R/W bits, length), read back from DR7 bit by bit.
    fn enabled_slots(&self) -> Vec<(u8, u64, u64, u64)> {
        if !self.debug.hw_breakpoints {
            return Vec::new();
        }
        let dr7 = self.debug.dr7;
        (0..4u8)
            .filter(|&n| (dr7 >> (2 * n)) & 0b11 != 0)
            .map(|n| {
                let rw = (dr7 >> (16 + 4 * n)) & 0b11;
                let len = match (dr7 >> (18 + 4 * n)) & 0b11 {
                    0b00 => 1,
                    0b01 => 2,
                    0b11 => 4,
                    _ => 8,
                };
                (n, self.debug.dr[usize::from(n)], rw, len)
            })
            .collect()
    }

    /// DR6 B bits for a data access of `len` bytes at `addr`.
    pub(super) fn data_bits(&self, addr: u64, len: u64, write: bool) -> u64 {
        self.enabled_slots()
            .into_iter()
            .filter(|&(_, _, rw, _)| rw == 0b11 || (rw == 0b01 && write))
            .filter(|&(_, a, _, l)| addr < a + l && a < addr + len)
            .fold(0, |b, (n, ..)| b | (1 << n))
    }

    /// Runs until a debug exit (every instruction adds 1 to RAX), returned as (DR6, RIP), or until RIP reaches `end` (`None`).
    pub(super) fn run(&mut self) -> Option<(u64, u64)> {
        for _ in 0..1000 {
            if self.regs.rip >= self.end {
                return None;
            }
            let rip = self.regs.rip;
            let rf = self.honours_rf && self.regs.rflags & RFLAGS_RF != 0;
            let fetch: u64 = self
                .enabled_slots()
                .into_iter()
                .filter(|&(_, a, rw, _)| rw == 0 && a == rip && !rf)
                .fold(0, |b, (n, ..)| b | (1 << n));
            if fetch != 0 {
                if self.clears_ignored_rf {
                    self.regs.rflags &= !RFLAGS_RF;
                }
                return Some((DR6_ACTIVE_LOW | fetch, rip));
            }
            // The instruction runs.
            let mut dr6 = match self.writes.get(&rip) {
                Some(&(addr, len)) => self.data_bits(addr, len, true),
                None => 0,
            };
            self.regs.rip += INSN_LEN;
            // Every instruction leaves a trace in the registers, as real code does.
            self.regs.rax += 1;
            if self.honours_rf {
                self.regs.rflags &= !RFLAGS_RF;
            }
            if self.debug.single_step {
                dr6 |= crate::hwbp::DR6_BS;
            }
            if dr6 != 0 {
                return Some((DR6_ACTIVE_LOW | dr6, self.regs.rip));
            }
        }
        panic!("the mock vCPU looped at {:#x}", self.regs.rip);
    }
}

impl VcpuAccess for MockVcpu {
    fn index(&self) -> usize {
        self.index
    }
    fn regs(&self) -> Result<Regs, TargetError> {
        self.calls.borrow_mut().push(Call::Regs);
        Ok(self.regs)
    }
    fn set_regs(&mut self, regs: &Regs) -> Result<(), TargetError> {
        self.calls.borrow_mut().push(Call::SetRegs(*regs));
        self.regs = *regs;
        Ok(())
    }
    fn paging(&self) -> Result<PagingContext, TargetError> {
        Err(TargetError::NoVcpu(self.index))
    }
    fn set_debug(&mut self, debug: &GuestDebug) -> Result<(), TargetError> {
        self.calls.borrow_mut().push(Call::SetDebug(*debug));
        if self.fail_set_debug {
            return Err(TargetError::Vm {
                what: "KVM_SET_GUEST_DEBUG",
                reason: "mock failure".into(),
            });
        }
        self.debug = *debug;
        Ok(())
    }
    fn inject_breakpoint(&mut self) -> Result<(), TargetError> {
        Err(TargetError::NoVcpu(self.index))
    }
}

/// A VM of mock vCPUs with no guest memory.
pub(super) struct MockTarget {
    pub vcpus: Vec<Mutex<MockVcpu>>,
}

impl MockTarget {
    pub(super) fn new(n: usize) -> Self {
        MockTarget {
            vcpus: (0..n).map(|i| Mutex::new(MockVcpu::new(i))).collect(),
        }
    }
}

impl PhysMem for MockTarget {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        Err(PhysMemError::OutOfRange {
            gpa,
            len: buf.len(),
        })
    }
}

impl PhysMemMut for MockTarget {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        Err(PhysMemError::OutOfRange {
            gpa,
            len: buf.len(),
        })
    }
}

impl Target for MockTarget {
    fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }
    fn pause_all(&self) -> Result<(), TargetError> {
        Ok(())
    }
    fn resume_all(&self) -> Result<(), TargetError> {
        Ok(())
    }
    fn pause_others(&self, _me: usize) -> Result<(), TargetError> {
        Ok(())
    }
    fn resume_others(&self, _me: usize) -> Result<(), TargetError> {
        Ok(())
    }
    fn with_vcpu(
        &self,
        index: usize,
        f: Box<dyn FnOnce(&mut dyn VcpuAccess) + Send>,
    ) -> Result<(), TargetError> {
        let vcpu = self.vcpus.get(index).ok_or(TargetError::NoVcpu(index))?;
        f(&mut *vcpu.lock().unwrap());
        Ok(())
    }
}
