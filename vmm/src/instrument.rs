//! `hvprobe run` with probes, hardware breakpoints or watchpoints: the glue between the VM
//! and an `introspect::session::Introspector`.
//!
//! The VM starts with its vCPUs paused; the session resolves every location against the
//! kernel's symbols, arms probes and installs breakpoints on every vCPU; then the guest runs.
//! Debug exits and emulation failures reach the session through [`IntrospectHook`], on the
//! vCPU's own thread. Events flow to a writer thread; the per-source table prints at exit.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use introspect::events::{self, Event, EventWriter, Format, Lifecycle, Sources};
use introspect::probes::{Fetch, JumpHandler};
use introspect::session::{
    DEFAULT_FETCHES, Decision, Introspector, ProbeArm, ProbeRequest, SessionSpec, WatchRequest,
};
use introspect::symbols::SymbolTable;

use crate::config::{
    EventFormat, FetchSpec, Instrumentation, KernelSource, Location, ProbeMode, ProbeSpec, VmConfig,
};
use crate::target::VmTarget;
use crate::vcpu::exit::{DebugExit, InternalError, StopReason};
use crate::vcpu::{DebugHook, HookAction, VcpuCtx};
use crate::vm::{RunReport, Vm, VmError};

/// The VM's debug hook: hands exits to the session.
pub struct IntrospectHook {
    intro: Arc<Introspector>,
    target: OnceLock<VmTarget>,
    ram: OnceLock<crate::vm::RamControl>,
    kmod: OnceLock<crate::devices::kmod::KmodHandle>,
    /// The guest module's arena while attached: its doorbell page (guest-physical).
    kmod_doorbell: std::sync::Mutex<Option<u64>>,
}

impl IntrospectHook {
    /// A hook for `intro`; the target is set once the vCPUs exist ([`IntrospectHook::attach`]).
    pub fn new(intro: Arc<Introspector>) -> Self {
        IntrospectHook {
            intro,
            target: OnceLock::new(),
            ram: OnceLock::new(),
            kmod: OnceLock::new(),
            kmod_doorbell: std::sync::Mutex::new(None),
        }
    }

    /// Gives the hook the guest module's device, whose requests it then answers.
    pub fn attach_kmod(&self, kmod: crate::devices::kmod::KmodHandle) {
        let _ = self.kmod.set(kmod);
    }

