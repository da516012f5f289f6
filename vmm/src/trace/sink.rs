//! The producer side: [`TraceSink`], cloned onto every vCPU thread and called at every traced
//! exit. It never blocks: a full channel counts the record as lost, and the next record that
//! fits is preceded by a lost-events marker (the kernel's `MARK 0.000000 Lost N events.`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::TraceRecord;

/// The channel capacity [`TraceSink::new`] uses: 64 Ki records.
pub const DEFAULT_CAPACITY: usize = 65536;

/// What travels on the channel: a record, or the sink's own count of records it dropped.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A record given to [`TraceSink::record`].
    Record(TraceRecord),
    /// `count` records were dropped before this point because the channel was full.
    Dropped { time_ns: u64, count: u64 },
}

/// Counters and the time origin, shared by every clone of a sink and by its receiver.
#[derive(Debug)]
pub(crate) struct Shared {
    epoch: Instant,
    /// Records accepted into the channel.
    pub(crate) recorded: AtomicU64,
    /// Records dropped (channel full, or the writer gone), in total.
    pub(crate) lost: AtomicU64,
    /// Dropped records not yet announced by a [`Msg::Dropped`] marker.
    pub(crate) pending_lost: AtomicU64,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The cloneable, never-blocking entry point of the trace pipeline.
///
/// ```
/// use vmm::trace::{TraceFormat, TraceRecord, TraceSink, TraceWriter};
///
/// let (sink, receiver) = TraceSink::new();
/// let writer = TraceWriter::spawn(receiver, Vec::new(), TraceFormat::Jsonl);
/// assert!(sink.record(TraceRecord::Mark { time_ns: sink.now_ns(), text: "hello".into() }));
/// drop(sink);
/// let report = writer.finish();
/// assert_eq!((report.written, report.lost), (1, 0));
/// ```
#[derive(Clone, Debug)]
pub struct TraceSink {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

/// The consumer side of a [`TraceSink`]: hand it to [`super::TraceWriter::spawn`].
#[derive(Debug)]
pub struct TraceReceiver {
    pub(crate) rx: Receiver<Msg>,
    pub(crate) shared: Arc<Shared>,
}

impl TraceSink {
    /// A sink with [`DEFAULT_CAPACITY`] and its receiver.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (TraceSink, TraceReceiver) {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A sink whose channel holds `capacity` records (at least one) and its receiver.
    pub fn with_capacity(capacity: usize) -> (TraceSink, TraceReceiver) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            recorded: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            pending_lost: AtomicU64::new(0),
        });
        (
            TraceSink {
                tx,
                shared: Arc::clone(&shared),
            },
            TraceReceiver { rx, shared },
        )
    }

    /// Nanoseconds since this sink (or the sink it was cloned from) was created: the time base
    /// of every record's `time_ns`.
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Queues `record` for the writer without blocking. Returns false when it was dropped
    /// (channel full, or the writer finished); the loss is counted and announced before the
    /// next record that fits.
    pub fn record(&self, record: TraceRecord) -> bool {
        if self.shared.pending_lost.load(Ordering::Relaxed) != 0 && !self.announce_losses() {
            return self.lose();
        }
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => {
                self.shared.recorded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.lose(),
        }
    }

    /// Records accepted into the channel so far (by every clone).
    pub fn recorded(&self) -> u64 {
        self.shared.recorded.load(Ordering::Relaxed)
    }

    /// Records dropped so far (by every clone).
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Records (and lost-events markers) waiting in the channel for the writer.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Sends the marker for the losses not yet announced; false if it did not fit either.
    fn announce_losses(&self) -> bool {
        let count = self.shared.pending_lost.swap(0, Ordering::AcqRel);
        if count == 0 {
            return true;
        }
        let marker = Msg::Dropped {
            time_ns: self.now_ns(),
            count,
        };
        if self.tx.try_send(marker).is_ok() {
            return true;
        }
        self.shared.pending_lost.fetch_add(count, Ordering::AcqRel);
        false
    }

    fn lose(&self) -> bool {
        self.shared.lost.fetch_add(1, Ordering::Relaxed);
        self.shared.pending_lost.fetch_add(1, Ordering::AcqRel);
        false
    }
}
