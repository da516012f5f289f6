//! The session layer: one running VM's instrumentation as operations a client calls while the
//! guest runs — pause, resume, stop, symbols, memory, registers, single-step, probes,
//! breakpoints and watchpoints — with who added what, so that a client's additions go away
//! when it disconnects (unless it asked for them to stay). `hvprobe run`'s flags and the
//! control API ([`api`]) go through these same operations.
//!
//! It sits on the VMM core (a [`VmTarget`] to pause vCPUs and run jobs on them, guest memory,
//! a [`Stopper`] to end the run) and on `introspect` (the [`Introspector`] that owns probes,
//! breakpoints and events). Nothing in the core knows about it.

pub mod api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use introspect::events::SourceId;
use introspect::session::{Introspector, SessionError, WatchRequest};
use introspect::symbols::SymbolTable;
use introspect::target::{Regs, Target, TargetError};
use introspect::{Gpa, Gva};

use crate::config::{ProbeSpec, WatchSpec};
use crate::memory::GuestMem;
use crate::target::VmTarget;
use crate::vm::Stopper;

/// The most bytes one memory read or write may move.
pub const MAX_MEM_IO: usize = 1 << 20;

/// How long a single-step may take before the client is told it did not complete.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client (0 is `hvprobe run`'s own command line).
pub type ClientId = u64;

/// The client id of `hvprobe run`'s flags: what they add stays for the whole run.
pub const RUN_FLAGS: ClientId = 0;

/// Why an operation failed. Messages are one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A parameter is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The VM must be paused for this (registers, single-step).
    #[error("The VM is running: pause it first (vm.pause)")]
    NotPaused,
    /// The VM has ended.
    #[error("The VM has ended")]
    Ended,
    /// The session refused (probe checks, slots, symbols).
    #[error("{}", crate::outcome::error_line(.0))]
    Session(#[from] SessionError),
    /// The VM refused (a vCPU did not answer, an ioctl failed).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A guest address does not translate or is not RAM.
    #[error("{0}")]
    Memory(String),
    /// A step did not complete in time.
    #[error("vCPU {0} did not complete its single-step within {STEP_TIMEOUT:?}")]
    StepTimeout(usize),
}

/// Where a memory operation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemAddr {
    /// A guest-virtual address, translated with vCPU `vcpu`'s page tables.
    Virt {
        /// The address.
        addr: u64,
        /// Whose page tables.
        vcpu: usize,
    },
    /// A guest-physical address.
    Phys(u64),
}

/// What [`Session::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `running`, `paused` or `ended`.
    pub state: &'static str,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Milliseconds since the session started.
    pub uptime_ms: u64,
    /// The client holding the pause, if any.
    pub paused_by: Option<ClientId>,
}

/// One probe, breakpoint or watchpoint, as [`Session::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    /// Its id (the event source id its events carry).
    pub id: u32,
    /// `probe SYM`, `hbreak SYM`, `watch SYM:LEN:w`.
    pub name: String,
    /// How it is armed (`int3`, `jump (...)`, `DR execute slot 0`, `removed`).
    pub how: String,
    /// Hits so far.
    pub hits: u64,
    /// Hits missed (kprobes' nmissed).
    pub nmissed: u64,
    /// Events lost.
    pub lost: u64,
    /// The client that added it (0: the command line).
    pub owner: ClientId,
    /// Whether it stays when its client disconnects.
    pub keep: bool,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    owner: ClientId,
    keep: bool,
}

#[derive(Debug, Default)]
struct RunState {
    paused_by: Option<ClientId>,
    ended: bool,
}

