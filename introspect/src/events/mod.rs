//! The one event model and its pipeline: probe, breakpoint and watchpoint hits, MMIO / port
//! I/O accesses, MAP / UNMAP / PCIDEV / MARK records, lost-event records and VM lifecycle
//! events, on one clock, from vCPU threads (and the in-guest ring drain) to any number of
//! subscribers.
//!
//! ```text
//! vCPU thread / ring drain            Hub (fan-out)                 subscribers
//! Sources::hit(id) -> hit count
//! Hub::emit(Event) ----------+---> queue A (filter, capacity) --> EventWriter (text, jsonl,
//! Hub::emit_batch(&mut Vec)  |       full: lost += 1, a Lost        mmiotrace, chrome, ctf)
//!                            |       record precedes its next event
//!                            +---> queue B -----------------------> Subscription::recv_timeout
//!                                                                    (an API client)
//! ```
//!
//! - [`Event`]: one record: time (ns since the hub's creation), vCPU, [`EventKind`], source,
//!   address, symbol (resolved once per site or source and shared), registers in a fixed
//!   array ([`RegSet`]), hit count. No allocation per event.
//! - [`Sources`]: the registry of event sources (one per probe, hardware breakpoint or
//!   watchpoint), each with lock-free counters: hits, nmissed, lost.
//! - [`Hub`]: cloned to every producer. [`Hub::emit`] never blocks: each subscriber has its
//!   own bounded queue; one that is full loses the event (counted in its
//!   [`Subscription::lost`] and in the source's `lost`), and a [`EventKind::Lost`] record
//!   goes into that subscriber's stream before its next event. A subscriber that stops
//!   reading never stalls a vCPU or the other subscribers.
//! - [`Hub::subscribe`]: a [`Filter`] (kinds, sources, vCPUs) and a capacity give a
//!   [`Subscription`]: [`Subscription::recv_timeout`], [`Subscription::try_recv`],
//!   [`Subscription::recv_batch`], [`Subscription::lost`]; dropping it unsubscribes.
//! - [`EventWriter`]: a thread writing one subscription to an output in one [`Format`]
//!   (text, JSON lines, the kernel's mmiotrace text, Chrome / Perfetto JSON, CTF 1.8).
//! - [`summary_table`]: the per-source table printed at exit.
//!
//! ```
//! use std::sync::Arc;
//! use introspect::events::{Event, EventKind, EventWriter, Filter, Format, Hub, RegSet, Sources};
//!
//! let sources = Arc::new(Sources::new());
//! let probe = sources.register("probe start_kernel".into(), "int3".into());
//! let hub = Hub::new(sources.clone());
//! let writer = EventWriter::spawn(hub.subscribe(Filter::all(), 4096), Vec::new(), Format::Text)
//!     .unwrap();
//!
//! // On a vCPU thread, at the exit:
//! let hit = sources.hit(probe);
//! let mut regs = RegSet::new();
//! regs.push("rdi", 0x1000);
//! hub.emit(Event {
//!     time_ns: hub.now_ns(),
//!     vcpu: 0,
//!     kind: EventKind::Probe,
//!     source: probe,
//!     addr: 0xffff_ffff_8307_9e46,
//!     symbol: Some("start_kernel+0x0".into()),
//!     regs,
//!     hit,
//! });
//!
//! let report = writer.finish();
//! assert_eq!(report.written, 1);
//! assert!(report.error.is_none());
//! print!("{}", introspect::events::summary_table(&sources));
//! ```

mod chrome;
mod ctf;
mod hub;
mod jsonl;
pub mod mmiotrace;
mod num;
mod sources;
mod table;
mod text;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use crate::target::Regs;

pub use chrome::{VM_PID, VMM_TID};
pub use ctf::CTF_STREAM;
pub use hub::{DEFAULT_CAPACITY, EventReceiver, EventSink, Filter, Hub, Subscription, channel};
pub use sources::{Source, SourceId, Sources};
pub use table::summary_table;
pub use writer::{EventWriter, WriterError, WriterOptions, WriterReport};

