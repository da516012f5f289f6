//! The writer thread: drains the channel into an `io::Write`.

use std::io::{self, BufWriter, Write};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, select};

use super::{Event, EventKind, EventReceiver, Format};

/// Why the event output failed (the draining went on: see [`WriterReport::discarded`]).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Writing or flushing the output failed.
    #[error("Cannot write the event output (after {written} events)")]
    Io {
        /// Events written and flushed before the failure.
        written: u64,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The writer thread panicked (a bug).
    #[error("The event writer thread panicked")]
    Panicked,
}

/// What an [`EventWriter`] did, from [`EventWriter::finish`].
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Hit events written and flushed (lost records not included).
    pub written: u64,
    /// Lost records written and flushed.
    pub lost_records: u64,
    /// Events the written lost records say were dropped.
    pub lost: u64,
    /// Records (of either kind) drained but not written because the output failed: those
    /// after the error, and those buffered when it happened.
    pub discarded: u64,
    /// The first output error, if any.
    pub error: Option<WriterError>,
}

/// A thread writing the events of an [`EventReceiver`] to an output in one [`Format`].
///
/// It writes through a `BufWriter` and flushes whenever the channel is empty, so a reader
/// of the output sees events promptly without a write per event. If the output fails, it
/// keeps draining (so the vCPUs see no difference) and reports the error from
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct EventWriter {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<WriterReport>>,
}

impl EventWriter {
    /// Starts the thread writing `receiver`'s events to `out` as `format`.
    pub fn spawn<W: Write + Send + 'static>(
        receiver: EventReceiver,
        out: W,
        format: Format,
    ) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("hvprobe-events".into())
            .spawn(move || run(&receiver, &stopped, BufWriter::new(out), format))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the writer: closes the channel (later emits count as lost), writes what is
    /// queued and a last lost record for any trailing gap, flushes, joins the thread.
    ///
    /// Stop the vCPUs first: an event emitted while `finish` runs may be dropped uncounted.
    /// Blocks as long as the output blocks.
    pub fn finish(mut self) -> WriterReport {
        self.stop.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            Some(Err(_)) | None => WriterReport {
                error: Some(WriterError::Panicked),
                ..WriterReport::default()
            },
        }
    }
}

impl Drop for EventWriter {
    /// Without [`finish`](Self::finish): tells the thread to stop, and does not wait for it.
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Records formatted into the buffer but not yet flushed to the output.
#[derive(Default)]
struct Unflushed {
    records: u64,
    written: u64,
    lost_records: u64,
    lost: u64,
}

/// The output side of the thread. Records count as written once a flush succeeds; those in
/// a failed write or flush count as discarded (part of them may have reached the output).
struct Output<W: Write> {
    out: BufWriter<W>,
    format: Format,
    unflushed: Unflushed,
    report: WriterReport,
}

impl<W: Write> Output<W> {
    fn write(&mut self, event: &Event, receiver: &EventReceiver) {
        if self.report.error.is_some() {
            self.report.discarded += 1;
            return;
        }
        let sources = &receiver.shared.sources;
        if let Err(e) = self.format.write_event(&mut self.out, event, sources) {
            self.report.discarded += 1;
            return self.fail(e);
        }
        let unflushed = &mut self.unflushed;
        unflushed.records += 1;
        match event.kind {
            EventKind::Lost { count } => {
                unflushed.lost_records += 1;
                unflushed.lost += count;
            }
            _ => unflushed.written += 1,
        }
    }

    fn flush(&mut self) {
        if self.report.error.is_some() {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                let done = std::mem::take(&mut self.unflushed);
                self.report.written += done.written;
                self.report.lost_records += done.lost_records;
                self.report.lost += done.lost;
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, source: io::Error) {
        self.report.discarded += std::mem::take(&mut self.unflushed).records;
        self.report.error = Some(WriterError::Io {
            written: self.report.written,
            source,
        });
    }
}

/// Events written between flushes at most, when the channel never runs empty.
const BATCH: usize = 256;

fn run<W: Write>(
    receiver: &EventReceiver,
    stopped: &Receiver<()>,
    out: BufWriter<W>,
    format: Format,
) -> WriterReport {
    let mut output = Output {
        out,
        format,
        unflushed: Unflushed::default(),
        report: WriterReport::default(),
    };
    loop {
        select! {
            recv(receiver.rx) -> event => {
                let Ok(event) = event else { break }; // every sink is gone
                output.write(&event, receiver);
                for event in receiver.rx.try_iter().take(BATCH) {
                    output.write(&event, receiver);
                }
                output.flush();
            }
            recv(stopped) -> _ => break,
        }
    }
    // What is queued now; emitters still running could otherwise keep us here forever.
    for event in receiver.rx.try_iter().take(receiver.rx.len()) {
        output.write(&event, receiver);
    }
    if let Some(lost) = receiver.take_pending_lost() {
        output.write(&lost, receiver);
    }
    output.flush();
    output.report
}
