//! The Rust half of hvprobe's guest module: the protocol with hvprobe's `kmod` PCI device
//! (register map in `vmm/src/devices/kmod.rs`, repeated in [`reg`]). The C shim (`shim.c`)
//! owns everything that is a kernel API (PCI driver glue, the interrupt, the work item,
//! `synchronize_rcu_tasks()`, logging); it hands this code the mapped registers and the
//! module's arena, and calls it at each step. Nothing here allocates, formats or uses
//! floating point: the object is linked into a kernel module (see `guest-kmod/README.md`).

#![no_std]

use core::ptr::{read_volatile, write_volatile};

/// The device's register offsets in BAR0 (the same map as `vmm/src/devices/kmod.rs`).
pub mod reg {
    /// RO: [`super::MAGIC`].
    pub const MAGIC: usize = 0x00;
    /// RO: the protocol version, [`super::VERSION`].
    pub const VERSION: usize = 0x04;
    /// RO: capability bits ([`super::CAP_ARENA`], [`super::CAP_BARRIER`]).
    pub const CAPS: usize = 0x08;
    /// RO: status bits ([`super::STATUS_ARENA`], [`super::STATUS_REFUSED`]).
    pub const STATUS: usize = 0x0c;
    /// RW (64-bit): the arena's code region, guest-virtual.
    pub const CODE_BASE: usize = 0x10;
    /// RW (64-bit): the code region's length.
    pub const CODE_LEN: usize = 0x18;
    /// RW (64-bit): the arena's data region, guest-virtual.
    pub const DATA_BASE: usize = 0x20;
    /// RW (64-bit): the data region's length.
    pub const DATA_LEN: usize = 0x28;
    /// WO: a command ([`super::CMD_ATTACH`], [`super::CMD_RELEASE`]).
    pub const COMMAND: usize = 0x30;
    /// RO: pending interrupt causes ([`super::IRQ_BARRIER`]).
    pub const IRQ_STATUS: usize = 0x34;
    /// WO: acknowledges the interrupt causes written.
    pub const IRQ_ACK: usize = 0x38;
    /// RO: the barrier sequence number hvprobe asks for.
    pub const BARRIER_SEQ: usize = 0x3c;
    /// WO: the barrier sequence number the module completed.
    pub const BARRIER_DONE: usize = 0x40;
    /// WO (1 to 8 bytes): text of a MARK line (NUL bytes skipped, `\n` ends the line).
    pub const MARK: usize = 0x48;
    /// RW (64-bit): the module's handler ([`super::hvk_handler`]), guest-virtual; written
    /// before [`super::CMD_ATTACH`].
    pub const HANDLER: usize = 0x50;
}

/// "HVPK", little-endian.
pub const MAGIC: u32 = 0x4b50_5648;
/// The protocol version this module speaks.
pub const VERSION: u32 = 1;
/// Capability: hvprobe takes a trampoline arena.
pub const CAP_ARENA: u32 = 1 << 0;
/// Capability: hvprobe asks for quiescence barriers.
pub const CAP_BARRIER: u32 = 1 << 1;
/// Capability: hvprobe takes MARK lines.
pub const CAP_MARK: u32 = 1 << 2;
/// Capability: hvprobe's trampolines may call the module's handler ([`reg::HANDLER`]).
pub const CAP_HANDLER: u32 = 1 << 3;
/// Status: hvprobe uses the arena.
pub const STATUS_ARENA: u32 = 1 << 0;
/// Status: hvprobe refused the arena.
pub const STATUS_REFUSED: u32 = 1 << 1;
/// Command: report the arena (CODE_*, DATA_*).
pub const CMD_ATTACH: u32 = 1;
/// Command: the module is going away: hvprobe unoptimizes every jump into the arena.
pub const CMD_RELEASE: u32 = 2;
/// Interrupt cause: hvprobe asks for a barrier (BARRIER_SEQ).
pub const IRQ_BARRIER: u32 = 1 << 0;

