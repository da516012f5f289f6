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
    /// Per vCPU: the last instruction neither could run (RIP, bytes, when, how many times in
    /// a row), to tell cross-modified code (re-run once) from a real crash.
    refused: Vec<Mutex<Option<Refusal>>>,
}

/// An instruction the emulator failed on and hvprobe does not run (see [`RETRIES`]).
struct Refusal {
    rip: u64,
    bytes: Vec<u8>,
    at: std::time::Instant,
    times: u32,
}

/// How often the guest re-runs an instruction the emulator failed on before it is a crash.
/// The emulator fails on code that another vCPU rewrites under it (Linux's jump labels and
/// `text_poke_bp`: the bytes found at RIP are then an ordinary `jmp` it runs every day); the
/// re-run finds the new bytes. An instruction it really cannot run fails again at once.
const RETRIES: u32 = 2;
/// Failures at the same RIP further apart than this count as new.
const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

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
            refused: (0..vcpus.max(1)).map(|_| Mutex::new(None)).collect(),
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
                if self.retry(index, rip, &bytes) {
                    self.say_once("retry", || {
                        format!(
                            "re-ran `{mnemonic}` at {} once: the emulator failed on it while \
                             its bytes were being rewritten (cross-modified code)",
                            describe(self.symbols.as_deref(), rip)
                        )
                    });
                    return Some(HookAction::Continue);
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

    /// Whether vCPU `index` should re-run the instruction at `rip` (`bytes`) that neither the
    /// emulator nor hvprobe ran: yes unless it already failed [`RETRIES`] times in a row.
    fn retry(&self, index: usize, rip: u64, bytes: &[u8]) -> bool {
        let mut last = lock(&self.refused[index.min(self.refused.len() - 1)]);
        should_retry(&mut last, rip, bytes, std::time::Instant::now())
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

/// Records a failure at `rip` (`bytes`) at `now` in `last` and says whether to re-run it:
/// yes unless the same bytes at the same RIP already failed [`RETRIES`] times in a row within
/// [`RETRY_WINDOW`] of each other.
fn should_retry(
    last: &mut Option<Refusal>,
    rip: u64,
    bytes: &[u8],
    now: std::time::Instant,
) -> bool {
    let times = match last.as_ref() {
        Some(r) if r.rip == rip && r.bytes == bytes && now - r.at < RETRY_WINDOW => r.times + 1,
        _ => 1,
    };
    *last = Some(Refusal {
        rip,
        bytes: bytes.to_vec(),
        at: now,
        times,
    });
    times <= RETRIES
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_failure_is_re_run_twice_then_it_is_a_crash_and_a_new_one_starts_over() {
        let mut last = None;
        let t = Instant::now();
        let jmp = [0xeb, 0x38];
        assert!(should_retry(&mut last, 0x1000, &jmp, t));
        assert!(should_retry(&mut last, 0x1000, &jmp, t));
        assert!(!should_retry(&mut last, 0x1000, &jmp, t), "third in a row");
        // Other bytes or another RIP: a new failure.
        assert!(should_retry(&mut last, 0x1000, &[0x90], t));
        assert!(should_retry(&mut last, 0x2000, &[0x90], t));
        // The same failure long after the last one: new as well.
        assert!(should_retry(&mut last, 0x2000, &[0x90], t));
        let later = t + RETRY_WINDOW + Duration::from_millis(1);
        assert!(should_retry(&mut last, 0x2000, &[0x90], later));
    }
}