/// One record of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the hub was created ([`Hub::now_ns`]): one clock for every kind.
    pub time_ns: u64,
    /// The vCPU that hit or made the access (for records that belong to no vCPU: MAP,
    /// UNMAP, MARK, PCIDEV, lost records, lifecycle: the vCPU that caused them, or 0).
    pub vcpu: u32,
    /// What happened, with the data of its kind.
    pub kind: EventKind,
    /// The probe, breakpoint or watchpoint that produced the event ([`SourceId::NONE`] for
    /// accesses, MAP / UNMAP / MARK / PCIDEV, lifecycle events and the hub's lost records).
    pub source: SourceId,
    /// The probed or watched guest-virtual address; for an access the guest-physical
    /// address or port; for a MAP the guest-physical base; otherwise 0.
    pub addr: u64,
    /// For hits: `addr` as symbol+offset (`start_kernel+0x12`); for accesses: the RIP's.
    /// Resolved once per site (or, for accesses, by the writer) and shared, not formatted
    /// per event.
    pub symbol: Option<Arc<str>>,
    /// Selected registers (or in-guest fetched values) at the hit, in output order.
    pub regs: RegSet,
    /// This source's hit count, this hit included (from [`Sources::hit`]); 0 for other kinds.
    pub hit: u64,
}

impl Event {
    /// An event of `kind` with no source, address, symbol or registers.
    pub fn bare(time_ns: u64, vcpu: u32, kind: EventKind) -> Self {
        Self {
            time_ns,
            vcpu,
            kind,
            source: SourceId::NONE,
            addr: 0,
            symbol: None,
            regs: RegSet::new(),
            hit: 0,
        }
    }

    /// A record saying that `count` events were dropped at this point of the stream (by a
    /// producer; set [`Event::source`] to say whose).
    pub fn lost(time_ns: u64, vcpu: u32, count: u64) -> Self {
        Self::bare(time_ns, vcpu, EventKind::Lost { count })
    }

    /// The hub's record, in one subscriber's stream, that `count` events were dropped here
    /// because that subscriber's queue was full (source [`SourceId::QUEUE`]).
    pub fn queue_lost(time_ns: u64, vcpu: u32, count: u64) -> Self {
        Self {
            source: SourceId::QUEUE,
            ..Self::lost(time_ns, vcpu, count)
        }
    }

    /// Whether this is the hub's lost record for a subscriber's full queue.
    pub fn is_queue_lost(&self) -> bool {
        matches!(self.kind, EventKind::Lost { .. }) && self.source == SourceId::QUEUE
    }

    /// A guest access to a traced region at `addr` (guest-physical address or port).
    pub fn access(time_ns: u64, vcpu: u32, addr: u64, access: Access) -> Self {
        Self {
            addr,
            ..Self::bare(time_ns, vcpu, EventKind::Access(access))
        }
    }

    /// A traced region appeared (mmiotrace's MAP): `id`, guest-physical base `phys`,
    /// guest-virtual base `virt` (0: unknown), `len` bytes, caused at guest RIP `pc`.
    pub fn map(time_ns: u64, id: u32, phys: u64, virt: u64, len: u64, pc: u64) -> Self {
        Self {
            addr: phys,
            ..Self::bare(time_ns, 0, EventKind::Map { id, virt, len, pc })
        }
    }

    /// A traced region went away (mmiotrace's UNMAP).
    pub fn unmap(time_ns: u64, id: u32, pc: u64) -> Self {
        Self::bare(time_ns, 0, EventKind::Unmap { id, pc })
    }

    /// A marker (a guest's or user's line of text).
    pub fn mark(time_ns: u64, text: &str) -> Self {
        Self::bare(time_ns, 0, EventKind::Mark(text.into()))
    }

    /// A PCI device of the VM (mmiotrace's PCIDEV), at time 0.
    pub fn pcidev(dev: PciDevInfo) -> Self {
        Self::bare(0, 0, EventKind::PciDev(Arc::new(dev)))
    }

