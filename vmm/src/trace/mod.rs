//! MMIO and port I/O trace records and their outputs.
//!
//! The pipeline: vCPU threads call [`TraceSink::record`] at every traced exit (never blocking:
//! a full channel counts the loss); one [`TraceWriter`] thread drains the channel into a file
//! in one [`TraceFormat`]:
//! - [`TraceFormat::Mmiotrace`]: the kernel's mmiotrace text, exactly (see [`mmiotrace`] for
//!   the line formats and where hvprobe's extras go: vCPU and symbol do not, port I/O does
//!   not, the RIP goes in the PC field);
//! - [`TraceFormat::Jsonl`]: one JSON object per record with every field ([`jsonl`]);
//! - [`TraceFormat::Chrome`]: Chrome's Trace Event Format, pid = VM, tid = vCPU ([`chrome`]).
//!
//! An output error never blocks or stops the VM: the writer keeps draining (counting what it
//! discards) and reports the error from [`TraceWriter::finish`].

pub mod chrome;
pub mod jsonl;
pub mod mmiotrace;
mod sink;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

pub use sink::{DEFAULT_CAPACITY, TraceReceiver, TraceSink};
use sink::{Msg, Shared};

/// The address space of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Memory-mapped I/O (or a traced RAM range): the address is a guest-physical address.
    Mmio,
    /// Port I/O: the address is a port number.
    Pio,
}

/// One guest access to a traced region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Nanoseconds since the sink's creation ([`TraceSink::now_ns`]).
    pub time_ns: u64,
    /// The vCPU that made the access.
    pub vcpu: u32,
    /// MMIO or port I/O.
    pub space: Space,
    /// A write (else a read).
    pub write: bool,
    /// Guest-physical address (MMIO) or port (PIO).
    pub addr: u64,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    /// The value read or written (little-endian, zero-extended).
    pub value: u64,
    /// Guest RIP of the accessing instruction, when known.
    pub rip: Option<u64>,
    /// `symbol+0xoff` of the RIP, when known.
    pub symbol: Option<String>,
    /// The traced region (the id of its [`TraceRecord::Map`]) the access belongs to.
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

/// One entry of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceRecord {
    /// A read or write.
    Access(Access),
    /// A traced region appeared (mmiotrace's ioremap event).
    Map {
        /// Nanoseconds since the sink's creation.
        time_ns: u64,
        /// The region's id, which its accesses carry as `map_id`.
        id: u32,
        /// Guest-physical base.
        phys: u64,
        /// Guest-virtual base, or 0 when unknown.
        virt: u64,
        /// Length in bytes.
        len: u64,
        /// Guest RIP that caused the mapping, or 0 when unknown.
        pc: u64,
    },
    /// A traced region went away (mmiotrace's iounmap event).
    Unmap {
        /// Nanoseconds since the sink's creation.
        time_ns: u64,
        /// The id of its [`TraceRecord::Map`].
        id: u32,
        /// Guest RIP that caused the unmapping, or 0 when unknown.
        pc: u64,
    },
    /// A marker (guest or user comment).
    Mark {
        /// Nanoseconds since the sink's creation.
        time_ns: u64,
        /// One line of text.
        text: String,
    },
    /// `count` records were lost before this point.
    Lost {
        /// Nanoseconds since the sink's creation.
        time_ns: u64,
        /// How many.
        count: u64,
    },
    /// A PCI device of the VM (mmiotrace writes these right after its header).
    PciDev(PciDevInfo),
}

/// The output format of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceFormat {
    /// The kernel's mmiotrace text (`VERSION 20070824`).
    Mmiotrace,
    /// JSON lines.
    Jsonl,
    /// Chrome's Trace Event Format.
    Chrome,
}

/// A `--trace-format` value that is none of the formats.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown trace format {0:?}: expected mmiotrace, jsonl or chrome")]
pub struct UnknownTraceFormat(pub String);

impl FromStr for TraceFormat {
    type Err = UnknownTraceFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mmiotrace" => Ok(TraceFormat::Mmiotrace),
            "jsonl" => Ok(TraceFormat::Jsonl),
            "chrome" => Ok(TraceFormat::Chrome),
            other => Err(UnknownTraceFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceFormat::Mmiotrace => "mmiotrace",
            TraceFormat::Jsonl => "jsonl",
            TraceFormat::Chrome => "chrome",
        })
    }
}