/// Results the shim turns into messages and errno values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvkStatus {
    /// Done.
    Ok = 0,
    /// The BAR is not hvprobe's device (wrong magic).
    NotHvprobe = 1,
    /// hvprobe speaks another protocol version.
    Version = 2,
    /// hvprobe does not take an arena.
    NoArena = 3,
    /// hvprobe refused the arena (its reason is in hvprobe's log).
    Refused = 4,
}

unsafe extern "C" {
    /// The kernel's `panic()` (never returns).
    fn panic(fmt: *const u8, ...) -> !;
    /// shim.c: the current task's `tgid << 32 | pid` and its `comm` (16 bytes).
    fn hvk_current(pid: *mut u64, comm: *mut u8);
    /// shim.c: `copy_from_user_nofault` below the user-space limit, else
    /// `copy_from_kernel_nofault`; 0 when all `len` bytes were copied.
    fn hvk_copy_nofault(dst: *mut u8, src: u64, len: usize) -> i64;
    /// shim.c: `raw_smp_processor_id()`.
    fn hvk_cpu() -> u32;
}

/// The registers of one device, mapped by the shim (`pci_iomap`).
struct Regs(*mut u8);

impl Regs {
    fn read32(&self, off: usize) -> u32 {
        // SAFETY: the shim passes a mapping of BAR0 (4 KiB) and every offset used is a
        // `reg` constant below 0x100, 4-byte aligned.
        unsafe { read_volatile(self.0.add(off).cast::<u32>()) }
    }

    fn write32(&self, off: usize, v: u32) {
        // SAFETY: as in `read32`.
        unsafe { write_volatile(self.0.add(off).cast::<u32>(), v) }
    }

    fn write64(&self, off: usize, v: u64) {
        // SAFETY: as in `read32`; the 64-bit registers are 8-byte aligned.
        unsafe { write_volatile(self.0.add(off).cast::<u64>(), v) }
    }
}

/// Checks that `regs` is hvprobe's device speaking [`VERSION`].
fn identify(r: &Regs) -> HvkStatus {
    if r.read32(reg::MAGIC) != MAGIC {
        return HvkStatus::NotHvprobe;
    }
    if r.read32(reg::VERSION) != VERSION {
        return HvkStatus::Version;
    }
    HvkStatus::Ok
}

/// Reports the arena (`code`: executable, `data`: writable; both inside the module's image)
/// to the device at `regs` and returns what hvprobe made of it. The write of
/// [`CMD_ATTACH`] exits to hvprobe, which checks and lays the arena out before the guest
/// runs on, so STATUS read next is final.
///
/// # Safety
/// `regs` maps the device's BAR0 (at least 4 KiB).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_attach(
    regs: *mut u8,
    code: u64,
    code_len: u64,
    data: u64,
    data_len: u64,
    handler: u64,
) -> HvkStatus {
    let r = Regs(regs);
    let id = identify(&r);
    if id != HvkStatus::Ok {
        return id;
    }
    if r.read32(reg::CAPS) & CAP_ARENA == 0 {
        return HvkStatus::NoArena;
    }
    r.write64(reg::CODE_BASE, code);
    r.write64(reg::CODE_LEN, code_len);
    r.write64(reg::DATA_BASE, data);
    r.write64(reg::DATA_LEN, data_len);
    if r.read32(reg::CAPS) & CAP_HANDLER != 0 {
        r.write64(reg::HANDLER, handler);
    }
    r.write32(reg::COMMAND, CMD_ATTACH);
    if r.read32(reg::STATUS) & STATUS_ARENA != 0 {
        HvkStatus::Ok
    } else {
        HvkStatus::Refused
    }
}

/// Asks hvprobe to let go of the arena: every jump into it becomes an int3 again before the
/// write returns. The shim then waits for a barrier before the module's memory goes.
///
/// # Safety
/// `regs` maps the device's BAR0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_release(regs: *mut u8) {
    let r = Regs(regs);
    if identify(&r) == HvkStatus::Ok {
        r.write32(reg::COMMAND, CMD_RELEASE);
    }
}

