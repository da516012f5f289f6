//! A mock VM behind the [`Target`] / [`VcpuAccess`] seam, for logic the platform cannot
//! reach and for exact call sequences.
//!
//! - Guest RAM is a `Vec`; [`MockTarget::map`] builds 4-level page tables (4 KiB pages) in
//!   it, so code under test translates addresses exactly as against a real guest.
//! - Every call that changes the VM (physical writes, pause / resume, register and debug
//!   writes, injected breakpoints) is appended to one [`Call`] log shared by the target and
//!   its vCPUs; reads are not logged.
//! - Pausing really waits, with the VMM's rule: a vCPU counts as out only once it is back at
//!   the top of its loop. A test thread that plays a vCPU calls [`MockTarget::loop_top`]
//!   before each "entry into the guest" and [`MockTarget::vcpu_exit`] when it ends; vCPUs no
//!   thread plays are always out. Pauses nest (counted per vCPU).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::addr::{Gpa, Gva};
use crate::paging::{PagingContext, PhysMem, PhysMemError, PhysMemMut};
use crate::target::{GuestDebug, Regs, Target, TargetError, VcpuAccess, VcpuJob};

/// One call that changed the mock VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`PhysMemMut::write_phys`].
    WritePhys {
        /// Where.
        gpa: Gpa,
        /// What.
        bytes: Vec<u8>,
    },
    /// [`Target::pause_all`].
    PauseAll,
    /// [`Target::resume_all`].
    ResumeAll,
    /// [`Target::pause_others`] from this vCPU.
    PauseOthers(usize),
    /// [`Target::resume_others`] from this vCPU.
    ResumeOthers(usize),
    /// [`VcpuAccess::set_regs`].
    SetRegs {
        /// The vCPU.
        vcpu: usize,
        /// The registers written.
        regs: Regs,
    },
    /// [`VcpuAccess::set_debug`].
    SetDebug {
        /// The vCPU.
        vcpu: usize,
        /// The debug state written.
        debug: GuestDebug,
    },
    /// [`VcpuAccess::inject_breakpoint`].
    InjectBreakpoint {
        /// The vCPU.
        vcpu: usize,
    },
}

/// The shared call log.
type Log = Arc<Mutex<Vec<Call>>>;

/// Page-table entry bits.
const P: u64 = 1;
const RW: u64 = 1 << 1;
const XD: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Page tables are bump-allocated from here up to [`TABLES_END`].
const TABLES_START: u64 = 0x1000;
/// Guest RAM from here up is free for the test's own data and code.
pub const TABLES_END: u64 = 0x10_0000;

/// Who is paused and who is in the guest.
#[derive(Debug, Default)]
struct Sched {
    /// Per vCPU: pause requests not yet resumed.
    pauses: Vec<u32>,
    /// Per vCPU: a test thread plays it and it is between two loop tops (in the guest or
    /// inside an exit handler).
    running: Vec<bool>,
}

