//! Ring 3 for the test kernel: its own GDT with user segments, user-accessible page tables,
//! and a one-way `iretq` into ring 3.
//!
//! Ring 3 code here never comes back to ring 0: there is no TSS stack, no IDT and no system
//! call. It talks to hvprobe exactly as ring 0 code does, because [`run_in_ring3`] sets
//! RFLAGS.IOPL to 3: port I/O (the test device at 0x600, COM1) works from ring 3, and so does
//! the test device's MMIO page (every page of the first 4 GiB gets the U/S bit). It ends the VM
//! by writing the test device's EXIT register. Any fault in ring 3 (`hlt`, `int3`, a bad
//! access) is a triple fault: the VM shuts down.
//!
//! Checked on kvm_pvm (our CI's software KVM, where ring 3 runs natively): PIO, MMIO and
//! `rdtsc` work from ring 3 (the `ring3` scenario). `rdtscp` runs there too, but returns the
//! *host's* IA32_TSC_AUX in ECX (the host CPU's number), not the guest's; in emulated ring 0
//! it is an emulation failure. Native ring 3 also executes `cpuid` on the host CPU.

use core::arch::asm;
use core::cell::UnsafeCell;

/// Kernel code selector: the value hvprobe boots with (its `BOOT_CS`).
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data selector: the value hvprobe boots with (its `BOOT_DS`).
pub const KERNEL_DS: u16 = 0x18;
/// User data (and stack) selector: GDT entry 6, RPL 3.
pub const USER_DS: u16 = 0x30 | 3;
/// User 64-bit code selector: GDT entry 7, RPL 3.
pub const USER_CS: u16 = 0x38 | 3;

/// Encodes a GDT descriptor from `flags` (the access byte in bits 0-7, the G/DB/L/AVL nibble
/// in bits 12-15), `base` and `limit`: the same encoding as hvprobe's `boot::gdt::gdt_entry`.
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The kernel's GDT. Entries 0-4 are exactly hvprobe's boot GDT (so CS 0x10, DS 0x18 and the
/// TSS selector 0x20 keep their meaning); entry 5 would be the upper half of a 16-byte TSS
/// descriptor; 6 and 7 are the user segments. Every code and data descriptor has its
/// accessed bit set, so the CPU never writes to the table.
#[repr(C, align(16))]
struct Gdt([u64; 8]);

static GDT: Gdt = Gdt([
    0,
    0,
    descriptor(0xa09b, 0, 0xfffff), // 0x10 code: present, DPL0, execute/read, L=1, G=1
    descriptor(0xc093, 0, 0xfffff), // 0x18 data: present, DPL0, read/write, D/B=1, G=1
    descriptor(0x808b, 0, 0xfffff), // 0x20 TSS: hvprobe's (present, busy 64-bit TSS)
    0,                              // 0x28 upper half of a 16-byte system descriptor
    descriptor(0xc0f3, 0, 0xfffff), // 0x30 user data: present, DPL3, read/write
    descriptor(0xa0fb, 0, 0xfffff), // 0x38 user code: present, DPL3, execute/read, L=1
]);

/// The operand of `lgdt`.
#[repr(C, packed)]
struct Gdtr {
    limit: u16,
    base: u64,
}

/// Size of the ring-3 stack.
pub const USER_STACK_SIZE: usize = 64 << 10;

/// The ring-3 stack, 16-byte aligned; only ring 3 code ever uses it (through `rsp`).
#[repr(C, align(16))]
struct UserStack(UnsafeCell<[u8; USER_STACK_SIZE]>);

// SAFETY: the stack is never accessed through Rust references, only as the `rsp` of the one
// ring-3 context this kernel starts (once, on one vCPU).
unsafe impl Sync for UserStack {}

/// In its own NOBITS section (linker.ld), outside `.bss`: `_start` does not zero it (64 KiB of
/// `rep stosb` cost about 50 ms of emulated ring 0 on our CI's KVM, every boot); like all of
/// the data segment's memsz, it is zero when the kernel starts.
#[unsafe(link_section = ".user_stack")]
static USER_STACK: UserStack = UserStack(UnsafeCell::new([0; USER_STACK_SIZE]));

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
/// The physical-address bits of a page-table entry (52-bit physical addresses).
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// RFLAGS for ring 3: IOPL 3 (bits 12-13) and the always-one bit 1; IF = 0.
const USER_RFLAGS: u64 = (3 << 12) | (1 << 1);

/// The current privilege level (CS.RPL, which equals CPL).
pub fn cpl() -> u8 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    (cs & 3) as u8
}