    /// A VM lifecycle event.
    pub fn lifecycle(time_ns: u64, vcpu: u32, what: Lifecycle) -> Self {
        Self::bare(time_ns, vcpu, EventKind::Lifecycle(what))
    }

    /// The kind's class, for filters.
    pub fn class(&self) -> Kind {
        self.kind.class()
    }
}

/// The address space of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Memory-mapped I/O (or a traced RAM range): the address is a guest-physical address.
    Mmio,
    /// Port I/O: the address is a port number.
    Pio,
}

/// One guest access to a traced region (its address is [`Event::addr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// MMIO or port I/O.
    pub space: Space,
    /// A write (else a read).
    pub write: bool,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    /// The value read or written (little-endian, zero-extended).
    pub value: u64,
    /// Guest RIP of the accessing instruction, when known.
    pub rip: Option<u64>,
    /// The traced region (the id of its MAP) the access belongs to.
    pub map_id: Option<u32>,
}

/// A PCI device as mmiotrace's `PCIDEV` line describes it (the kernel's
/// `/proc/bus/pci/devices` data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevInfo {
    /// Bus number.
    pub bus: u8,
    /// Device number << 3 | function.
    pub devfn: u8,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Interrupt line.
    pub irq: u8,
    /// The 7 resources (6 BARs and the ROM): base | flags, as the kernel prints them.
    pub bars: [u64; 7],
    /// The 7 resource sizes (0 for an unused resource).
    pub sizes: [u64; 7],
    /// The bound driver's name.
    pub driver: Option<String>,
}

/// A VM lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A boot phase or other step of the VMM (`running`, `instrumented`).
    Phase(Arc<str>),
    /// Every vCPU was paused.
    Paused,
    /// The vCPUs run again.
    Resumed,
    /// The VM ended; how.
    Exit(Arc<str>),
}

/// The kind of an [`Event`], with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A guest access to a traced MMIO or port range.
    Access(Access),
    /// A traced region appeared (mmiotrace's ioremap event); its base is [`Event::addr`].
    Map {
        /// The region's id, which its accesses carry as `map_id`.
        id: u32,
        /// Guest-virtual base, or 0 when unknown.
        virt: u64,
        /// Length in bytes.
        len: u64,
        /// Guest RIP that caused the mapping, or 0 when unknown.
        pc: u64,
    },
    /// A traced region went away (mmiotrace's iounmap event).
    Unmap {
        /// The id of its MAP.
        id: u32,
        /// Guest RIP that caused the unmapping, or 0 when unknown.
        pc: u64,
    },
    /// A marker: one line of text from the guest or the user.
    Mark(Arc<str>),
    /// A PCI device of the VM.
    PciDev(Arc<PciDevInfo>),
    /// `count` events were dropped at this point of the stream: this subscriber's queue was
    /// full ([`Event::source`] [`SourceId::QUEUE`]), or a producer lost them (an in-guest
    /// ring was full: [`Event::source`] the probe).
    Lost {
        /// How many events were dropped.
        count: u64,
    },
    /// The VM's lifecycle.
    Lifecycle(Lifecycle),
}

impl EventKind {
    /// The kind's class, for filters.
    pub fn class(&self) -> Kind {
        match self {
            Self::Probe => Kind::Probe,
            Self::HwBreak => Kind::HwBreak,
            Self::Watch { .. } => Kind::Watch,
            Self::Access(_) => Kind::Access,
            Self::Map { .. } => Kind::Map,
            Self::Unmap { .. } => Kind::Unmap,
            Self::Mark(_) => Kind::Mark,
            Self::PciDev(_) => Kind::PciDev,
            Self::Lost { .. } => Kind::Lost,
            Self::Lifecycle(_) => Kind::Lifecycle,
        }
    }
}

