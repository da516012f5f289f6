//! The fan-out hub: producers emit, every subscriber has its own bounded queue.
//!
//! A producer ([`Hub::emit`] on a vCPU thread, [`Hub::emit_batch`] from the in-guest ring
//! drain) takes the subscriber list's read lock, and for each subscriber whose [`Filter`]
//! matches takes that queue's mutex for one push (a batch: one lock per subscriber). Nothing
//! waits for a consumer: a full queue drops the event, counts it (the subscription's
//! [`Subscription::lost`] and the source's `lost`), and puts a [`EventKind::Lost`] record
//! before that subscriber's next event. A consumer takes its whole queue at once (a buffer
//! swap), so it pays one lock per batch, not per event. A producer wakes a consumer only when
//! that consumer sleeps in [`Subscription::recv_timeout`]; writers poll instead, so a vCPU's
//! emit costs no futex call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::{Event, Kind, KindSet, SourceId, Sources};

/// The default queue capacity of a subscription, in events.
pub const DEFAULT_CAPACITY: usize = 1 << 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which events a subscriber takes: by kind, source and vCPU (all three must match).
///
/// A subscriber's own lost records (its queue was full) always reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The kinds taken.
    pub kinds: KindSet,
    /// Only events of these sources (sorted); `None`: any source, including none.
    pub sources: Option<Vec<SourceId>>,
    /// Only events of these vCPUs (sorted); `None`: any vCPU.
    pub vcpus: Option<Vec<u32>>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Filter {
        Filter::kinds(super::KindSet::ALL)
    }

    /// Every event of `kinds`.
    pub fn kinds(kinds: KindSet) -> Filter {
        Filter {
            kinds,
            sources: None,
            vcpus: None,
        }
    }

    /// Only events of `sources` (kept sorted).
    pub fn with_sources(mut self, mut sources: Vec<SourceId>) -> Filter {
        sources.sort_unstable();
        self.sources = Some(sources);
        self
    }

    /// Only events of `vcpus` (kept sorted).
    pub fn with_vcpus(mut self, mut vcpus: Vec<u32>) -> Filter {
        vcpus.sort_unstable();
        self.vcpus = Some(vcpus);
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.kinds.contains(event.kind.class())
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.binary_search(&event.source).is_ok())
            && self
                .vcpus
                .as_ref()
                .is_none_or(|v| v.binary_search(&event.vcpu).is_ok())
    }
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<Event>,
    /// Events dropped since the last lost record queued.
    pending_lost: u64,
    /// The consumer sleeps on the condvar.
    waiting: bool,
}

/// One subscriber's queue.
#[derive(Debug)]
struct Queue {
    id: u64,
    filter: Filter,
    capacity: usize,
    /// Producers that can wait (the ring drain) leave events where they are rather than
    /// overflow this queue.
    hold_back: AtomicBool,
    state: Mutex<State>,
    ready: Condvar,
    /// `state.buf.len()`, readable without the lock.
    len: AtomicUsize,
    lost: AtomicU64,
}

impl Queue {
    /// Pushes with the lock held; false when full (the event is counted as lost).
    fn push_locked(&self, st: &mut State, event: Event, sources: &Sources) -> bool {
        if st.buf.len() >= self.capacity {
            st.pending_lost += 1;
            self.lost.fetch_add(1, Ordering::Relaxed);
            sources.add_lost(event.source, 1);
            return false;
        }
        if st.pending_lost != 0 {
            // The lost record may take the one place beyond the capacity: a queue of 1
            // still moves on.
            let count = std::mem::take(&mut st.pending_lost);
            st.buf
                .push(Event::queue_lost(event.time_ns, event.vcpu, count));
        }
        st.buf.push(event);
        true
    }

    fn after_push(&self, st: &mut State) {
        self.len.store(st.buf.len(), Ordering::Relaxed);
        if st.waiting {
            st.waiting = false;
            self.ready.notify_one();
        }
    }
}

#[derive(Debug)]
struct Shared {
    sources: Arc<Sources>,
    epoch: Instant,
    queues: RwLock<Vec<Arc<Queue>>>,
    next_id: AtomicU64,
    /// Events taken by every subscriber they matched (at least one).
    delivered: AtomicU64,
    /// Events that matched no subscriber, or that one of them dropped.
    undelivered: AtomicU64,
}

