//! The writer thread: one subscription into an output in one [`Format`].

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::chrome::ChromeEncoder;
use super::ctf::CtfEncoder;
use super::{Event, EventKind, Format, Subscription, chrome, jsonl, mmiotrace, text};
use crate::symbols::SymbolTable;

/// Why the output failed (the draining went on: see [`WriterReport::discarded`]).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Writing or flushing the output failed.
    #[error("Cannot write the {what} output")]
    Io {
        /// What the output is (`event`, `trace`): [`WriterOptions::what`].
        what: &'static str,
        /// Events written and flushed before the failure.
        written: u64,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The writer thread panicked (a bug).
    #[error("The {0} writer thread panicked")]
    Panicked(&'static str),
}

/// What an [`EventWriter`] did, from [`EventWriter::finish`].
///
/// Once every producer has stopped, `written + skipped + discarded + lost` equals the
/// events the subscription's filter passed.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Events written and flushed (the hub's lost records not included; a producer's are).
    pub written: u64,
    /// Events the format cannot express (port I/O and hits in mmiotrace).
    pub skipped: u64,
    /// The hub's lost records (this subscription's queue was full) written and flushed.
    pub lost_records: u64,
    /// Events this subscription lost (its queue was full), all announced by lost records.
    pub lost: u64,
    /// Events taken but not written because the output failed: those after the error, and
    /// those buffered when it happened.
    pub discarded: u64,
    /// The first output error, if any.
    pub error: Option<WriterError>,
}

/// How an [`EventWriter`] works, besides its format.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Symbolizes access RIPs (on the writer thread, cached per RIP).
    pub symbols: Option<Arc<SymbolTable>>,
    /// What the output is, for error messages: `event` or `trace`.
    pub what: &'static str,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            symbols: None,
            what: "event",
        }
    }
}

/// Why a CTF capture could not be started.
fn create_error(dir: &Path, e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("Cannot create the CTF capture in {}: {e}", dir.display()),
    )
}

/// A thread writing the events of a [`Subscription`] to an output in one [`Format`].
///
/// It polls its queue (so no producer ever wakes it: a vCPU's emit costs no futex call),
/// formats into its own buffer and writes it out in large chunks, and flushes whenever the
/// queue runs empty. If the output fails, it keeps draining (so the vCPUs see no difference)
/// and reports the error from [`finish`](Self::finish).
#[derive(Debug)]
pub struct EventWriter {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<WriterReport>>,
    what: &'static str,
}

/// How often an idle writer looks at its queue.
const POLL: Duration = Duration::from_millis(1);
/// The writer's buffer goes to the output once it holds this much.
const CHUNK: usize = 256 * 1024;

impl EventWriter {
    /// Starts the thread writing `sub`'s events to `out` as `format` (not CTF: see
    /// [`EventWriter::spawn_ctf`]).
    pub fn spawn<W: Write + Send + 'static>(
        sub: Subscription,
        out: W,
        format: Format,
    ) -> io::Result<Self> {
        Self::spawn_with(sub, out, format, WriterOptions::default())
    }

    /// [`EventWriter::spawn`] with options.
    pub fn spawn_with<W: Write + Send + 'static>(
        sub: Subscription,
        out: W,
        format: Format,
        options: WriterOptions,
    ) -> io::Result<Self> {
        let encoder = match format {
            Format::Text => Encoder::Text,
            Format::Jsonl => Encoder::Jsonl,
            Format::Mmiotrace => Encoder::Mmiotrace,
            Format::Chrome => Encoder::Chrome(ChromeEncoder::default()),
            Format::Ctf => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a CTF capture is a directory: use EventWriter::spawn_ctf",
                ));
            }
        };
        Self::start(sub, out, encoder, options)
    }

    /// Starts a CTF 1.8 capture in directory `dir` (created if missing): a `metadata` file
    /// and the binary stream [`super::CTF_STREAM`].
    pub fn spawn_ctf(sub: Subscription, dir: &Path, options: WriterOptions) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| create_error(dir, &e))?;
        std::fs::write(dir.join("metadata"), super::ctf::metadata())
            .map_err(|e| create_error(dir, &e))?;
        let stream = std::fs::File::create(dir.join(super::CTF_STREAM))
            .map_err(|e| create_error(dir, &e))?;
        Self::start(sub, stream, Encoder::Ctf(CtfEncoder::default()), options)
    }

    fn start<W: Write + Send + 'static>(
        sub: Subscription,
        out: W,
        encoder: Encoder,
        options: WriterOptions,
    ) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let what = options.what;
        let thread = std::thread::Builder::new()
            .name(format!("hvprobe-{what}s"))
            .spawn(move || run(sub, &stopped, out, encoder, options))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            what,
        })
    }

    /// Stops the writer: writes what is queued and a last lost record for any trailing gap,
    /// closes the output (a Chrome trace gets its closing `]}`, a CTF capture its last
    /// packet), flushes, joins the thread, and unsubscribes (events emitted later are not
    /// this writer's). Blocks as long as the output blocks.
    pub fn finish(mut self) -> WriterReport {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> WriterReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.try_send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            Some(Err(_)) => WriterReport {
                error: Some(WriterError::Panicked(self.what)),
                ..WriterReport::default()
            },
            None => WriterReport::default(),
        }
    }
}

impl Drop for EventWriter {
    /// Without [`finish`](Self::finish): finishes (so a document is closed) and drops the
    /// report.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_and_join();
        }
    }
}