/// From the interrupt handler: acknowledges the device's causes and returns them (0: the
/// interrupt was not this device's).
///
/// # Safety
/// `regs` maps the device's BAR0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_irq(regs: *mut u8) -> u32 {
    let r = Regs(regs);
    let causes = r.read32(reg::IRQ_STATUS);
    if causes != 0 && causes != u32::MAX {
        r.write32(reg::IRQ_ACK, causes);
        causes
    } else {
        0
    }
}

/// The barrier sequence number hvprobe asks for (read before the barrier runs, so a request
/// that arrives during it gets its own barrier).
///
/// # Safety
/// `regs` maps the device's BAR0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_barrier_wanted(regs: *mut u8) -> u32 {
    Regs(regs).read32(reg::BARRIER_SEQ)
}

/// Tells hvprobe that the barrier for `seq` completed.
///
/// # Safety
/// `regs` maps the device's BAR0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_barrier_done(regs: *mut u8, seq: u32) {
    Regs(regs).write32(reg::BARRIER_DONE, seq);
}

/// Writes `len` bytes at `text` to the MARK register, 8 at a time (the last chunk padded with
/// NUL bytes, which hvprobe skips); with `last`, ends the line with `\n` unless the text did.
///
/// # Safety
/// `regs` maps the device's BAR0; `text` points to `len` readable bytes (a kernel buffer).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_mark(regs: *mut u8, text: *const u8, len: usize, last: i32) {
    let r = Regs(regs);
    if r.read32(reg::CAPS) & CAP_MARK == 0 {
        return;
    }
    // SAFETY: the caller passes `len` readable bytes at `text`.
    let bytes = unsafe { core::slice::from_raw_parts(text, len) };
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        r.write64(reg::MARK, u64::from_le_bytes(word));
    }
    if last != 0 && bytes.last() != Some(&b'\n') {
        r.write32(reg::MARK, u32::from(b'\n'));
    }
}

/// The registers a handler-call trampoline saved, as it pushed them (the probed context:
/// RSP there is `&self + 256`, above this block and the 128-byte red zone it skipped).
#[repr(C)]
pub struct HvkRegs {
    /// r15 .. r8, rdi, rsi, rbp, rbx, rdx, rcx, rax: indexed by [`Gpr`] numbers below.
    pub gpr: [u64; 15],
    /// RFLAGS.
    pub rflags: u64,
}

/// Where each register sits in [`HvkRegs::gpr`], by x86 register number (rax = 0 .. r15 =
/// 15; rsp, 4, is not saved there).
const GPR_SLOT: [u8; 16] = [14, 13, 12, 11, 0xff, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];

/// Bytes of a ring's header, a record, and the offset of a ring's `tail` word (the layout of
/// `disasm::trampoline`, which hvprobe's ring reader reads).
const RING_RECORDS: u64 = 128;
const RECORD_SIZE: u64 = 64;
const RING_TAIL: u64 = 64;
/// Bytes of the string argument a record holds.
const STR_BYTES: usize = 24;