/// A mock VM: guest RAM, page tables, `vcpus` vCPUs and a call log.
#[derive(Debug)]
pub struct MockTarget {
    mem: Mutex<Vec<u8>>,
    next_table: Mutex<u64>,
    paging: PagingContext,
    log: Log,
    sched: Mutex<Sched>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockTarget {
    /// `mem_size` bytes of zeroed guest RAM (at least [`TABLES_END`]) with an empty 4-level
    /// page-table root, and `vcpus` vCPUs.
    pub fn new(mem_size: usize, vcpus: usize) -> Self {
        let size = mem_size.max(usize::try_from(TABLES_END).unwrap_or(usize::MAX));
        MockTarget {
            mem: Mutex::new(vec![0; size]),
            next_table: Mutex::new(TABLES_START + 0x1000),
            paging: PagingContext::long_mode(TABLES_START, false),
            log: Arc::default(),
            sched: Mutex::new(Sched {
                pauses: vec![0; vcpus],
                running: vec![false; vcpus],
            }),
            wake: Condvar::new(),
        }
    }

    /// The paging context every vCPU has (CR3 = the root table built by [`Self::map`]).
    pub fn paging(&self) -> PagingContext {
        self.paging
    }

    /// Maps `len` bytes from `gva` to `gpa` with 4 KiB pages (both rounded down to a page),
    /// writable, and executable when `exec`.
    ///
    /// # Panics
    /// If the page-table area ([`TABLES_START`]..[`TABLES_END`]) is full or RAM is too small.
    pub fn map(&self, gva: Gva, gpa: Gpa, len: u64, exec: bool) {
        let first = gva.page_base().raw();
        let last = gva.raw() + len.max(1) - 1;
        let mut page = first;
        while page <= last {
            let frame = gpa.page_base().raw() + (page - first);
            self.map_page(page, frame, if exec { P | RW } else { P | RW | XD });
            page += 0x1000;
        }
    }

    fn map_page(&self, gva: u64, frame: u64, leaf: u64) {
        let mut table = self.paging.cr3 & ADDR;
        for level in (1..=4u32).rev() {
            let index = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
            let entry_gpa = table + index * 8;
            if level == 1 {
                self.write_u64(entry_gpa, frame | leaf);
                return;
            }
            let entry = self.read_u64(entry_gpa);
            table = if entry & P != 0 {
                entry & ADDR
            } else {
                let mut next = lock(&self.next_table);
                let t = *next;
                assert!(t < TABLES_END, "mock page-table area is full");
                *next += 0x1000;
                self.write_u64(entry_gpa, t | P | RW);
                t
            };
        }
    }

    fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0; 8];
        self.peek_into(Gpa(gpa), &mut b);
        u64::from_le_bytes(b)
    }

    fn write_u64(&self, gpa: u64, v: u64) {
        self.poke(Gpa(gpa), &v.to_le_bytes());
    }

    /// Writes guest RAM without logging (test setup).
    ///
    /// # Panics
    /// If the range is outside RAM.
    pub fn poke(&self, gpa: Gpa, bytes: &[u8]) {
        let start = usize::try_from(gpa.raw()).unwrap_or(usize::MAX);
        lock(&self.mem)[start..start + bytes.len()].copy_from_slice(bytes);
    }

    /// Reads guest RAM (what the guest itself sees, our patches included).
    ///
    /// # Panics
    /// If the range is outside RAM.
    pub fn peek(&self, gpa: Gpa, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.peek_into(gpa, &mut v);
        v
    }

    fn peek_into(&self, gpa: Gpa, buf: &mut [u8]) {
        let start = usize::try_from(gpa.raw()).unwrap_or(usize::MAX);
        buf.copy_from_slice(&lock(&self.mem)[start..start + buf.len()]);
    }

    /// A vCPU of this VM (regs zero but RFLAGS bit 1, no debug state), logging into the
    /// shared log.
    pub fn vcpu(&self, index: usize) -> MockVcpu {
        MockVcpu {
            index,
            regs: Regs {
                rflags: 0x2,
                ..Regs::default()
            },
            paging: self.paging,
            debug: GuestDebug::default(),
            injected: 0,
            log: self.log.clone(),
        }
    }

    /// Every call so far.
    pub fn log(&self) -> Vec<Call> {
        lock(&self.log).clone()
    }

    /// Every call so far, emptying the log.
    pub fn take_log(&self) -> Vec<Call> {
        std::mem::take(&mut *lock(&self.log))
    }

    fn record(&self, call: Call) {
        lock(&self.log).push(call);
    }

    /// For a test thread playing vCPU `me`: back at the top of the vCPU loop. Counts as out
    /// of the guest, waits while the vCPU is paused, then counts as running again.
    pub fn loop_top(&self, me: usize) {
        let mut s = lock(&self.sched);
        s.running[me] = false;
        self.wake.notify_all();
        while s.pauses[me] > 0 {
            s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.running[me] = true;
    }

    /// For a test thread playing vCPU `me`: the thread ends (the vCPU is out for good).
    pub fn vcpu_exit(&self, me: usize) {
        let mut s = lock(&self.sched);
        s.running[me] = false;
        self.wake.notify_all();
    }

    fn pause_where(&self, skip: Option<usize>) {
        let mut s = lock(&self.sched);
        let n = s.pauses.len();
        for i in (0..n).filter(|&i| Some(i) != skip) {
            s.pauses[i] += 1;
        }
        while (0..n).any(|i| Some(i) != skip && s.running[i]) {
            s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn resume_where(&self, skip: Option<usize>) {
        let mut s = lock(&self.sched);
        let n = s.pauses.len();
        for i in (0..n).filter(|&i| Some(i) != skip) {
            s.pauses[i] = s.pauses[i].saturating_sub(1);
        }
        self.wake.notify_all();
    }

    fn check_range(&self, gpa: Gpa, len: usize) -> Result<usize, PhysMemError> {
        let err = PhysMemError::OutOfRange { gpa, len };
        let start = usize::try_from(gpa.raw()).map_err(|_| err.clone())?;
        match start.checked_add(len) {
            Some(end) if end <= lock(&self.mem).len() => Ok(start),
            _ => Err(err),
        }
    }
}

impl PhysMem for MockTarget {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), PhysMemError> {
        let start = self.check_range(gpa, buf.len())?;
        buf.copy_from_slice(&lock(&self.mem)[start..start + buf.len()]);
        Ok(())
    }
}

impl PhysMemMut for MockTarget {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), PhysMemError> {
        let start = self.check_range(gpa, buf.len())?;
        lock(&self.mem)[start..start + buf.len()].copy_from_slice(buf);
        self.record(Call::WritePhys {
            gpa,
            bytes: buf.to_vec(),
        });
        Ok(())
    }
}