/// Builds, starts and waits for a VM: what `hvprobe run` does. With instrumentation, see
/// [`crate::instrument::run_instrumented`] (which also prints the per-source table).
pub fn run(config: &crate::config::VmConfig) -> Result<crate::vm::RunReport, crate::vm::VmError> {
    // On our software KVM a guest's own ring-0 int3 (Linux's int3 self-test, its kprobes,
    // text_poke) is an emulation failure: the session hands it back to the guest, so every
    // run there gets one, probes or not.
    if !config.instrument.is_empty()
        || !config.trace.is_empty()
        || config.api_socket.is_some()
        || crate::platform::is_software_kvm()
    {
        let (report, ins) = crate::instrument::run_instrumented(config)?;
        if !config.quiet && !config.instrument.is_empty() {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), ins.table.as_bytes());
        }
        return Ok(report);
    }
    let mut vm = crate::vm::Vm::new(config, None)?;
    vm.start()?;
    let outcome = vm.wait(config.timeout)?;
    Ok(crate::vm::RunReport {
        outcome,
        elapsed: vm.phases().elapsed(),
        points: vm.points(),
        marks: vm.marks(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One running VM's session.
pub struct Session {
    intro: Arc<Introspector>,
    target: VmTarget,
    mem: GuestMem,
    symbols: Option<Arc<SymbolTable>>,
    stopper: Stopper,
    hub: introspect::events::Hub,
    traces: Option<crate::tracer::TraceControl>,
    /// Which client added each trace (by trace id).
    trace_owners: Mutex<HashMap<u32, Owned>>,
    started: Instant,
    state: Mutex<RunState>,
    owned: Mutex<HashMap<u32, Owned>>,
}

impl Session {
    /// A session over a started VM.
    pub fn new(
        traces: Option<crate::tracer::TraceControl>,
        intro: Arc<Introspector>,
        target: VmTarget,
        mem: GuestMem,
        symbols: Option<Arc<SymbolTable>>,
        stopper: Stopper,
        hub: introspect::events::Hub,
    ) -> Session {
        Session {
            intro,
            target,
            mem,
            symbols,
            stopper,
            hub,
            traces,
            trace_owners: Mutex::new(HashMap::new()),
            started: Instant::now(),
            state: Mutex::new(RunState::default()),
            owned: Mutex::new(HashMap::new()),
        }
    }

    /// The introspection session.
    pub fn introspector(&self) -> &Arc<Introspector> {
        &self.intro
    }

    /// The event hub: clients subscribe here.
    pub fn hub(&self) -> &introspect::events::Hub {
        &self.hub
    }

    /// The kernel's symbols, if it has any.
    pub fn symbols(&self) -> Option<&SymbolTable> {
        self.symbols.as_deref()
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Running, paused or ended; vCPUs; uptime.
    pub fn status(&self) -> Status {
        let st = lock(&self.state);
        Status {
            state: if st.ended {
                "ended"
            } else if st.paused_by.is_some() {
                "paused"
            } else {
                "running"
            },
            vcpus: self.target.vcpu_count(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            paused_by: st.paused_by,
        }
    }

    /// Marks the VM as ended (the run is over): later operations say so.
    pub fn set_ended(&self) {
        lock(&self.state).ended = true;
    }

    fn check_running(&self) -> Result<(), OpError> {
        if lock(&self.state).ended {
            Err(OpError::Ended)
        } else {
            Ok(())
        }
    }

    fn check_paused(&self) -> Result<(), OpError> {
        let st = lock(&self.state);
        if st.ended {
            Err(OpError::Ended)
        } else if st.paused_by.is_none() {
            Err(OpError::NotPaused)
        } else {
            Ok(())
        }
    }

    /// Pauses every vCPU for `client`. Returns false if the VM was paused already.
    pub fn pause(&self, client: ClientId) -> Result<bool, OpError> {
        let mut st = lock(&self.state);
        if st.ended {
            return Err(OpError::Ended);
        }
        if st.paused_by.is_some() {
            return Ok(false);
        }
        self.target.pause_all()?;
        st.paused_by = Some(client);
        self.hub.emit(introspect::events::Event::lifecycle(
            self.hub.now_ns(),
            0,
            introspect::events::Lifecycle::Paused,
        ));
        Ok(true)
    }

    /// Lets every vCPU run again. Returns false if the VM was running.
    pub fn resume(&self) -> Result<bool, OpError> {
        let mut st = lock(&self.state);
        if st.ended {
            return Err(OpError::Ended);
        }
        if st.paused_by.take().is_none() {
            return Ok(false);
        }
        self.target.resume_all()?;
        self.hub.emit(introspect::events::Event::lifecycle(
            self.hub.now_ns(),
            0,
            introspect::events::Lifecycle::Resumed,
        ));
        Ok(true)
    }

    /// Ends the run (hvprobe then exits with [`crate::outcome::EXIT_STOPPED`]).
    pub fn stop(&self) -> Result<(), OpError> {
        self.check_running()?;
        self.stopper.stop_by_client();
        Ok(())
    }

    /// The address of `name` (`SYM`, `SYM+OFF` or `0x...`).
    pub fn lookup(&self, name: &str) -> Result<u64, OpError> {
        Ok(self.intro.resolve_location(name)?.raw())
    }

    /// `symbol+0xoff` for `addr`, if the kernel has a symbol at or below it.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.symbols
            .as_ref()
            .and_then(|s| s.lookup(addr))
            .map(|s| s.to_string())
    }

    /// Runs `f` on vCPU `vcpu`'s thread and returns its answer (bounded wait).
    fn on_vcpu<R: Send + 'static>(
        &self,
        vcpu: usize,
        f: impl FnOnce(&mut dyn introspect::target::VcpuAccess) -> Result<R, TargetError>
        + Send
        + 'static,
    ) -> Result<R, OpError> {
        if vcpu >= self.target.vcpu_count() {
            return Err(OpError::Invalid(format!(
                "There is no vCPU {vcpu} (the VM has {})",
                self.target.vcpu_count()
            )));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.target.with_vcpu(
            vcpu,
            Box::new(move |v| {
                let _ = tx.send(f(v));
            }),
        )?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| OpError::Invalid(format!("vCPU {vcpu} did not answer")))?
            .map_err(OpError::from)
    }

    fn paging(&self, vcpu: usize) -> Result<introspect::paging::PagingContext, OpError> {
        self.on_vcpu(vcpu, |v| v.paging())
    }

    /// Reads `len` bytes; probes' patches are hidden (the original bytes are returned).
    pub fn read(&self, at: &MemAddr, len: usize) -> Result<Vec<u8>, OpError> {
        self.check_running()?;
        if len > MAX_MEM_IO {
            return Err(OpError::Invalid(format!(
                "len {len} is over the limit of {MAX_MEM_IO} bytes per read: read in pieces"
            )));
        }
        let mut buf = vec![0u8; len];
        let engine = self.intro.engine();
        match *at {
            MemAddr::Phys(gpa) => engine
                .read_phys(&self.mem, Gpa(gpa), &mut buf)
                .map_err(|e| OpError::Memory(e.to_string()))?,
            MemAddr::Virt { addr, vcpu } => {
                let ctx = self.paging(vcpu)?;
                let mut walker = introspect::paging::PageWalker::new();
                engine
                    .read_virt(&mut walker, &self.mem, &ctx, Gva(addr), &mut buf)
                    .map_err(|e| OpError::Memory(e.to_string()))?;
            }
        }
        Ok(buf)
    }

    /// Writes `data`. Refused where it would overwrite a probe's patched bytes (remove the
    /// probe first): hvprobe's copy of the original would go stale.
    pub fn write(&self, at: &MemAddr, data: &[u8]) -> Result<(), OpError> {
        self.check_running()?;
        if data.len() > MAX_MEM_IO {
            return Err(OpError::Invalid(format!(
                "{} bytes is over the limit of {MAX_MEM_IO} per write: write in pieces",
                data.len()
            )));
        }
        let (gpa_of, virt) = match *at {
            MemAddr::Phys(gpa) => (gpa, None),
            MemAddr::Virt { addr, vcpu } => (0, Some((addr, self.paging(vcpu)?))),
        };
        let mut walker = introspect::paging::PageWalker::new();
        // The physical pieces of the range, page by page.
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let (gpa, room) = match &virt {
                None => {
                    let g = gpa_of + done as u64;
                    (g, 0x1000 - (g & 0xfff))
                }
                Some((addr, ctx)) => {
                    let va = addr.wrapping_add(done as u64);
                    let t = walker
                        .translate(&self.mem, ctx, Gva(va))
                        .map_err(|e| OpError::Memory(format!("{va:#x}: {e}")))?;
                    (t.gpa.raw(), 0x1000 - (va & 0xfff))
                }
            };
            let n = usize::try_from(room)
                .unwrap_or(0x1000)
                .min(data.len() - done);
            pieces.push((gpa, done, n));
            done += n;
        }
        for &(gpa, _, n) in &pieces {
            if !self.mem.contains(Gpa(gpa), n as u64) {
                return Err(OpError::Memory(format!("{gpa:#x}+{n:#x} is not guest RAM")));
            }
            // Patched bytes read back differently through the engine (it returns the
            // originals): a write there would leave its saved copy stale.
            let (mut raw, mut orig) = (vec![0u8; n], vec![0u8; n]);
            self.mem
                .read(Gpa(gpa), &mut raw)
                .map_err(|e| OpError::Memory(e.to_string()))?;
            self.intro
                .engine()
                .read_phys(&self.mem, Gpa(gpa), &mut orig)
                .map_err(|e| OpError::Memory(e.to_string()))?;
            if let Some(i) = raw.iter().zip(&orig).position(|(a, b)| a != b) {
                return Err(OpError::Invalid(format!(
                    "The write covers a probe's patched byte at guest-physical {:#x}: remove \
                     the probe first",
                    gpa + i as u64
                )));
            }
        }
        for (gpa, off, n) in pieces {
            self.mem
                .write(Gpa(gpa), &data[off..off + n])
                .map_err(|e| OpError::Memory(e.to_string()))?;
        }
        Ok(())
    }

    /// vCPU `vcpu`'s general-purpose registers (the VM must be paused).
    pub fn regs(&self, vcpu: usize) -> Result<Regs, OpError> {
        self.check_paused()?;
        self.vcpu_regs(vcpu)
    }

    fn vcpu_regs(&self, vcpu: usize) -> Result<Regs, OpError> {
        self.on_vcpu(vcpu, |v| v.regs())
    }

    /// Changes vCPU `vcpu`'s registers (the VM must be paused): `f` edits a copy.
    pub fn set_regs(&self, vcpu: usize, f: impl FnOnce(&mut Regs)) -> Result<Regs, OpError> {
        self.check_paused()?;
        let mut regs = self.vcpu_regs(vcpu)?;
        f(&mut regs);
        self.on_vcpu(vcpu, move |v| v.set_regs(&regs))?;
        Ok(regs)
    }

    /// Runs one instruction on vCPU `vcpu` (the VM must be paused; the others stay paused)
    /// and returns its registers after it.
    pub fn step(&self, vcpu: usize) -> Result<Regs, OpError> {
        self.check_paused()?;
        let before = self.vcpu_regs(vcpu)?;
        if self.intro.engine().is_armed(Gva(before.rip)) {
            return Err(OpError::Invalid(format!(
                "vCPU {vcpu} is on probe site {:#x}: remove the probe to step this instruction",
                before.rip
            )));
        }
        self.intro.request_step(vcpu);
        let debug = introspect::target::GuestDebug {
            single_step: true,
            ..self.intro.debug_state()
        };
        self.on_vcpu(vcpu, move |v| v.set_debug(&debug))?;
        // Only this vCPU runs; its step's #DB makes it pause itself again.
        self.target.resume_one(vcpu)?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.intro.step_pending(vcpu) {
            if Instant::now() > deadline {
                return Err(OpError::StepTimeout(vcpu));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.vcpu_regs(vcpu)
    }

    fn own(&self, source: SourceId, client: ClientId, keep: bool) {
        lock(&self.owned).insert(
            source.index(),
            Owned {
                owner: client,
                keep,
            },
        );
    }

    /// Adds a probe from its `--probe` text (`LOCATION[:MODE[:FETCH,...]]`) for `client`.
    pub fn add_probe(&self, client: ClientId, spec: &str, keep: bool) -> Result<SourceId, OpError> {
        self.check_running()?;
        let p: ProbeSpec = spec
            .parse()
            .map_err(|e| OpError::Invalid(format!("probe {spec:?}: {e}")))?;
        let req = crate::instrument::probe_request(&p, self.symbols.as_deref())
            .map_err(|e| OpError::Invalid(format!("probe {spec:?}: {e}")))?;
        let source = self.intro.add_probe_as(&self.target, &req)?;
        self.own(source, client, keep);
        Ok(source)
    }

    /// Adds a hardware execute breakpoint at `at` for `client`.
    pub fn add_hbreak(&self, client: ClientId, at: &str, keep: bool) -> Result<SourceId, OpError> {
        self.check_running()?;
        let loc: crate::config::Location = at
            .parse()
            .map_err(|e| OpError::Invalid(format!("hbreak {at:?}: {e}")))?;
        let source = self.intro.add_hbreak(&self.target, &loc.to_string())?;
        self.own(source, client, keep);
        Ok(source)
    }

    /// Adds a hardware watchpoint from its `--watch` text (`LOCATION:LEN:w|rw`) for `client`.
    pub fn add_watch(&self, client: ClientId, spec: &str, keep: bool) -> Result<SourceId, OpError> {
        self.check_running()?;
        let w: WatchSpec = spec
            .parse()
            .map_err(|e| OpError::Invalid(format!("watch {spec:?}: {e}")))?;
        let source = self.intro.add_watch(
            &self.target,
            &WatchRequest {
                at: w.at.to_string(),
                len: w.len,
                write_only: w.write_only,
            },
        )?;
        self.own(source, client, keep);
        Ok(source)
    }

    /// Removes probe, breakpoint or watchpoint `id`.
    pub fn remove(&self, id: u32) -> Result<(), OpError> {
        self.check_running()?;
        let source = self
            .intro
            .sources()
            .iter()
            .find(|(s, _)| s.index() == id)
            .map(|(s, _)| s)
            .ok_or_else(|| {
                OpError::Invalid(format!("No probe, breakpoint or watchpoint has id {id}"))
            })?;
        self.intro.remove_source(&self.target, source)?;
        lock(&self.owned).remove(&id);
        Ok(())
    }

    /// Every probe, breakpoint and watchpoint with its counters.
    pub fn list(&self) -> Vec<Item> {
        let owned = lock(&self.owned);
        self.intro
            .sources()
            .iter()
            .map(|(id, s)| {
                let o = owned.get(&id.index()).copied().unwrap_or(Owned {
                    owner: RUN_FLAGS,
                    keep: true,
                });
                Item {
                    id: id.index(),
                    name: s.name().to_string(),
                    how: s.how(),
                    hits: s.hits(),
                    nmissed: s.nmissed(),
                    lost: s.lost(),
                    owner: o.owner,
                    keep: o.keep,
                }
            })
            .collect()
    }

    /// The per-source table, as printed at exit.
    pub fn table(&self) -> String {
        introspect::events::summary_table(self.intro.sources())
    }

    fn trace_control(&self) -> Result<&crate::tracer::TraceControl, OpError> {
        self.traces.as_ref().ok_or_else(|| {
            OpError::Invalid("This run has no tracer (it was started without --api-socket)".into())
        })
    }

    /// Starts tracing `spec` (as `--mmiotrace` takes it: `edu`, `uart`, `testdev` or
    /// `GPA:LEN[:w]`) for `client`; returns the trace's id.
    pub fn add_trace(&self, client: ClientId, spec: &str, keep: bool) -> Result<u32, OpError> {
        self.check_running()?;
        let target: crate::config::TraceTarget = spec
            .parse()
            .map_err(|e| OpError::Invalid(format!("trace {spec:?}: {e}")))?;
        let id = self
            .trace_control()?
            .add(&target)
            .map_err(|e| OpError::Invalid(crate::outcome::error_line(&e)))?;
        lock(&self.trace_owners).insert(
            id,
            Owned {
                owner: client,
                keep,
            },
        );
        Ok(id)
    }

    /// Stops trace `id`.
    pub fn remove_trace(&self, id: u32) -> Result<(), OpError> {
        self.check_running()?;
        self.trace_control()?
            .remove(id)
            .map_err(|e| OpError::Invalid(crate::outcome::error_line(&e)))?;
        lock(&self.trace_owners).remove(&id);
        Ok(())
    }

    /// The traced targets: `(id, target)`.
    pub fn traces(&self) -> Vec<(u32, String)> {
        self.traces.as_ref().map(|t| t.list()).unwrap_or_default()
    }

    /// `client` disconnected: removes what it added without `keep`, and resumes the VM if it
    /// held the pause. Returns how many items were removed.
    pub fn client_gone(&self, client: ClientId) -> usize {
        let ids: Vec<u32> = lock(&self.owned)
            .iter()
            .filter(|(_, o)| o.owner == client && !o.keep)
            .map(|(id, _)| *id)
            .collect();
        let mut n = 0;
        for id in ids {
            if self.remove(id).is_ok() {
                n += 1;
            }
        }
        let traces: Vec<u32> = lock(&self.trace_owners)
            .iter()
            .filter(|(_, o)| o.owner == client && !o.keep)
            .map(|(id, _)| *id)
            .collect();
        for id in traces {
            if self.remove_trace(id).is_ok() {
                n += 1;
            }
        }
        if lock(&self.state).paused_by == Some(client) {
            let _ = self.resume();
        }
        n
    }
}