/// The classes of [`EventKind`], for [`KindSet`] filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`EventKind::Probe`].
    Probe = 0,
    /// [`EventKind::HwBreak`].
    HwBreak = 1,
    /// [`EventKind::Watch`].
    Watch = 2,
    /// [`EventKind::Access`].
    Access = 3,
    /// [`EventKind::Map`].
    Map = 4,
    /// [`EventKind::Unmap`].
    Unmap = 5,
    /// [`EventKind::Mark`].
    Mark = 6,
    /// [`EventKind::PciDev`].
    PciDev = 7,
    /// [`EventKind::Lost`].
    Lost = 8,
    /// [`EventKind::Lifecycle`].
    Lifecycle = 9,
}

impl Kind {
    /// Every class.
    pub const ALL: [Kind; 10] = [
        Kind::Probe,
        Kind::HwBreak,
        Kind::Watch,
        Kind::Access,
        Kind::Map,
        Kind::Unmap,
        Kind::Mark,
        Kind::PciDev,
        Kind::Lost,
        Kind::Lifecycle,
    ];

    /// Its name in filters and outputs (`probe`, `hbreak`, `watch`, `access`, `map`,
    /// `unmap`, `mark`, `pcidev`, `lost`, `lifecycle`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Probe => "probe",
            Kind::HwBreak => "hbreak",
            Kind::Watch => "watch",
            Kind::Access => "access",
            Kind::Map => "map",
            Kind::Unmap => "unmap",
            Kind::Mark => "mark",
            Kind::PciDev => "pcidev",
            Kind::Lost => "lost",
            Kind::Lifecycle => "lifecycle",
        }
    }

    /// The class named `name` ([`Kind::name`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A set of [`Kind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KindSet(u16);

impl KindSet {
    /// No kind.
    pub const NONE: KindSet = KindSet(0);
    /// Every kind.
    pub const ALL: KindSet = KindSet((1 << Kind::ALL.len()) - 1);
    /// Probe, breakpoint and watchpoint hits, lost records (what `--events` writes).
    pub const HITS: KindSet = KindSet(
        1 << Kind::Probe as u16
            | 1 << Kind::HwBreak as u16
            | 1 << Kind::Watch as u16
            | 1 << Kind::Lost as u16,
    );
    /// Accesses, MAP, UNMAP, MARK, PCIDEV and lost records (what `--trace` writes).
    pub const TRACE: KindSet = KindSet(
        1 << Kind::Access as u16
            | 1 << Kind::Map as u16
            | 1 << Kind::Unmap as u16
            | 1 << Kind::Mark as u16
            | 1 << Kind::PciDev as u16
            | 1 << Kind::Lost as u16,
    );

    /// The set of `kinds`.
    pub fn of(kinds: &[Kind]) -> KindSet {
        KindSet(kinds.iter().fold(0, |m, &k| m | 1 << k as u16))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & 1 << kind as u16 != 0
    }

    /// Both sets.
    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }
}

/// How many registers an [`Event`] carries at most.
pub const MAX_REGS: usize = 8;

/// The register (and in-guest value) names a [`RegSet`] can hold.
/// `pid` .. `str2` are what the guest module's handler records (`tgid << 32 | pid`, the
/// task's comm and a string argument, as little-endian bytes 8 at a time).
pub const REG_NAMES: [&str; 31] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags", "tsc", "mem0", "mem1", "mem2", "mem3", "mem4", "mem5", "pid",
    "comm0", "comm1", "str0", "str1", "str2",
];

/// Up to [`MAX_REGS`] named values in a fixed array: registers at a hit, or the values an
/// in-guest handler recorded. Names come from [`REG_NAMES`]; no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct RegSet {
    len: u8,
    names: [u8; MAX_REGS],
    values: [u64; MAX_REGS],
}