/// Why a trace output is incomplete.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Writing or flushing the output failed; later records were discarded.
    #[error("Cannot write the trace output")]
    Write(#[source] io::Error),
    /// The writer thread panicked.
    #[error("The trace writer thread panicked")]
    Panicked,
}

/// What a [`TraceWriter`] did, from [`TraceWriter::finish`].
///
/// Once every sink has stopped recording, `written + skipped + discarded + lost` equals the
/// number of [`TraceSink::record`] calls.
#[derive(Debug, Default)]
pub struct TraceReport {
    /// Records written to the output (lost-events markers not included).
    pub written: u64,
    /// Records the format cannot express (port I/O in mmiotrace).
    pub skipped: u64,
    /// Records drained after an output error.
    pub discarded: u64,
    /// Records lost before reaching the writer (channel full, or sent after it finished).
    pub lost: u64,
    /// The first output error.
    pub error: Option<TraceError>,
}

/// The writer thread: drains a [`TraceReceiver`] into an output in one format.
#[derive(Debug)]
pub struct TraceWriter {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<TraceReport>>,
    shared: Arc<Shared>,
}

impl TraceWriter {
    /// Starts the thread writing `receiver`'s records to `out` in `format`. The output is
    /// buffered; it is flushed whenever the channel runs empty and at the end.
    pub fn spawn(
        receiver: TraceReceiver,
        out: impl Write + Send + 'static,
        format: TraceFormat,
    ) -> TraceWriter {
        Self::spawn_with_symbols(receiver, out, format, None)
    }

    /// Like [`TraceWriter::spawn`], and fills in each access's `symbol` from its RIP with
    /// `symbols` (on the writer thread, off the vCPUs' path).
    pub fn spawn_with_symbols(
        receiver: TraceReceiver,
        out: impl Write + Send + 'static,
        format: TraceFormat,
        symbols: Option<Arc<introspect::symbols::SymbolTable>>,
    ) -> TraceWriter {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::clone(&receiver.shared);
        let thread = std::thread::Builder::new()
            .name("hvprobe-trace".into())
            .spawn(move || run(receiver, stop_rx, BufWriter::new(out), format, symbols));
        match thread {
            Ok(thread) => TraceWriter {
                stop: Some(stop_tx),
                thread: Some(thread),
                shared,
            },
            // Without a thread nothing drains the channel: every record counts as lost.
            Err(_) => TraceWriter {
                stop: None,
                thread: None,
                shared,
            },
        }
    }

    /// Writes what is queued, closes the output (a Chrome trace gets its closing `]}`) and
    /// reports. Records sent afterwards are counted as lost by their sink.
    pub fn finish(mut self) -> TraceReport {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> TraceReport {
        if let Some(stop) = self.stop.take() {
            // The thread may already have ended (all sinks dropped); that is fine.
            let _ = stop.try_send(());
        }
        let mut report = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            Some(Err(_)) => TraceReport {
                error: Some(TraceError::Panicked),
                ..Default::default()
            },
            None => TraceReport::default(),
        };
        report.lost = self.shared.lost.load(Ordering::Relaxed);
        report
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_and_join();
        }
    }
}

/// The format-specific part of the writer.
enum Encoder {
    Mmiotrace,
    Jsonl,
    Chrome(chrome::ChromeEncoder),
}

impl Encoder {
    fn header(&self) -> String {
        match self {
            Encoder::Mmiotrace => mmiotrace::VERSION_LINE.to_owned(),
            Encoder::Jsonl => String::new(),
            Encoder::Chrome(_) => chrome::header(),
        }
    }

    fn encode(&mut self, record: &TraceRecord) -> Option<String> {
        match self {
            Encoder::Mmiotrace => mmiotrace::format_record(record),
            Encoder::Jsonl => Some(jsonl::format_record(record)),
            Encoder::Chrome(chrome) => Some(chrome.encode(record)),
        }
    }

    fn footer(&self) -> &'static str {
        match self {
            Encoder::Chrome(_) => chrome::footer(),
            Encoder::Mmiotrace | Encoder::Jsonl => "",
        }
    }
}