/// Loads [`GDT`] and reloads every segment register with the kernel selectors (the same
/// values as before, now from this kernel's table).
///
/// # Safety
/// Ring 0 only, with interrupts off.
unsafe fn load_gdt() {
    let gdtr = Gdtr {
        limit: u16::try_from(core::mem::size_of::<Gdt>() - 1).unwrap_or(u16::MAX),
        base: GDT.0.as_ptr() as u64,
    };
    // SAFETY: the new table keeps the kernel selectors' descriptors unchanged, so reloading
    // CS (far return) and the data segments changes nothing but where they come from.
    // `lgdt` only reads `gdtr`; the pushes and pops balance on the current stack.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "mov ss, {ds:e}",
            gdtr = in(reg) &gdtr,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u32::from(KERNEL_DS),
            tmp = out(reg) _,
            options(preserves_flags),
        );
    }
}

/// Sets the U/S bit on `entry` if it is present; true if it maps a next-level table.
///
/// # Safety
/// `entry` must point to a page-table entry in identity-mapped RAM.
unsafe fn make_user(entry: *mut u64) -> Option<*mut u64> {
    // SAFETY: per the contract, `entry` is a valid page-table entry.
    let value = unsafe { entry.read_volatile() };
    if value & PTE_PRESENT == 0 {
        return None;
    }
    // SAFETY: as above; setting U/S only widens access (no SMEP/SMAP in CR4).
    unsafe { entry.write_volatile(value | PTE_USER) };
    Some((value & PTE_ADDR) as *mut u64)
}

/// Sets U/S on every present entry that maps the first 4 GiB (PML4 entry 0, PDPT entries
/// 0-3, their page directories and any 4 KiB page tables), then reloads CR3.
///
/// # Safety
/// Ring 0 only; the page tables must live in identity-mapped RAM below 4 GiB (hvprobe's do).
unsafe fn make_first_4_gib_user() {
    let cr3: u64;
    // SAFETY: reading CR3 in ring 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = (cr3 & PTE_ADDR) as *mut u64;
    // SAFETY: every pointer below comes from a present entry of the live page tables, which
    // are identity-mapped (contract); indices stay inside their 512-entry tables.
    unsafe {
        let Some(pdpt) = make_user(pml4) else {
            return;
        };
        for gib in 0..4 {
            let pdpte = pdpt.add(gib);
            let Some(pd) = make_user(pdpte) else {
                continue;
            };
            if pdpte.read_volatile() & PTE_HUGE != 0 {
                continue; // a 1 GiB page
            }
            for i in 0..512 {
                let pde = pd.add(i);
                let Some(pt) = make_user(pde) else {
                    continue;
                };
                if pde.read_volatile() & PTE_HUGE != 0 {
                    continue; // a 2 MiB page
                }
                for j in 0..512 {
                    make_user(pt.add(j));
                }
            }
        }
        asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags));
    }
}

/// Runs `f` in ring 3 and never comes back.
///
/// Loads the kernel's GDT (kernel selectors unchanged, user code [`USER_CS`] and data
/// [`USER_DS`] added), makes the first 4 GiB user-accessible, and `iretq`s to `f` with
/// RSP = top of a 64 KiB static stack - 8 (as after a `call`), RFLAGS = IOPL 3 with
/// interrupts off. `f` must end the VM (test device EXIT) and must not fault.
pub fn run_in_ring3(f: extern "C" fn() -> !) -> ! {
    // SAFETY: the kernel runs in ring 0 with interrupts off (boot contract) on hvprobe's
    // identity-mapped page tables.
    unsafe {
        load_gdt();
        make_first_4_gib_user();
    }
    let stack_top = USER_STACK.0.get() as u64 + USER_STACK_SIZE as u64;
    // SAFETY: an `iretq` frame for ring 3: SS, RSP, RFLAGS, CS, RIP. The target is a function
    // that never returns, on a stack nothing else uses; no Rust code runs after `iretq`.
    unsafe {
        asm!(
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "push {ds}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "iretq",
            ds = in(reg) u64::from(USER_DS),
            rsp = in(reg) stack_top - 8,
            rflags = in(reg) USER_RFLAGS,
            cs = in(reg) u64::from(USER_CS),
            rip = in(reg) f as usize as u64,
            options(noreturn),
        )
    }
}