    /// A request from the guest module (`devices::kmod`), on the writing vCPU's thread.
    ///
    /// - Attach: the arena is checked and laid out (`Introspector::attach_split_arena`), its
    ///   doorbell page carved, and, when probes wait for a jump, a quiescence barrier asked
    ///   for; no pass runs yet.
    /// - Barrier done: the pass runs (with its own pause-all RIP check), so a jump is written
    ///   only after both.
    /// - Release (rmmod): every jump into the arena becomes an int3 again before the guest
    ///   runs on; the doorbell page is guest RAM again.
    fn on_kmod(&self, vcpu: &mut VcpuCtx<'_>, req: crate::devices::kmod::KmodRequest) {
        use crate::devices::kmod::{KmodRequest, STATUS_ARENA, STATUS_REFUSED, STATUS_RELEASED};
        let (Some(target), Some(ram), Some(kmod)) =
            (self.target.get(), self.ram.get(), self.kmod.get())
        else {
            return;
        };
        let mut doorbell = self
            .kmod_doorbell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match req {
            KmodRequest::Attach {
                code,
                data,
                handler,
            } => {
                if doorbell.is_some() || self.intro.engine().arena().is_some() {
                    self.intro.add_note(
                        "guest module arena refused: an arena is already attached".into(),
                    );
                    kmod.set_status(STATUS_REFUSED);
                    return;
                }
                let layout = match self.intro.attach_split_arena(target, vcpu, code, data) {
                    Ok(l) => l,
                    Err(e) => {
                        self.intro.add_note(format!(
                            "guest module arena (code {:#x}+{:#x}, data {:#x}+{:#x}) refused: {e}",
                            code.0, code.1, data.0, data.1
                        ));
                        kmod.set_status(STATUS_REFUSED);
                        return;
                    }
                };
                let bell = layout.doorbell().1.raw();
                let device = Arc::new(std::sync::Mutex::new(crate::devices::doorbell::Doorbell));
                // The memory slots around the page are deleted and made again: no other vCPU may
                // touch guest RAM meanwhile (a page-table walk there triple-faults).
                let carved = with_others_paused(target, vcpu.index, || {
                    ram.carve(
                        bell,
                        0x1000,
                        crate::memslots::TraceMode::All,
                        device,
                        "the probe doorbell",
                    )
                });
                if let Err(e) = carved {
                    self.intro.add_note(format!(
                        "probe doorbell at {bell:#x} not set up ({e}): jump probes stay int3"
                    ));
                    self.intro.engine().detach_arena();
                    kmod.set_status(STATUS_REFUSED);
                    return;
                }
                *doorbell = Some(bell);
                match self.intro.check_module_handler(target, vcpu, handler, code, data) {
                    Ok(()) => self.intro.engine().set_module_handler(Some(handler)),
                    Err(why) => self.intro.add_note(format!(
                        "guest module handler {handler:#x} refused ({why}): jump-call probes stay int3"
                    )),
                }
                kmod.set_status(STATUS_ARENA);
                let asker = kmod.clone();
                self.intro.set_barrier(Some(Arc::new(move || {
                    asker.request_barrier();
                })));
                self.intro.add_note(format!(
                    "guest module arena: code {:#x} ({} slots), data {:#x} ({} rings of {} records)",
                    code.0, layout.slot_count, data.0, layout.ring_count, layout.ring_capacity
                ));
                if self.intro.engine().has_pending() {
                    kmod.request_barrier();
                }
            }
            KmodRequest::BarrierDone(seq) => {
                drop(doorbell);
                self.intro
                    .add_note(format!("quiescence barrier {seq} completed in the guest"));
                if seq == kmod.barrier_wanted() && self.intro.engine().arena().is_some() {
                    self.intro.optimize_from_vcpu(target, vcpu);
                }
            }
            KmodRequest::Release => {
                self.intro.set_barrier(None);
                let n = self
                    .intro
                    .release_arena(target, vcpu, "the guest module is unloading");
                if let Some(bell) = doorbell.take()
                    && let Err(e) = with_others_paused(target, vcpu.index, || {
                        ram.uncarve(bell, "the probe doorbell")
                    })
                {
                    self.intro
                        .add_note(format!("probe doorbell at {bell:#x} not given back: {e}"));
                }
                kmod.set_status(STATUS_RELEASED);
                self.intro.add_note(format!(
                    "guest module released its arena: {n} jump(s) back to int3"
                ));
            }
        }
    }

    /// Gives the hook the running VM (and the handle that carves the probe doorbell page).
    pub fn attach(&self, target: VmTarget, ram: crate::vm::RamControl) {
        let _ = self.target.set(target);
        let _ = self.ram.set(ram);
    }

    /// The guest reported its trampoline arena: lay it out, make its doorbell page exit,
    /// then optimize the pending probes with the other vCPUs paused. Any failure leaves the
    /// probes int3 (with a note); the guest runs on.
    fn on_arena(&self, vcpu: &mut VcpuCtx<'_>, base: u64, len: u64) {
        let (Some(target), Some(ram)) = (self.target.get(), self.ram.get()) else {
            return;
        };
        let layout = match self.intro.attach_arena(target, vcpu, base, len) {
            Ok(l) => l,
            Err(e) => {
                self.intro
                    .add_note(format!("trampoline arena at {base:#x} not used: {e}"));
                return;
            }
        };
        let doorbell = layout.doorbell().1.raw();
        let device = Arc::new(std::sync::Mutex::new(crate::devices::doorbell::Doorbell));
        if let Err(e) = ram.carve(
            doorbell,
            0x1000,
            crate::memslots::TraceMode::All,
            device,
            "the probe doorbell",
        ) {
            self.intro.add_note(format!(
                "probe doorbell at {doorbell:#x} not set up ({e}): jump probes stay int3"
            ));
            self.intro.engine().detach_arena();
            return;
        }
        self.intro.optimize_from_vcpu(target, vcpu);
    }
}

