//! Who is making the current device access: the vCPU and its RIP, for tracers (a bus device
//! sees only an offset and data). The vCPU thread sets it; it is valid during dispatch.
//!
//! The vCPU index is set once per thread. RIP is filled only while tracing is on
//! ([`crate::devices::IoDevices::tracing`]): the vCPU loop then asks KVM to sync the general
//! registers into `kvm_run` at every exit, so reading RIP costs no ioctl. KVM completes an
//! MMIO write before it exits, so a write's RIP is the address after the writing instruction
//! (checked in `vmm/tests/trace_ram.rs`); a read exits before its instruction completes, so
//! its RIP is the reading instruction's.

use std::cell::Cell;

thread_local! {
    static VCPU: Cell<Option<u32>> = const { Cell::new(None) };
    static RIP: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The access being dispatched on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccessContext {
    /// The vCPU (None off vCPU threads).
    pub vcpu: Option<u32>,
    /// Its RIP at the access (None unless tracing is on).
    pub rip: Option<u64>,
}

/// The current access context.
pub fn current() -> AccessContext {
    AccessContext {
        vcpu: VCPU.with(Cell::get),
        rip: RIP.with(Cell::get),
    }
}

pub(crate) fn set_vcpu(index: u32) {
    VCPU.with(|c| c.set(Some(index)));
}

pub(crate) fn set_rip(rip: Option<u64>) {
    RIP.with(|c| c.set(rip));
}
