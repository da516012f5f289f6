//! The bounded channel between vCPU threads and the event writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Event, Sources};

/// The default channel capacity, in events.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What the sinks and the receiver share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) sources: Arc<Sources>,
    /// Events dropped since the last lost record that made it into the channel.
    pub(super) pending_lost: AtomicU64,
    /// Time zero of [`Event::time_ns`].
    epoch: Instant,
}

impl Shared {
    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A bounded event channel for `sources` holding at most `capacity` events (at least 1;
/// [`DEFAULT_CAPACITY`] unless the user asks otherwise). Create it when the VM starts: that is
/// time zero of [`EventSink::now_ns`].
pub fn channel(sources: Arc<Sources>, capacity: usize) -> (EventSink, EventReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let shared = Arc::new(Shared {
        sources,
        pending_lost: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    (
        EventSink {
            tx,
            shared: shared.clone(),
        },
        EventReceiver { rx, shared },
    )
}

/// The sending end, cloned to every vCPU thread.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: Sender<Event>,
    shared: Arc<Shared>,
}

impl EventSink {
    /// Queues `event` without ever blocking, and returns whether it was queued.
    ///
    /// When the channel is full (or its receiver is gone) the event is dropped and counted in
    /// its source's `lost` counter and in a pending count; the next emit that finds room first
    /// queues an [`super::EventKind::Lost`] record with that count, so the stream shows where
    /// the gap is. Costs one atomic load and one `try_send` when nothing is pending.
    pub fn emit(&self, event: Event) -> bool {
        if self.shared.pending_lost.load(Ordering::Relaxed) != 0 {
            self.send_pending_lost(event.time_ns, event.vcpu);
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) => {
                self.shared.sources.add_lost(event.source, 1);
                self.shared.pending_lost.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a lost record for the pending count, or puts the count back if there is no room.
    #[cold]
    fn send_pending_lost(&self, time_ns: u64, vcpu: u32) {
        let count = self.shared.pending_lost.swap(0, Ordering::Relaxed);
        if count == 0 {
            return; // another vCPU took it
        }
        if self.tx.try_send(Event::lost(time_ns, vcpu, count)).is_err() {
            self.shared.pending_lost.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// How many events the channel takes before it is full (a producer that can hold events
    /// back, like the in-guest ring drain, sends no more than this).
    pub fn room(&self) -> usize {
        self.tx
            .capacity()
            .map_or(usize::MAX, |c| c.saturating_sub(self.tx.len()))
    }

    /// Nanoseconds since the channel was created, for [`Event::time_ns`].
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// The registry of this channel's sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.shared.sources
    }
}

/// The receiving end: give it to an [`super::EventWriter`], or read it directly.
#[derive(Debug)]
pub struct EventReceiver {
    pub(super) rx: Receiver<Event>,
    pub(super) shared: Arc<Shared>,
}

impl EventReceiver {
    /// The next queued event, if any.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or when every sink is
    /// gone and the channel is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// A lost record for the events dropped since the last one queued, if any: the trailing
    /// gap, for a reader that has drained the channel and stops.
    pub fn take_pending_lost(&self) -> Option<Event> {
        let count = self.shared.pending_lost.swap(0, Ordering::Relaxed);
        (count != 0).then(|| Event::lost(self.shared.now_ns(), 0, count))
    }

    /// The registry of this channel's sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.shared.sources
    }
}