fn action(d: Decision) -> HookAction {
    match d {
        Decision::Continue => HookAction::Continue,
        Decision::Stop => HookAction::Stop(StopReason::Handler),
        Decision::Pause => HookAction::Pause,
    }
}

impl DebugHook for IntrospectHook {
    fn on_request(
        &self,
        vcpu: &mut VcpuCtx<'_>,
        request: &crate::devices::GuestRequest,
    ) -> HookAction {
        match *request {
            crate::devices::GuestRequest::Arena { base, len } => {
                self.on_arena(vcpu, base, len);
                HookAction::Continue
            }
            crate::devices::GuestRequest::Kmod(req) => {
                self.on_kmod(vcpu, req);
                HookAction::Continue
            }
            crate::devices::GuestRequest::Doorbell { value, .. } => {
                action(self.intro.on_doorbell(vcpu, value))
            }
        }
    }

    fn on_debug(&self, vcpu: &mut VcpuCtx<'_>, exit: &DebugExit) -> HookAction {
        let Some(target) = self.target.get() else {
            return HookAction::Continue;
        };
        action(
            self.intro
                .on_debug(target, vcpu, exit.exception, exit.pc, exit.dr6),
        )
    }

    fn on_internal_error(&self, vcpu: &mut VcpuCtx<'_>, err: &InternalError) -> Option<HookAction> {
        if err.suberror != InternalError::EMULATION {
            return None;
        }
        let target = self.target.get()?;
        let rip = vcpu.regs().ok()?.rip;
        self.intro
            .on_emulation_failure(target, vcpu, rip)
            .map(action)
    }
}

/// Runs `f` on vCPU `me`'s thread with every other vCPU paused (out of KVM_RUN): KVM's memory
/// slots are deleted and made again around a carved page, and a vCPU that walks its page
/// tables in that gap triple-faults (seen at rmmod of the guest module). A failed pause is an
/// error of `f`'s kind: nothing is changed then.
fn with_others_paused(
    target: &VmTarget,
    me: impl Into<usize>,
    f: impl FnOnce() -> Result<(), VmError>,
) -> Result<(), VmError> {
    use introspect::target::Target;
    let me = me.into();
    target
        .pause_others(me)
        .map_err(|e| VmError::Config(format!("cannot pause the other vCPUs: {e}")))?;
    let r = f();
    if let Err(e) = target.resume_others(me) {
        return r.and(Err(VmError::Config(format!(
            "cannot resume the other vCPUs: {e}"
        ))));
    }
    r
}

/// The session spec for the configured instrumentation: `:jump` and `:auto` probes record
/// [`DEFAULT_FETCHES`] in the guest; `:jump-exit` probes exit once per hit.
///
/// Memory words to record (`@SYM`) resolve against `symbols`.
pub fn session_spec(
    ins: &Instrumentation,
    symbols: Option<&SymbolTable>,
) -> Result<SessionSpec, VmError> {
    let mut spec = SessionSpec::default();
    for p in &ins.probes {
        spec.probes.push(
            probe_request(p, symbols).map_err(|e| VmError::Config(format!("--probe {p}: {e}")))?,
        );
    }
    spec.hbreaks = ins.hbreaks.iter().map(ToString::to_string).collect();
    spec.watches = ins
        .watches
        .iter()
        .map(|w| WatchRequest {
            at: w.at.to_string(),
            len: w.len,
            write_only: w.write_only,
        })
        .collect();
    Ok(spec)
}

