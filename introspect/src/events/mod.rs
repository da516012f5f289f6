//! The event pipeline: probe, breakpoint and watchpoint hits from vCPU threads to output.
//!
//! ```text
//! vCPU thread (at the exit)          writer thread               at exit
//! Sources::hit(id) -> hit count
//! EventSink::emit(Event) --try_send--> EventWriter --Format--> io::Write
//!        | channel full                                          summary_table(&Sources)
//!        v
//! Sources lost += 1, pending lost += 1  (the next emit that fits first sends a Lost record)
//! ```
//!
//! - [`Sources`]: the registry of event sources (one per probe, hardware breakpoint or
//!   watchpoint), each with lock-free counters: hits, nmissed, lost.
//! - [`channel`]: a bounded channel; its [`EventSink`] is cloned to vCPU threads and
//!   [`EventSink::emit`] never blocks: overflow is counted, and the gap is written into the
//!   stream as an [`EventKind::Lost`] record.
//! - [`EventWriter`]: a thread draining the [`EventReceiver`] into any [`io::Write`] as
//!   [`Format::Text`] or [`Format::Jsonl`]; an output error does not stop the draining, and
//!   is reported by [`EventWriter::finish`].
//! - [`summary_table`]: the per-source table printed at exit.
//!
//! ```
//! use std::sync::Arc;
//! use introspect::events::{self, Event, EventKind, EventWriter, Format, Sources};
//!
//! let sources = Arc::new(Sources::new());
//! let probe = sources.register("probe start_kernel".into(), "int3".into());
//! let (sink, receiver) = events::channel(sources.clone(), events::DEFAULT_CAPACITY);
//! let writer = EventWriter::spawn(receiver, Vec::new(), Format::Text).unwrap();
//!
//! // On a vCPU thread, at the exit:
//! let hit = sources.hit(probe);
//! sink.emit(Event {
//!     time_ns: sink.now_ns(),
//!     vcpu: 0,
//!     kind: EventKind::Probe,
//!     source: probe,
//!     addr: 0xffff_ffff_8307_9e46,
//!     symbol: Some("start_kernel+0x0".into()),
//!     regs: vec![("rdi", 0x1000)],
//!     hit,
//! });
//!
//! let report = writer.finish();
//! assert_eq!(report.written, 1);
//! assert!(report.error.is_none());
//! print!("{}", events::summary_table(&sources));
//! ```

mod jsonl;
mod sink;
mod sources;
mod table;
mod text;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::str::FromStr;

use crate::target::Regs;

pub use sink::{DEFAULT_CAPACITY, EventReceiver, EventSink, channel};
pub use sources::{Source, SourceId, Sources};
pub use table::summary_table;
pub use writer::{EventWriter, WriterError, WriterReport};

/// One record of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the VM started (see [`EventSink::now_ns`]).
    pub time_ns: u64,
    /// The vCPU that hit (for [`EventKind::Lost`]: the vCPU whose emit queued the record, 0
    /// for the trailing record written at the end; neither format prints it).
    pub vcpu: u32,
    /// What happened.
    pub kind: EventKind,
    /// The probe, breakpoint or watchpoint that produced the event ([`SourceId::NONE`] for
    /// [`EventKind::Lost`]).
    pub source: SourceId,
    /// The probed or watched guest-virtual address.
    pub addr: u64,
    /// `addr` as symbol+offset, e.g. `start_kernel+0x12`, when known.
    pub symbol: Option<String>,
    /// Selected registers at the hit, in output order (see [`select_regs`]).
    pub regs: Vec<(&'static str, u64)>,
    /// This source's hit count, this hit included (from [`Sources::hit`]).
    pub hit: u64,
}

impl Event {
    /// A record saying that `count` events were dropped here because the channel was full.
    pub fn lost(time_ns: u64, vcpu: u32, count: u64) -> Self {
        Self {
            time_ns,
            vcpu,
            kind: EventKind::Lost { count },
            source: SourceId::NONE,
            addr: 0,
            symbol: None,
            regs: Vec::new(),
            hit: 0,
        }
    }
}

/// The kind of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An int3 (or optimized jump) probe was hit.
    Probe,
    /// A hardware execute breakpoint was hit.
    HwBreak,
    /// A hardware data watchpoint fired.
    Watch {
        /// The access was a write (false: a read, or a write hvprobe could not tell apart).
        write: bool,
    },
    /// `count` events were dropped at this point of the stream (the channel was full).
    Lost {
        /// How many events were dropped.
        count: u64,
    },
}

/// The registers [`select_regs`] takes when the user does not choose: where the hit is, and
/// the first arguments and return value of the System V calling convention.
pub const DEFAULT_REGS: [&str; 7] = ["rip", "rsp", "rdi", "rsi", "rdx", "rcx", "rax"];

/// The registers named in `names` (e.g. [`DEFAULT_REGS`]), in that order, for
/// [`Event::regs`]. Unknown names are skipped.
pub fn select_regs(regs: &Regs, names: &[&'static str]) -> Vec<(&'static str, u64)> {
    names
        .iter()
        .filter_map(|&name| {
            let value = match name {
                "rax" => regs.rax,
                "rbx" => regs.rbx,
                "rcx" => regs.rcx,
                "rdx" => regs.rdx,
                "rsi" => regs.rsi,
                "rdi" => regs.rdi,
                "rsp" => regs.rsp,
                "rbp" => regs.rbp,
                "r8" => regs.r8,
                "r9" => regs.r9,
                "r10" => regs.r10,
                "r11" => regs.r11,
                "r12" => regs.r12,
                "r13" => regs.r13,
                "r14" => regs.r14,
                "r15" => regs.r15,
                "rip" => regs.rip,
                "rflags" => regs.rflags,
                _ => return None,
            };
            Some((name, value))
        })
        .collect()
}

/// The output format of an [`EventWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One human-readable line per event, dmesg style.
    #[default]
    Text,
    /// One JSON object per line; addresses and registers as `"0x..."` strings.
    Jsonl,
}

impl Format {
    /// Writes `event` as one line (newline included), naming its source from `sources`.
    pub fn write_event(
        self,
        out: &mut dyn io::Write,
        event: &Event,
        sources: &Sources,
    ) -> io::Result<()> {
        match self {
            Self::Text => text::write_event(out, event),
            Self::Jsonl => jsonl::write_event(out, event, sources),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Jsonl => "jsonl",
        })
    }
}

/// An event format name that is neither `text` nor `jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown event format {0:?}: expected \"text\" or \"jsonl\"")]
pub struct ParseFormatError(pub String);

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "jsonl" => Ok(Self::Jsonl),
            other => Err(ParseFormatError(other.to_owned())),
        }
    }
}
