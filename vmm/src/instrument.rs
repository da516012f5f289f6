//! `hvprobe run` with probes, hardware breakpoints or watchpoints: the glue between the VM
//! and an `introspect::session::Introspector`.
//!
//! The VM starts with its vCPUs paused; the session resolves every location against the
//! kernel's symbols, arms probes and installs breakpoints on every vCPU; then the guest runs.
//! Debug exits and emulation failures reach the session through [`IntrospectHook`], on the
//! vCPU's own thread. Events flow to a writer thread; the per-source table prints at exit.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use introspect::events::{self, EventWriter, Format, Sources};
use introspect::session::{Decision, Introspector, SessionSpec, WatchRequest};
use introspect::symbols::SymbolTable;

use crate::config::{EventFormat, Instrumentation, KernelSource, ProbeMode, VmConfig};
use crate::target::VmTarget;
use crate::vcpu::exit::{DebugExit, InternalError, StopReason};
use crate::vcpu::{DebugHook, HookAction, VcpuCtx};
use crate::vm::{RunReport, Vm, VmError};

/// The VM's debug hook: hands exits to the session.
pub struct IntrospectHook {
    intro: Arc<Introspector>,
    target: OnceLock<VmTarget>,
}

impl IntrospectHook {
    /// A hook for `intro`; the target is set once the vCPUs exist ([`IntrospectHook::attach`]).
    pub fn new(intro: Arc<Introspector>) -> Self {
        IntrospectHook {
            intro,
            target: OnceLock::new(),
        }
    }

    /// Gives the hook the running VM.
    pub fn attach(&self, target: VmTarget) {
        let _ = self.target.set(target);
    }
}

fn action(d: Decision) -> HookAction {
    match d {
        Decision::Continue => HookAction::Continue,
        Decision::Stop => HookAction::Stop(StopReason::Handler),
    }
}

impl DebugHook for IntrospectHook {
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

/// The session spec for the configured instrumentation; `:jump` is refused until
/// jump-optimized probes exist (`:auto` arms int3).
pub fn session_spec(ins: &Instrumentation) -> Result<SessionSpec, VmError> {
    let mut spec = SessionSpec::default();
    for p in &ins.probes {
        if p.mode == ProbeMode::Jump {
            return Err(VmError::Config(format!(
                "--probe {p}: jump-optimized probes are not available in this hvprobe yet; use :int3 or :auto"
            )));
        }
        spec.probes.push(p.at.to_string());
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

/// What an instrumented run reports besides the outcome.
pub struct InstrumentReport {
    /// The per-source table (hits, nmissed, lost).
    pub table: String,
    /// The event sources with their counters.
    pub sources: Arc<Sources>,
    /// Notes from the session (e.g. how breakpoints are stepped on this KVM).
    pub notes: Vec<String>,
}

/// Builds, instruments, runs and waits for a VM.
pub fn run_instrumented(config: &VmConfig) -> Result<(RunReport, InstrumentReport), VmError> {
    let spec = session_spec(&config.instrument)?;
    let symbols = if config.instrument.is_empty() && config.trace.is_empty() {
        None
    } else {
        load_symbols(config)?
    };
    let out = events_output(&config.instrument)?;
    let sources = Arc::new(Sources::new());
    let (sink, receiver) = events::channel(sources.clone(), events::DEFAULT_CAPACITY);
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
    let hook = Arc::new(IntrospectHook::new(intro.clone()));
    let mut vm = Vm::new(config, Some(hook.clone()))?;
    let trace = if config.trace.is_empty() {
        None
    } else {
        Some(crate::tracer::attach(&vm, &config.trace, symbols)?)
    };
    vm.start_paused()?;
    let target = vm.target();
    hook.attach(target.clone());
    if let Err(e) = intro.setup(&target, &spec) {
        vm.stop();
        let _ = writer.finish();
        return Err(VmError::Config(crate::cli::error_line(&e)));
    }
    for (_, s) in sources.iter() {
        vm.phases()
            .log(format_args!("instrument: {} ({})", s.name(), s.how()));
    }
    vm.resume_all()?;
    let outcome = vm.wait(config.timeout)?;
    intro.finish();
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
