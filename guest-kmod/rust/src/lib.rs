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
}

/// "HVPK", little-endian.
pub const MAGIC: u32 = 0x4b50_5648;
/// The protocol version this module speaks.
pub const VERSION: u32 = 1;
/// Capability: hvprobe takes a trampoline arena.
pub const CAP_ARENA: u32 = 1 << 0;
/// Capability: hvprobe asks for quiescence barriers.
pub const CAP_BARRIER: u32 = 1 << 1;
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

#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the kernel's panic() takes a printf format; this one has no conversions.
    unsafe { panic(c"hvprobe_guest: Rust panic".as_ptr().cast()) }
}