/// One `--probe` value as a session request: `:jump` and `:auto` probes record its fetches
/// (or [`DEFAULT_FETCHES`]) in the guest; `:jump-exit` probes exit once per hit. Memory words
/// (`@SYM`) resolve against `symbols`. The error says which fetch is wrong.
pub fn probe_request(p: &ProbeSpec, symbols: Option<&SymbolTable>) -> Result<ProbeRequest, String> {
    let fetches = if p.fetches.is_empty() {
        DEFAULT_FETCHES.to_vec()
    } else {
        p.fetches
            .iter()
            .map(|f| fetch(f, symbols))
            .collect::<Result<Vec<_>, String>>()?
    };
    let in_guest = || JumpHandler::InGuest(fetches.clone());
    Ok(ProbeRequest {
        at: p.at.to_string(),
        arm: match p.mode {
            ProbeMode::Int3 => ProbeArm::Int3,
            ProbeMode::Jump => ProbeArm::Jump(in_guest()),
            ProbeMode::JumpExit => ProbeArm::Jump(JumpHandler::Exit),
            ProbeMode::Auto => ProbeArm::Auto(in_guest()),
            ProbeMode::JumpCall => {
                ProbeArm::Jump(JumpHandler::Call(p.fetches.first().and_then(|f| match f {
                    FetchSpec::Reg(r) => introspect::probes::Gpr::from_name(r),
                    FetchSpec::Mem(_) => None,
                })))
            }
        },
    })
}

/// One value to record, as the trampoline builder wants it.
fn fetch(f: &FetchSpec, symbols: Option<&SymbolTable>) -> Result<Fetch, String> {
    use introspect::probes::Gpr;
    Ok(match f {
        FetchSpec::Reg(r) if r == "rflags" => Fetch::Rflags,
        FetchSpec::Reg(r) => {
            Fetch::Reg(Gpr::from_name(r).ok_or_else(|| format!("{r:?} is not a register"))?)
        }
        FetchSpec::Mem(Location::Address(a)) => Fetch::Mem(*a),
        FetchSpec::Mem(loc) => {
            let table = symbols.ok_or_else(|| {
                format!("@{loc}: this kernel has no symbol table; give an address (@0x...)")
            })?;
            Fetch::Mem(
                table
                    .resolve(&loc.to_string())
                    .map_err(|e| format!("@{loc}: {e}"))?,
            )
        }
    })
}

/// The symbols of the configured kernel (none for a raw program).
pub fn load_symbols(config: &VmConfig) -> Result<Option<Arc<SymbolTable>>, VmError> {
    let image = match &config.kernel {
        KernelSource::Embedded => crate::test_kernel::TEST_KERNEL.to_vec(),
        KernelSource::File(p) => std::fs::read(p).map_err(|e| VmError::ReadFile {
            what: "kernel",
            path: p.display().to_string(),
            reason: e.to_string(),
        })?,
        KernelSource::Raw { .. } => return Ok(None),
    };
    match crate::kernel_symbols::kernel_symbols(&image) {
        Ok((t, _)) => Ok(Some(Arc::new(t))),
        // Without symbols, addresses still work; names fail with their own message.
        Err(_) => Ok(None),
    }
}

fn events_output(ins: &Instrumentation) -> Result<Box<dyn Write + Send>, VmError> {
    match &ins.events {
        Some(p) => std::fs::File::create(p)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|e| VmError::ReadFile {
                what: "events file",
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
        None => Ok(Box::new(std::io::stderr())),
    }
}

/// How often the session's ticker drains the in-guest rings and retries pending jumps.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// A drain that took at least this many records runs again at once (after a yield) instead
/// of sleeping a [`TICK`]: while the guest fills its rings faster than a tick's worth, the
/// drain keeps at it (a sleep there lasts as long as the scheduler likes on a busy host).
pub const BUSY_DRAIN: usize = 4096;

/// A thread that calls [`Introspector::tick`] every [`TICK`] while the VM runs (kprobes'
/// optimizer work item, plus the ring drain).
pub struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    /// Starts ticking `intro` against `target`.
    pub fn spawn(intro: Arc<Introspector>, target: VmTarget) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("probe-ticker".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if intro.tick(&target) >= BUSY_DRAIN {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(TICK);
                    }
                }
            })
            .ok();
        Ticker { stop, thread }
    }

    /// Stops the thread (after its current tick).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an instrumented run reports besides the outcome.