/// The format-specific part of the writer.
enum Encoder {
    Text,
    Jsonl,
    Mmiotrace,
    Chrome(ChromeEncoder),
    Ctf(CtfEncoder),
}

/// Events formatted into the buffer but not yet flushed to the output.
#[derive(Default)]
struct Unflushed {
    written: u64,
    lost_records: u64,
}

/// The writer thread's state.
struct Output<'a, W: Write> {
    out: W,
    buf: Vec<u8>,
    encoder: Encoder,
    sources: &'a super::Sources,
    what: &'static str,
    symbols: Option<Arc<SymbolTable>>,
    /// RIP -> symbol+offset, for accesses (bounded: cleared when it grows large).
    symbol_cache: HashMap<u64, Option<Arc<str>>>,
    unflushed: Unflushed,
    report: WriterReport,
}

impl<W: Write> Output<'_, W> {
    /// Formats `event` (taken by reference: a batch is formatted in place, then cleared).
    fn write(&mut self, event: &Event) {
        let lost_record = event.is_queue_lost();
        if self.report.error.is_some() {
            if !lost_record {
                self.report.discarded += 1;
            }
            return;
        }
        if let (EventKind::Access(a), None, Some(symbols)) =
            (&event.kind, &event.symbol, &self.symbols)
            && let Some(rip) = a.rip
        {
            if self.symbol_cache.len() > 65536 {
                self.symbol_cache.clear();
            }
            let symbol = self
                .symbol_cache
                .entry(rip)
                .or_insert_with(|| symbols.lookup(rip).map(|s| Arc::from(s.to_string())))
                .clone();
            let symbolized = Event {
                symbol,
                ..event.clone()
            };
            return self.encode(&symbolized, lost_record);
        }
        self.encode(event, lost_record);
    }

    fn encode(&mut self, event: &Event, lost_record: bool) {
        let expressed = match &mut self.encoder {
            Encoder::Text => {
                text::encode(&mut self.buf, event);
                true
            }
            Encoder::Jsonl => {
                jsonl::encode(&mut self.buf, event, self.sources);
                true
            }
            Encoder::Mmiotrace => match mmiotrace::format_record(event) {
                Some(line) => {
                    self.buf.extend_from_slice(line.as_bytes());
                    true
                }
                None => false,
            },
            Encoder::Chrome(c) => {
                c.encode(&mut self.buf, event, self.sources);
                true
            }
            Encoder::Ctf(c) => c.encode(event, self.sources, &mut self.buf),
        };
        if !expressed {
            self.report.skipped += 1;
        } else if lost_record {
            self.unflushed.lost_records += 1;
        } else {
            self.unflushed.written += 1;
        }
        if self.buf.len() >= CHUNK {
            self.put();
        }
    }

    /// Hands the buffer to the output.
    fn put(&mut self) {
        if self.report.error.is_some() {
            self.buf.clear();
            return;
        }
        if let Err(e) = self.out.write_all(&self.buf) {
            self.fail(e);
        }
        self.buf.clear();
    }

    fn flush(&mut self) {
        self.put();
        if self.report.error.is_some() {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                let done = std::mem::take(&mut self.unflushed);
                self.report.written += done.written;
                self.report.lost_records += done.lost_records;
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, source: io::Error) {
        self.report.discarded += std::mem::take(&mut self.unflushed).written;
        self.report.error = Some(WriterError::Io {
            what: self.what,
            written: self.report.written,
            source,
        });
    }
}

fn run<W: Write>(
    sub: Subscription,
    stopped: &Receiver<()>,
    out: W,
    encoder: Encoder,
    options: WriterOptions,
) -> WriterReport {
    let sources = sub.sources().clone();
    let mut output = Output {
        out,
        buf: Vec::with_capacity(CHUNK + 4096),
        encoder,
        sources: &sources,
        what: options.what,
        symbols: options.symbols,
        symbol_cache: HashMap::new(),
        unflushed: Unflushed::default(),
        report: WriterReport::default(),
    };
    match output.encoder {
        Encoder::Chrome(_) => output.buf.extend_from_slice(chrome::header().as_bytes()),
        Encoder::Mmiotrace => output
            .buf
            .extend_from_slice(mmiotrace::VERSION_LINE.as_bytes()),
        _ => {}
    }
    let mut batch = Vec::with_capacity(4096);
    let mut last_flush = Instant::now();
    loop {
        if sub.recv_batch(&mut batch) > 0 {
            for event in &batch {
                output.write(event);
            }
            batch.clear();
            // Busy for a while: flush now and then anyway, so a reader sees progress.
            if last_flush.elapsed() >= Duration::from_millis(100) {
                output.flush();
                last_flush = Instant::now();
            }
            match stopped.try_recv() {
                Err(TryRecvError::Empty) => continue,
                _ => break,
            }
        }
        output.flush();
        last_flush = Instant::now();
        match stopped.recv_timeout(POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    // What is queued now; producers still running could otherwise keep us here forever.
    sub.recv_batch(&mut batch);
    for event in &batch {
        output.write(event);
    }
    batch.clear();
    if let Some(lost) = sub.take_pending_lost() {
        output.write(&lost);
    }
    match &mut output.encoder {
        Encoder::Chrome(_) => output.buf.extend_from_slice(chrome::footer().as_bytes()),
        Encoder::Ctf(c) => c.close_packet(&mut output.buf),
        _ => {}
    }
    output.flush();
    output.report.lost = sub.lost();
    drop(sub);
    output.report
}
