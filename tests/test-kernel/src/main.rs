//! hvprobe's test kernel: a tiny no_std x86_64 kernel that hvprobe embeds, boots, and probes.
//!
//! See README.md for the boot contract and the scenarios.

#![no_std]
#![no_main]

mod arena;
mod bootparams;
mod edu;
mod opt;
mod pci;
mod port;
mod scenarios;
mod serial;
mod testdev;
mod user;

use core::panic::PanicInfo;

use crate::bootparams::{BootParams, param};
use crate::serial::{Bytes, kprintln};

/// The kernel's entry point (the ELF entry, first in .text at 0x100000).
///
/// Sets up its own stack (16 KiB in .stack, from linker.ld) and zeroes .bss, then calls
/// [`tk_main`] with `rsi` (boot_params) as the first argument.
// SAFETY (naked): the body is self-contained assembly that never returns; it only relies on
// the symbols linker.ld defines and on `tk_main`'s C ABI.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "cli",
        "cld",
        "lea rsp, [rip + __stack_top]",
        "xor ebp, ebp",
        // Zero .bss; rsi (boot_params) survives `rep stosb`, which uses rdi, rcx and al.
        "lea rdi, [rip + __bss_start]",
        "lea rcx, [rip + __bss_end]",
        "sub rcx, rdi",
        "xor eax, eax",
        "rep stosb",
        "mov rdi, rsi",
        "call {main}",
        "2:",
        "cli",
        "hlt",
        "jmp 2b",
        main = sym tk_main,
    )
}

/// The Rust entry: reads the command line and runs the scenario it names.
///
/// # Safety
/// Called once, by `_start`, with `boot_params` as in [`BootParams::new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tk_main(boot_params: usize) -> ! {
    // SAFETY: `_start` passes `rsi`, which hvprobe's boot contract sets to the address of an
    // initialised boot_params page that nothing else writes to.
    let boot = unsafe { BootParams::new(boot_params) };
    let cmdline = boot.cmdline();
    let name = param(cmdline, b"hvtest").unwrap_or(b"hello");
    // Before any scenario, so hvprobe can lay out its trampolines before probed code runs.
    arena::report();
    kprintln!(
        "hvprobe test kernel {}: scenario {}",
        env!("CARGO_PKG_VERSION"),
        Bytes(name)
    );
    scenarios::run(name, &scenarios::Context { boot, cmdline })
}

/// Halts forever with interrupts off (in ring 0), or spins (in ring 3, where `hlt` would
/// fault, and a fault there is a triple fault).
pub fn halt_forever() -> ! {
    if user::cpl() != 0 {
        loop {
            core::hint::spin_loop();
        }
    }
    loop {
        // SAFETY: `cli; hlt` touches no memory; the vCPU stops here for good.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    kprintln!("test kernel panic: {}", info.message());
    testdev::exit(101)
}