pub struct InstrumentReport {
    /// The per-source table (hits, nmissed, lost).
    pub table: String,
    /// The event sources with their counters.
    pub sources: Arc<Sources>,
    /// Notes from the session (e.g. how breakpoints are stepped on this KVM).
    pub notes: Vec<String>,
}

/// On our software KVM, guest ring-0 code runs on an instruction emulator without `rdtscp`
/// (and KVMs that do not offer `rdtscp` to guests leave it out too): in-guest trampolines use
/// `rdtsc` and one shared ring there.
pub fn set_platform_cpu_source(intro: &Introspector) {
    if crate::platform::is_software_kvm() || !crate::kvm_probe::kvm_offers_rdtscp() {
        intro
            .engine()
            .set_cpu_source(introspect::probes::CpuSource::SharedRing);
    }
}

/// Builds, instruments, runs and waits for a VM.
pub fn run_instrumented(config: &VmConfig) -> Result<(RunReport, InstrumentReport), VmError> {
    let symbols =
        if config.instrument.is_empty() && config.trace.is_empty() && config.api_socket.is_none() {
            None
        } else {
            load_symbols(config)?
        };
    let spec = session_spec(&config.instrument, symbols.as_deref())?;
    let out = events_output(&config.instrument)?;
    let sources = Arc::new(Sources::new());
    // The one event pipeline: probe hits, accesses and lifecycle events on one clock; the
    // --events writer takes the hits, the --trace writer (tracer::attach) what its format
    // shows, API clients subscribe for themselves.
    let hub = events::Hub::new(sources.clone());
    let receiver = hub.subscribe(
        events::Filter::kinds(events::KindSet::HITS),
        events::DEFAULT_CAPACITY,
    );
    receiver.set_hold_back(true);
    let sink = hub.clone();
    let format = match config.instrument.format {
        EventFormat::Text => Format::Text,
        EventFormat::Jsonl => Format::Jsonl,
    };
    let writer = EventWriter::spawn(receiver, out, format).map_err(|e| VmError::Device {
        what: "the event writer",
        reason: e.to_string(),
    })?;
    let intro = Arc::new(Introspector::new(
        symbols.clone(),
        usize::from(config.cpus),
        sink,
    ));
    set_platform_cpu_source(&intro);
    let hook = Arc::new(IntrospectHook::new(intro.clone()));
    let mut vm = Vm::new(config, Some(hook.clone()))?;
    // With an API socket the tracer is there from the start, so clients can add targets.
    let trace = if config.trace.is_empty() && config.api_socket.is_none() {
        None
    } else {
        Some(crate::tracer::attach(
            &vm,
            &config.trace,
            &hub,
            symbols.clone(),
        )?)
    };
    vm.start_paused()?;
    let target = vm.target();
    hook.attach(target.clone(), vm.ram_control());
    hook.attach_kmod(vm.kmod());
    // Lines guest programs write to the guest module's /dev/hvprobe_mark: MARK events.
    let marks_hub = hub.clone();
    vm.kmod().set_mark_listener(Box::new(move |line| {
        marks_hub.emit(Event::mark(marks_hub.now_ns(), line));
    }));
    if let Some(t) = &trace {
        t.control().set_target(target.clone());
    }
    if let Err(e) = intro.setup(&target, &spec) {
        vm.stop();
        let _ = writer.finish();
        return Err(VmError::Config(crate::outcome::error_line(&e)));
    }
    for (_, s) in sources.iter() {
        vm.phases()
            .log(format_args!("instrument: {} ({})", s.name(), s.how()));
    }
    // The control API serves the same session operations the flags above used.
    let session = Arc::new(crate::session::Session::new(
        trace.as_ref().map(|t| t.control().clone()),
        intro.clone(),
        target.clone(),
        vm.memory().clone(),
        intro.symbols().cloned(),
        vm.stopper(),
        hub.clone(),
    ));
    let api = match &config.api_socket {
        Some(path) => match crate::session::api::ApiServer::spawn(path, session.clone()) {
            Ok(server) => {
                vm.phases()
                    .log(format_args!("api: serving {}", path.display()));
                Some(server)
            }
            Err(e) => {
                vm.stop();
                let _ = writer.finish();
                return Err(VmError::Config(e.to_string()));
            }
        },
        None => None,
    };
    vm.resume_all()?;
    hub.emit(Event::lifecycle(
        hub.now_ns(),
        0,
        Lifecycle::Phase("running".into()),
    ));
    // Only jump probes need the ticker (ring drain, deferred passes): no 1 kHz wake-ups
    // otherwise (a client may add jump probes later).
    let ticker = (api.is_some() || spec.probes.iter().any(|p| !matches!(p.arm, ProbeArm::Int3)))
        .then(|| Ticker::spawn(intro.clone(), target.clone()));
    let outcome = vm.wait(config.timeout)?;
    hub.emit(Event::lifecycle(
        hub.now_ns(),
        0,
        Lifecycle::Exit(outcome.to_string().into()),
    ));
    session.set_ended();
    if let Some(server) = api {
        server.shutdown();
    }
    if let Some(t) = ticker {
        t.stop();
    }
    intro.finish(Some(&target));
    if let Some(t) = trace {
        let s = t.finish();
        vm.phases().log(format_args!(
            "trace: {} records written, {} lost",
            s.written, s.lost
        ));
        if let Some(e) = s.error {
            vm.phases().log(format_args!("trace: output failed: {e}"));
        }
    }
    let report = writer.finish();
    if let Some(e) = &report.error {
        vm.phases().log(format_args!("events: output failed: {e}"));
    }
    let notes = intro.take_notes();
    for n in &notes {
        vm.phases().log(format_args!("note: {n}"));
    }
    let run = RunReport {
        outcome,
        elapsed: vm.phases().elapsed(),
        points: vm.points(),
        marks: vm.marks(),
    };
    Ok((
        run,
        InstrumentReport {
            table: events::summary_table(&sources),
            sources,
            notes,
        },
    ))
}

