//! Kicking a vCPU out of KVM_RUN from another thread.
//!
//! The vCPU thread publishes a pointer to its `kvm_run` page in a thread-local. A kick sends
//! it a real-time signal; the handler, running on that same thread, sets
//! `kvm_run.immediate_exit`. Whether the signal lands inside KVM_RUN (which then returns
//! EINTR) or just before it (the next KVM_RUN returns at once), the vCPU comes out and sees
//! its messages: no lost wake-ups. The thread clears `immediate_exit` after each kick.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was published by this thread from its own live VcpuFd's kvm_run
        // mapping and is cleared before that VcpuFd is dropped; a volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

/// Publishes this thread's `kvm_run` (or clears it with null).
pub fn publish(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}