impl Target for MockTarget {
    fn vcpu_count(&self) -> usize {
        lock(&self.sched).pauses.len()
    }

    fn pause_all(&self) -> Result<(), TargetError> {
        self.record(Call::PauseAll);
        self.pause_where(None);
        Ok(())
    }

    fn resume_all(&self) -> Result<(), TargetError> {
        self.record(Call::ResumeAll);
        self.resume_where(None);
        Ok(())
    }

    fn pause_others(&self, me: usize) -> Result<(), TargetError> {
        self.record(Call::PauseOthers(me));
        self.pause_where(Some(me));
        Ok(())
    }

    fn resume_others(&self, me: usize) -> Result<(), TargetError> {
        self.record(Call::ResumeOthers(me));
        self.resume_where(Some(me));
        Ok(())
    }

    fn with_vcpu(&self, index: usize, f: VcpuJob) -> Result<(), TargetError> {
        if index >= self.vcpu_count() {
            return Err(TargetError::NoVcpu(index));
        }
        let mut vcpu = self.vcpu(index);
        f(&mut vcpu);
        Ok(())
    }
}

/// One mock vCPU: registers, paging context and debug state, logging its writes.
#[derive(Debug, Clone)]
pub struct MockVcpu {
    /// vCPU index.
    pub index: usize,
    /// General-purpose registers.
    pub regs: Regs,
    /// What [`VcpuAccess::paging`] answers.
    pub paging: PagingContext,
    /// The last debug state set.
    pub debug: GuestDebug,
    /// Breakpoints injected so far.
    pub injected: u32,
    log: Log,
}

impl VcpuAccess for MockVcpu {
    fn index(&self) -> usize {
        self.index
    }

    fn regs(&self) -> Result<Regs, TargetError> {
        Ok(self.regs)
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<(), TargetError> {
        self.regs = *regs;
        lock(&self.log).push(Call::SetRegs {
            vcpu: self.index,
            regs: *regs,
        });
        Ok(())
    }

    fn paging(&self) -> Result<PagingContext, TargetError> {
        Ok(self.paging)
    }

    fn set_debug(&mut self, debug: &GuestDebug) -> Result<(), TargetError> {
        self.debug = *debug;
        lock(&self.log).push(Call::SetDebug {
            vcpu: self.index,
            debug: *debug,
        });
        Ok(())
    }

    fn inject_breakpoint(&mut self) -> Result<(), TargetError> {
        self.injected += 1;
        lock(&self.log).push(Call::InjectBreakpoint { vcpu: self.index });
        Ok(())
    }
}