/// The event pipeline's entry point, cloned to every producer (vCPU threads, the ring drain,
/// the tracer) and to whoever subscribes. Create it when the VM starts: that is time zero of
/// [`Hub::now_ns`].
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// The producer's name for a [`Hub`].
pub type EventSink = Hub;

impl Hub {
    /// A hub for `sources` with no subscriber.
    pub fn new(sources: Arc<Sources>) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                sources,
                epoch: Instant::now(),
                queues: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                undelivered: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to the events `filter` passes, through a queue of `capacity` events (at
    /// least 1). The subscription loses events (counted, and told by a lost record) when it
    /// does not keep up; it never slows a producer or another subscriber. Dropping it
    /// unsubscribes.
    pub fn subscribe(&self, filter: Filter, capacity: usize) -> Subscription {
        let queue = Arc::new(Queue {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            capacity: capacity.max(1),
            hold_back: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            len: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        });
        self.shared
            .queues
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queue.clone());
        Subscription {
            queue,
            shared: self.shared.clone(),
            local: Mutex::new(Vec::new().into_iter()),
        }
    }

    /// Queues `event` for every subscriber it matches, without ever blocking. Returns whether
    /// at least one subscriber took it and none dropped it.
    pub fn emit(&self, event: Event) -> bool {
        let queues = self
            .shared
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut taken = 0usize;
        let mut dropped = false;
        let mut push = |q: &Queue, ev: Event| {
            let mut st = lock(&q.state);
            if q.push_locked(&mut st, ev, &self.shared.sources) {
                taken += 1;
            } else {
                dropped = true;
            }
            q.after_push(&mut st);
        };
        // Every matching queue but the last gets a clone; the last gets the event itself.
        let mut last: Option<&Arc<Queue>> = None;
        for q in queues.iter().filter(|q| q.filter.matches(&event)) {
            if let Some(prev) = last.replace(q) {
                push(prev, event.clone());
            }
        }
        if let Some(q) = last {
            push(q, event);
        }
        let ok = taken > 0 && !dropped;
        let counter = if ok {
            &self.shared.delivered
        } else {
            &self.shared.undelivered
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// Queues every event of `events` (emptied) for the subscribers they match: one lock per
    /// subscriber per batch. Returns how many (event, subscriber) pairs were dropped.
    pub fn emit_batch(&self, events: &mut Vec<Event>) -> u64 {
        if events.is_empty() {
            return 0;
        }
        let queues = self
            .shared
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        let n = events.len() as u64;
        // Every queue but the last gets clones; the last takes the events themselves (the
        // usual case, one writer, copies nothing and touches no reference count).
        if let Some((last, others)) = queues.split_last() {
            for q in others {
                let mut st = lock(&q.state);
                st.buf.reserve(events.len().min(q.capacity));
                for e in events.iter().filter(|e| q.filter.matches(e)) {
                    if !q.push_locked(&mut st, e.clone(), &self.shared.sources) {
                        dropped += 1;
                    }
                }
                q.after_push(&mut st);
            }
            let mut st = lock(&last.state);
            if st.pending_lost == 0
                && st.buf.len() + events.len() <= last.capacity
                && events.iter().all(|e| last.filter.matches(e))
            {
                // All of them fit and match: one bulk move (or a buffer swap, when the
                // consumer has taken everything), not one push per event.
                if st.buf.is_empty() {
                    std::mem::swap(&mut st.buf, events);
                } else {
                    st.buf.append(events);
                }
                last.after_push(&mut st);
                drop(st);
                events.clear();
                self.shared.delivered.fetch_add(n, Ordering::Relaxed);
                return dropped;
            }
            st.buf.reserve(events.len().min(last.capacity));
            for e in events.drain(..) {
                if last.filter.matches(&e) && !last.push_locked(&mut st, e, &self.shared.sources) {
                    dropped += 1;
                }
            }
            last.after_push(&mut st);
        }
        events.clear();
        self.shared.delivered.fetch_add(n, Ordering::Relaxed);
        dropped
    }

    /// How many events of `kind` every holding-back subscriber taking that kind can take
    /// now (see [`Subscription::set_hold_back`]); `usize::MAX` when there is none. A producer
    /// that can leave events where they are (the in-guest ring drain) sends no more.
    pub fn room(&self, kind: Kind) -> usize {
        self.shared
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|q| q.hold_back.load(Ordering::Relaxed) && q.filter.kinds.contains(kind))
            .map(|q| q.capacity.saturating_sub(q.len.load(Ordering::Relaxed)))
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Events waiting in subscribers' queues, over all of them.
    pub fn queued(&self) -> usize {
        self.shared
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|q| q.len.load(Ordering::Relaxed))
            .sum()
    }

    /// Events every subscriber they matched took (at least one), so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Events that matched no subscriber or that a subscriber dropped, so far.
    pub fn undelivered(&self) -> u64 {
        self.shared.undelivered.load(Ordering::Relaxed)
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.shared
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Nanoseconds since the hub was created: the time base of every [`Event::time_ns`].
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The registry of this hub's sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.shared.sources
    }
}

/// One subscriber's end: its queue, read by one thread.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    /// The batch taken last, being handed out one by one.
    local: Mutex<std::vec::IntoIter<Event>>,
}