/// Why the KASLR slide could not be read from guest memory.
#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    /// The kernel's range is not guest RAM.
    #[error("Cannot read the kernel from guest memory")]
    Memory(#[from] crate::memory::MemoryError),
    /// No kallsyms tables in it.
    #[error("No kallsyms tables in guest memory")]
    Kallsyms(#[from] introspect::symbols::KallsymsError),
    /// The tables' `_text` makes no sense as a slide.
    #[error("The kallsyms tables in guest memory give no usable slide")]
    Slide(#[from] introspect::symbols::KaslrError),
}

/// The KASLR slide of the kernel running in the guest: its kallsyms tables are found in guest
/// memory (where the kernel's own relocation has updated them) and their `_text` is compared
/// with the link address. hvprobe boots kernels at their link address (the randomization is
/// the in-guest decompressor's, which hvprobe skips), so this reads 0 for its own boots; a
/// guest booted otherwise (or a kernel that relocates itself) gives its real slide.
pub fn guest_kaslr_slide(
    mem: &crate::memory::GuestMem,
    kernel: &crate::loader::LoadedKernel,
) -> Result<u64, SlideError> {
    let start = kernel.load_start;
    let len = usize::try_from(kernel.load_end.raw() - start.raw()).unwrap_or(0);
    let mut bytes = vec![0u8; len];
    mem.read(start, &mut bytes)?;
    let base = crate::boot::paging::KERNEL_MAP_START + start.raw();
    let table = SymbolTable::from_kallsyms_bytes(&bytes, base)?;
    Ok(table.kaslr_slide(introspect::symbols::X86_64_LINK_TEXT)?)
}