/// The handler hvprobe's handler-call trampolines call (C ABI), in the probed task's context
/// with the probed registers at `regs`. It records one hit in a ring, as the fixed
/// trampoline template does, but with what only code in the guest can fetch safely:
/// values = [`tgid << 32 | pid`, comm (16 bytes), the first 24 bytes of the NUL-terminated
/// string the register numbered `tag_arg >> 32 & 0xff` points to (user or kernel memory,
/// through the no-fault copy helpers; 0xff: none)].
///
/// `tag_arg` low 32 bits: the trampoline's tag. `rings`: ring 0 (guest-virtual);
/// `geometry`: ring count (low 32 bits) and bytes between rings (high); `capacity`: records
/// per ring (a power of two); `lost`: the slot's lost counter, counted when the ring is full.
/// The record is reserved with a compare-and-swap on the ring's head (safe against an
/// interrupt re-entering on this CPU and against migration) and committed by its sequence
/// word, written last.
///
/// # Safety
/// Called only by hvprobe's trampolines, with `regs` the saved block and ring values hvprobe
/// laid out in the module's data region.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hvk_handler(
    regs: *const HvkRegs,
    tag_arg: u64,
    rings: u64,
    geometry: u64,
    capacity: u64,
    lost: u64,
) {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    let ring_count = geometry & 0xffff_ffff;
    let stride = geometry >> 32;
    if ring_count == 0 || !capacity.is_power_of_two() {
        return;
    }
    // SAFETY: hvk_cpu has no preconditions.
    let cpu = u64::from(unsafe { hvk_cpu() }) % ring_count;
    let ring = rings + cpu * stride;
    // SAFETY: hvprobe laid the rings out in the module's data region (8-byte aligned words).
    let head = unsafe { &*(ring as *const AtomicU64) };
    let tail = unsafe { &*((ring + RING_TAIL) as *const AtomicU64) };
    let index = loop {
        let h = head.load(Ordering::Acquire);
        if h.wrapping_sub(tail.load(Ordering::Acquire)) >= capacity {
            // SAFETY: as above: the slot's lost counter.
            unsafe { &*(lost as *const AtomicU64) }.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if head
            .compare_exchange(h, h.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            break h;
        }
    };
    let mut values = [0u64; 6];
    let mut comm = [0u8; 16];
    // SAFETY: two valid out-pointers.
    unsafe { hvk_current(&mut values[0], comm.as_mut_ptr()) };
    values[1] = u64::from_le_bytes(word(&comm, 0));
    values[2] = u64::from_le_bytes(word(&comm, 8));
    let arg = usize::try_from((tag_arg >> 32) & 0xff).unwrap_or(0xff);
    let slot = GPR_SLOT.get(arg).copied().unwrap_or(0xff);
    if slot != 0xff {
        // SAFETY: the trampoline passes its saved block.
        let ptr = unsafe { (*regs).gpr[usize::from(slot)] };
        let mut text = [0u8; STR_BYTES];
        fetch_str(ptr, &mut text);
        values[3] = u64::from_le_bytes(word(&text, 0));
        values[4] = u64::from_le_bytes(word(&text, 8));
        values[5] = u64::from_le_bytes(word(&text, 16));
    }
    let rec = ring + RING_RECORDS + (index & (capacity - 1)) * RECORD_SIZE;
    // SAFETY: the record reserved above, inside the ring hvprobe laid out.
    unsafe {
        write_volatile((rec + 4) as *mut u32, tag_arg as u32);
        write_volatile((rec + 8) as *mut u64, core::arch::x86_64::_rdtsc());
        for (i, v) in values.iter().enumerate() {
            write_volatile((rec + 16 + 8 * i as u64) as *mut u64, *v);
        }
        (*(rec as *const AtomicU32)).store(index.wrapping_add(1) as u32, Ordering::Release);
    }
}

fn word(b: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    w
}

/// Copies the NUL-terminated string at `ptr` into `out` (cut at its length), 8 bytes at a
/// time, then byte by byte where a chunk fails (the end of a mapped page).
fn fetch_str(ptr: u64, out: &mut [u8; STR_BYTES]) {
    let mut at = 0;
    while at < STR_BYTES {
        let mut chunk = [0u8; 8];
        // SAFETY: the helper never faults; `chunk` has 8 bytes.
        let ok = unsafe { hvk_copy_nofault(chunk.as_mut_ptr(), ptr + at as u64, 8) } == 0;
        let n = if ok {
            8
        } else {
            let mut n = 0;
            while n < 8 {
                // SAFETY: as above, one byte.
                if unsafe { hvk_copy_nofault(chunk.as_mut_ptr().add(n), ptr + (at + n) as u64, 1) }
                    != 0
                {
                    break;
                }
                n += 1;
            }
            n
        };
        out[at..at + n].copy_from_slice(&chunk[..n]);
        if n < 8 || chunk[..n].contains(&0) {
            break;
        }
        at += 8;
    }
    if let Some(z) = out.iter().position(|&b| b == 0) {
        out[z..].fill(0);
    }
}

#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the kernel's panic() takes a printf format; this one has no conversions.
    unsafe { panic(c"hvprobe_guest: Rust panic".as_ptr().cast()) }
}