/// The receiving end of [`channel`].
pub type EventReceiver = Subscription;

impl Subscription {
    /// The next event, if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        let mut local = lock(&self.local);
        if let Some(e) = local.next() {
            return Some(e);
        }
        let mut batch = Vec::new();
        self.swap(&mut batch);
        *local = batch.into_iter();
        local.next()
    }

    /// The next event, waiting at most `timeout` for one; `None` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        if let Some(e) = self.try_recv() {
            return Some(e);
        }
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.queue.state);
        while st.buf.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                st.waiting = false;
                return None;
            }
            st.waiting = true;
            st = self
                .queue
                .ready
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.waiting = false;
        let batch = std::mem::take(&mut st.buf);
        self.queue.len.store(0, Ordering::Relaxed);
        drop(st);
        let mut local = lock(&self.local);
        *local = batch.into_iter();
        local.next()
    }

    /// Appends every queued event to `out` (without waiting) and returns how many. Give it
    /// an empty `out` with capacity and the queue's buffer is swapped with it: no copy.
    pub fn recv_batch(&self, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        out.extend(lock(&self.local).by_ref());
        if out.is_empty() {
            self.swap(out);
        } else {
            let mut batch = Vec::new();
            self.swap(&mut batch);
            out.append(&mut batch);
        }
        out.len() - before
    }

    fn swap(&self, buf: &mut Vec<Event>) {
        let mut st = lock(&self.queue.state);
        if st.buf.is_empty() {
            return;
        }
        std::mem::swap(&mut st.buf, buf);
        self.queue.len.store(0, Ordering::Relaxed);
    }

    /// Events this subscription lost (its queue was full), in total.
    pub fn lost(&self) -> u64 {
        self.queue.lost.load(Ordering::Relaxed)
    }

    /// A lost record for events dropped since the last one queued, if any: the trailing
    /// gap, for a reader that has drained the queue and stops.
    pub fn take_pending_lost(&self) -> Option<Event> {
        let count = std::mem::take(&mut lock(&self.queue.state).pending_lost);
        (count != 0).then(|| {
            let now = u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            Event::queue_lost(now, 0, count)
        })
    }

    /// When on, a producer that can hold events back (the in-guest ring drain: records wait
    /// in the guest's rings) sends no more than this queue has room for: a writer that must
    /// see everything. Off (the default), a slow reader loses events and slows nobody.
    pub fn set_hold_back(&self, on: bool) {
        self.queue.hold_back.store(on, Ordering::Relaxed);
    }

    /// The filter.
    pub fn filter(&self) -> &Filter {
        &self.queue.filter
    }

    /// The registry of the hub's sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.shared.sources
    }

    /// Nanoseconds since the hub was created.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Drop for Subscription {
    /// Unsubscribes: producers stop queueing for it.
    fn drop(&mut self) {
        self.shared
            .queues
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|q| q.id != self.queue.id);
    }
}

/// A hub for `sources` with one subscription taking every event through a queue of
/// `capacity`, which holds the ring drain back (a writer that must see everything).
pub fn channel(sources: Arc<Sources>, capacity: usize) -> (Hub, Subscription) {
    let hub = Hub::new(sources);
    let sub = hub.subscribe(Filter::all(), capacity);
    sub.set_hold_back(true);
    (hub, sub)
}
