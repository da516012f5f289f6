//! What hvprobe does at run time so that Linux runs on the software KVM: the [`Accommodation`]
//! of one VM. The vCPU loop asks it first about every emulation failure (before the
//! introspection hook), and it answers for three cases:
//!
//! - the `syscall` relay's int3 ([`super::syscall_relay`]);
//! - an instruction the platform's emulator cannot run and hvprobe can
//!   ([`super::emulate`]): run on the host, RIP advanced, or the architectural exception
//!   injected;
//! - an instruction neither can run: the VM stops with a crash report naming the mnemonic,
//!   RIP and symbol (exit status 66), never a silent skip.
//!
//! An int3 that is not the relay's is not its business: the introspection hook decides
//! (a probe's, or the guest's own, handed back). Each kind of action is named once on stderr
//! when it first happens, and counted for the exit summary.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use introspect::paging::PageWalker;
use introspect::symbols::SymbolTable;

use super::emulate::{Emulated, Emulator, VcpuCpu};
use super::syscall_relay::SyscallRelay;
use crate::memory::GuestMem;
use crate::phases::Phases;
use crate::vcpu::exit::StopReason;
use crate::vcpu::{HookAction, VcpuCtx};

/// The software-KVM accommodation of one VM (Linux guests on `kvm_pvm` only).
pub struct Accommodation {
    mem: GuestMem,
    symbols: Option<Arc<SymbolTable>>,
    relay: Option<SyscallRelay>,
    emulator: Emulator,
    target: OnceLock<crate::target::VmTarget>,
    phases: Phases,
    /// Kinds of action already named on stderr.
    said: Mutex<BTreeSet<String>>,
    /// One page walker per vCPU (each caches translations for its own CR3).
    walkers: Vec<Mutex<PageWalker>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Accommodation {
    /// The accommodation for a Linux kernel loaded in `mem` (before its first instruction):
    /// arms the syscall relay when the kernel's symbols allow it, and says so.
    pub fn for_linux(
        mem: &GuestMem,
        symbols: Option<Arc<SymbolTable>>,
        vcpus: usize,
        phases: &Phases,
    ) -> Accommodation {
        let relay = match symbols.as_deref().map(|s| SyscallRelay::arm(mem, s)) {
            Some(Ok(r)) => {
                phases.log(format_args!(
                    "note: software KVM: syscalls from guest ring 3 are relayed to ring 0 by \
                     hvprobe (an int3 at {}, no debug register used): this emulator does not \
                     enter ring 0 on `syscall`",
                    describe(symbols.as_deref(), r.site())
                ));
                Some(r)
            }
            Some(Err(e)) => {
                phases.log(format_args!(
                    "warning: software KVM: no syscall relay ({e}); guest user space will not \
                     get past its first system call on this emulator"
                ));
                None
            }
            None => {
                phases.log(format_args!(
                    "warning: software KVM: no kernel symbols, so no syscall relay; guest \
                     user space will not get past its first system call on this emulator"
                ));
                None
            }
        };
        Accommodation {
            mem: mem.clone(),
            symbols,
            relay,
            emulator: Emulator::new(),
            target: OnceLock::new(),
            phases: phases.clone(),
            said: Mutex::new(BTreeSet::new()),
            walkers: (0..vcpus.max(1))
                .map(|_| Mutex::new(PageWalker::new()))
                .collect(),
        }
    }

    /// Gives the accommodation the running VM (atomics pause the other vCPUs through it).
    pub fn attach(&self, target: crate::target::VmTarget) {
        let _ = self.target.set(target);
    }

    /// The relay's int3 address, if armed (introspection keeps its own probes off it).
    pub fn relay_site(&self) -> Option<u64> {
        self.relay.as_ref().map(SyscallRelay::site)
    }

    /// Syscalls relayed so far.
    pub fn syscalls_relayed(&self) -> u64 {
        self.relay.as_ref().map_or(0, SyscallRelay::relayed)
    }

    /// Instructions run on the host so far, by mnemonic.
    pub fn emulated(&self) -> Vec<(String, u64)> {
        self.emulator.counts()
    }

    fn say_once(&self, kind: &str, text: impl FnOnce() -> String) {
        if lock(&self.said).insert(kind.to_string()) {
            self.phases
                .log(format_args!("note: software KVM: {}", text()));
        }
    }

    /// An emulation failure on `vcpu` at `rip`. `None`: not the accommodation's (an int3 that
    /// is not the relay's: the introspection hook decides).
    pub fn on_emulation_failure(&self, vcpu: &mut VcpuCtx<'_>, rip: u64) -> Option<HookAction> {
        let index = usize::from(vcpu.index);
        if let Some(relay) = &self.relay
            && relay.is_hit(rip, &self.mem)
        {
            let mut walker = lock(&self.walkers[index.min(self.walkers.len() - 1)]);
            walker.invalidate_all();
            return Some(match relay.on_hit(vcpu, &self.mem, &mut walker) {
                Ok(true) => {
                    self.say_once("relay", || {
                        "relayed the first system call from guest ring 3 to \
                         entry_SYSCALL_64"
                            .into()
                    });
                    HookAction::Continue
                }
                Ok(false) => HookAction::Continue,
                Err(e) => HookAction::Stop(StopReason::Crash(format!(
                    "the syscall relay failed at {}: {e}",
                    describe(self.symbols.as_deref(), rip)
                ))),
            });
        }
        // A guest's own int3 (or a probe's) is the introspection hook's.
        let target = self.target.get();
        let mut cpu = VcpuCpu::new(vcpu, target);
        match self.emulator.run(&mut cpu, &self.mem) {
            Emulated::Done { mnemonic } => {
                self.say_once(mnemonic, || {
                    format!(
                        "ran `{mnemonic}` on the host (first at {}): this emulator cannot run it",
                        describe(self.symbols.as_deref(), rip)
                    )
                });
                Some(HookAction::Continue)
            }
            Emulated::Faulted {
                mnemonic,
                exception,
            } => {
                self.say_once(&format!("{mnemonic} fault"), || {
                    format!(
                        "`{mnemonic}` at {} raised {exception} in the guest (run on the host)",
                        describe(self.symbols.as_deref(), rip)
                    )
                });
                Some(HookAction::Continue)
            }
            Emulated::Retry { .. } => Some(HookAction::Continue),
            Emulated::Refused {
                mnemonic,
                rip,
                bytes,
                reason,
            } => {
                if bytes.first() == Some(&0xcc) {
                    return None;
                }
                Some(HookAction::Stop(StopReason::Crash(format!(
                    "the emulator of this software KVM cannot run `{mnemonic}` at {} \
                     (bytes {}), and hvprobe does not run it on the host: {reason}",
                    describe(self.symbols.as_deref(), rip),
                    bytes
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))))
            }
        }
    }

    /// The exit summary: syscalls relayed, page faults passed, instructions run on the host.
    pub fn summary(&self) -> String {
        let mut s = String::from("software KVM accommodation:");
        if let Some(r) = &self.relay {
            s.push_str(&format!(
                " {} syscalls relayed, {} page faults passed through;",
                r.relayed(),
                r.passed()
            ));
        }
        let counts = self.emulator.counts();
        if counts.is_empty() {
            s.push_str(" no instruction run on the host");
        } else {
            s.push_str(" run on the host:");
            for (m, n) in counts {
                s.push_str(&format!(" {m} x{n}"));
            }
        }
        s
    }
}

/// `0x... (symbol+0x..)`, or the bare address.
fn describe(symbols: Option<&SymbolTable>, addr: u64) -> String {
    match symbols.and_then(|s| s.lookup(addr)) {
        Some(l) => format!("{addr:#x} ({l})"),
        None => format!("{addr:#x}"),
    }
}

impl crate::vcpu::Accommodate for Accommodation {
    fn on_emulation_failure(&self, vcpu: &mut VcpuCtx<'_>, rip: u64) -> Option<HookAction> {
        Accommodation::on_emulation_failure(self, vcpu, rip)
    }
}