impl fmt::Debug for RegSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl RegSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            len: 0,
            names: [0; MAX_REGS],
            values: [0; MAX_REGS],
        }
    }

    /// Appends `name = value`; false (and nothing added) when `name` is not in
    /// [`REG_NAMES`] or the set is full.
    pub fn push(&mut self, name: &str, value: u64) -> bool {
        let Some(index) = REG_NAMES.iter().position(|n| *n == name) else {
            return false;
        };
        let len = usize::from(self.len);
        if len == MAX_REGS {
            return false;
        }
        // Both fit: index < 25, len < MAX_REGS.
        self.names[len] = u8::try_from(index).unwrap_or(0);
        self.values[len] = value;
        self.len += 1;
        true
    }

    /// Sets the `i`th value (its name unchanged); ignored beyond the length.
    pub fn set_value(&mut self, i: usize, value: u64) {
        if i < usize::from(self.len) {
            self.values[i] = value;
        }
    }

    /// How many values.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in order.
    pub fn values(&self) -> &[u64] {
        &self.values[..usize::from(self.len)]
    }

    /// `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.names[..usize::from(self.len)]
            .iter()
            .zip(self.values())
            .map(|(&n, &v)| (REG_NAMES[usize::from(n)], v))
    }

    /// The value named `name`, if present.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl<'a> FromIterator<(&'a str, u64)> for RegSet {
    fn from_iter<I: IntoIterator<Item = (&'a str, u64)>>(iter: I) -> Self {
        let mut set = RegSet::new();
        for (name, value) in iter {
            set.push(name, value);
        }
        set
    }
}

/// The registers [`select_regs`] takes when the user does not choose: where the hit is, and
/// the first arguments and return value of the System V calling convention.
pub const DEFAULT_REGS: [&str; 7] = ["rip", "rsp", "rdi", "rsi", "rdx", "rcx", "rax"];

/// The registers named in `names` (e.g. [`DEFAULT_REGS`]), in that order, for
/// [`Event::regs`]. Unknown names are skipped.
pub fn select_regs(regs: &Regs, names: &[&'static str]) -> RegSet {
    let mut set = RegSet::new();
    for &name in names {
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
            _ => continue,
        };
        set.push(name, value);
    }
    set
}

/// The output format of an [`EventWriter`]. Each writes every kind it can express and counts
/// the others as skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// One human-readable line per event, dmesg style.
    #[default]
    Text,
    /// One JSON object per line; addresses and registers as `"0x..."` strings.
    Jsonl,
    /// The kernel's mmiotrace text (`VERSION 20070824`): MMIO accesses, MAP, UNMAP, MARK,
    /// PCIDEV and lost records only.
    Mmiotrace,
    /// Chrome's Trace Event Format (Perfetto, `about:tracing`): every kind on one timeline,
    /// a track per vCPU.
    Chrome,
    /// CTF 1.8 (a TSDL `metadata` file and a binary stream in a directory), for
    /// `babeltrace2` and Trace Compass.
    Ctf,
}

impl Format {
    /// Writes `event` as one line (newline included), naming its source from `sources`
    /// (text and JSON lines only; the other formats need an [`EventWriter`]).
    pub fn write_event(
        self,
        out: &mut dyn io::Write,
        event: &Event,
        sources: &Sources,
    ) -> io::Result<()> {
        let mut line = Vec::with_capacity(192);
        match self {
            Self::Text => text::encode(&mut line, event),
            Self::Jsonl => jsonl::encode(&mut line, event, sources),
            Self::Mmiotrace => {
                if let Some(text) = mmiotrace::format_record(event) {
                    line.extend_from_slice(text.as_bytes());
                }
            }
            Self::Chrome | Self::Ctf => {
                return Err(io::Error::other(format!(
                    "the {self} format needs an event writer"
                )));
            }
        }
        out.write_all(&line)
    }

    /// The names [`Format::from_str`] takes.
    pub const NAMES: &'static str = "text, jsonl, mmiotrace, chrome or ctf";
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Jsonl => "jsonl",
            Self::Mmiotrace => "mmiotrace",
            Self::Chrome => "chrome",
            Self::Ctf => "ctf",
        })
    }
}

/// A format name that is none of [`Format::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown event format {0:?}: expected text, jsonl, mmiotrace, chrome or ctf")]
pub struct ParseFormatError(pub String);

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "jsonl" => Ok(Self::Jsonl),
            "mmiotrace" => Ok(Self::Mmiotrace),
            "chrome" => Ok(Self::Chrome),
            "ctf" => Ok(Self::Ctf),
            other => Err(ParseFormatError(other.to_owned())),
        }
    }
}