/// The writer thread's state.
struct Output<W: Write> {
    out: W,
    encoder: Encoder,
    /// Symbolizes access RIPs here, on the writer thread, so the vCPU does not pay for it.
    symbols: Option<Arc<introspect::symbols::SymbolTable>>,
    report: TraceReport,
    /// Records (not lost markers) taken off the channel.
    received: u64,
    /// Records counted as written since the last successful flush: still in the buffer.
    unflushed: u64,
}

impl<W: Write> Output<W> {
    fn put(&mut self, text: &str) -> bool {
        if self.report.error.is_some() {
            return false;
        }
        match self.out.write_all(text.as_bytes()) {
            Ok(()) => true,
            Err(err) => {
                self.fail(err);
                false
            }
        }
    }

    /// Records the first error; the records still buffered are discarded, not written.
    fn fail(&mut self, err: io::Error) {
        self.report.error = Some(TraceError::Write(err));
        self.report.written -= self.unflushed;
        self.report.discarded += self.unflushed;
        self.unflushed = 0;
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(mut record) => {
                self.received += 1;
                if let (TraceRecord::Access(a), Some(symbols)) = (&mut record, &self.symbols) {
                    if a.symbol.is_none() {
                        a.symbol = a
                            .rip
                            .and_then(|rip| symbols.lookup(rip))
                            .map(|s| s.to_string());
                    }
                }
                match self.encoder.encode(&record) {
                    None => self.report.skipped += 1,
                    Some(text) if self.put(&text) => {
                        self.report.written += 1;
                        self.unflushed += 1;
                    }
                    Some(_) => self.report.discarded += 1,
                }
            }
            Msg::Dropped { time_ns, count } => self.lost_marker(time_ns, count),
        }
    }

    fn lost_marker(&mut self, time_ns: u64, count: u64) {
        if let Some(text) = self.encoder.encode(&TraceRecord::Lost { time_ns, count }) {
            self.put(&text);
        }
    }

    fn flush(&mut self) {
        if self.report.error.is_some() {
            return;
        }
        match self.out.flush() {
            Ok(()) => self.unflushed = 0,
            Err(err) => self.fail(err),
        }
    }
}

fn run<W: Write>(
    receiver: TraceReceiver,
    stop: Receiver<()>,
    out: W,
    format: TraceFormat,
    symbols: Option<Arc<introspect::symbols::SymbolTable>>,
) -> TraceReport {
    let encoder = match format {
        TraceFormat::Mmiotrace => Encoder::Mmiotrace,
        TraceFormat::Jsonl => Encoder::Jsonl,
        TraceFormat::Chrome => Encoder::Chrome(chrome::ChromeEncoder::default()),
    };
    let mut output = Output {
        out,
        encoder,
        symbols,
        report: TraceReport::default(),
        received: 0,
        unflushed: 0,
    };
    let header = output.encoder.header();
    output.put(&header);
    let TraceReceiver { rx, shared } = receiver;
    // The writer polls instead of blocking on the channel: a blocked receiver would be woken
    // (a futex call and a context switch) by every record a vCPU sends, which costs more than
    // the exit being traced. Polling every POLL and flushing at most every FLUSH_EVERY keeps
    // the vCPU's side to one try_send; the channel's capacity absorbs the pauses.
    const POLL: std::time::Duration = std::time::Duration::from_millis(2);
    const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
    let mut last_flush = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(msg) => {
                output.handle(msg);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if last_flush.elapsed() >= FLUSH_EVERY {
                    output.flush();
                    last_flush = std::time::Instant::now();
                }
            }
        }
        match stop.recv_timeout(POLL) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            // Asked to stop (or the writer handle is gone): drain and end.
            _ => {
                while let Ok(msg) = rx.try_recv() {
                    output.handle(msg);
                }
                break;
            }
        }
    }
    // From here on, sends fail and count as lost.
    drop(rx);
    let pending = shared.pending_lost.swap(0, Ordering::AcqRel);
    // Records accepted by a sink but still in the channel when it was dropped.
    let stranded = shared
        .recorded
        .load(Ordering::Acquire)
        .saturating_sub(output.received);
    if stranded > 0 {
        shared.lost.fetch_add(stranded, Ordering::Relaxed);
    }
    if pending + stranded > 0 {
        output.lost_marker(shared.now_ns(), pending + stranded);
    }
    let footer = output.encoder.footer();
    output.put(footer);
    output.flush();
    output.report
}
