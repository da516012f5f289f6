//! The registry of event sources and their lock-free counters.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// An event source: an index into a [`Sources`] registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(u32);

impl SourceId {
    /// No source: the source of [`super::EventKind::Lost`] records. Counter updates on it are
    /// ignored.
    pub const NONE: Self = Self(u32::MAX);

    /// A subscriber's own queue: the source of the lost records the hub puts into a
    /// subscriber's stream when its queue was full. Counter updates on it are ignored.
    pub const QUEUE: Self = Self(u32::MAX - 1);

    /// The index in the registry.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// One registered source: its names and counters.
#[derive(Debug)]
pub struct Source {
    name: String,
    how: std::sync::Mutex<String>,
    hits: AtomicU64,
    nmissed: AtomicU64,
    lost: AtomicU64,
}

impl Source {
    /// What it is, e.g. `probe start_kernel`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it is implemented, e.g. `int3`, `hbreak slot 0`, `watch rw 8 slot 1`, `jump
    /// (in-guest handler, slot 0, 7 bytes displaced)`.
    pub fn how(&self) -> String {
        self.how
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Hits so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Hits that arrived while this source's handler was already running (kprobes' nmissed).
    pub fn nmissed(&self) -> u64 {
        self.nmissed.load(Ordering::Relaxed)
    }

    /// Events of this source dropped because the event channel was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Entries in the first segment; segment `k` holds `FIRST_SEGMENT << k`.
const FIRST_SEGMENT: u64 = 32;
/// Enough segments for every `u32` index.
const SEGMENTS: usize = 28;

/// The registry of event sources, shared (in an `Arc`) by the controlling thread, the vCPU
/// threads and the event writer.
///
/// Registering and counting take no lock: entries live in segments of doubling size that
/// never move once allocated, so a [`SourceId`] is looked up with two atomic loads and
/// counted with one atomic add. Sources are never removed (the summary at exit lists them
/// all).
pub struct Sources {
    segments: [OnceLock<Box<[OnceLock<Source>]>>; SEGMENTS],
    next: AtomicU32,
}

impl Default for Sources {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The segment of an index and the index within it.
fn locate(index: u32) -> (usize, usize) {
    let index = u64::from(index);
    let j = index / FIRST_SEGMENT + 1;
    let segment = j.ilog2();
    let start = FIRST_SEGMENT * ((1 << segment) - 1);
    // Both fit: segment < 64, and the offset is below the segment length (< 2^33 on the
    // 64-bit hosts KVM x86 runs on; `get` rejects the rest).
    (
        usize::try_from(segment).unwrap_or(usize::MAX),
        usize::try_from(index - start).unwrap_or(usize::MAX),
    )
}

impl Sources {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
            next: AtomicU32::new(0),
        }
    }

    /// Registers a source: `name` says what it is (`probe start_kernel`), `how` how it is
    /// implemented (`int3`, `hbreak slot 0`, `watch rw 8 slot 1`). Returns [`SourceId::NONE`]
    /// only once 2^32 - 2 sources exist.
    pub fn register(&self, name: String, how: String) -> SourceId {
        let Ok(index) = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < SourceId::QUEUE.0).then_some(n + 1)
            })
        else {
            return SourceId::NONE;
        };
        let (segment, offset) = locate(index);
        let slots = self.segments[segment].get_or_init(|| {
            (0..FIRST_SEGMENT << segment)
                .map(|_| OnceLock::new())
                .collect()
        });
        let source = Source {
            name,
            how: std::sync::Mutex::new(how),
            hits: AtomicU64::new(0),
            nmissed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        };
        // The index is ours alone, so the slot is empty.
        let _ = slots[offset].set(source);
        SourceId(index)
    }

    /// The source `id`, if registered here.
    pub fn get(&self, id: SourceId) -> Option<&Source> {
        let (segment, offset) = locate(id.0);
        self.segments.get(segment)?.get()?.get(offset)?.get()
    }

    /// Counts a hit of `id` and returns its hit number (1 for the first hit; 0 for an unknown
    /// source). Call it on the vCPU thread, at the hit.
    pub fn hit(&self, id: SourceId) -> u64 {
        self.get(id)
            .map_or(0, |s| s.hits.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Counts `n` hits of `id` at once and returns the hit number before them (their numbers
    /// are that + 1 ..= that + `n`; 0 for an unknown source): the in-guest ring drain numbers
    /// a batch of records with one atomic operation per source.
    pub fn hit_many(&self, id: SourceId, n: u64) -> u64 {
        self.get(id)
            .map_or(0, |s| s.hits.fetch_add(n, Ordering::Relaxed))
    }

    /// Counts a missed hit of `id`: one that arrived while its handler was already running.
    pub fn missed(&self, id: SourceId) {
        if let Some(s) = self.get(id) {
            s.nmissed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says how `id` is implemented now (a probe upgraded to a jump, or fallen back to int3).
    pub fn set_how(&self, id: SourceId, how: String) {
        if let Some(s) = self.get(id) {
            *s.how
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = how;
        }
    }

    /// Counts `count` events of `id` dropped: the event channel was full, or an in-guest
    /// handler's ring was.
    pub fn add_lost(&self, id: SourceId, count: u64) {
        if let Some(s) = self.get(id) {
            s.lost.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// How many sources are registered.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no source is registered.
    pub fn is_empty(&self) -> bool {
        self.next.load(Ordering::Relaxed) == 0
    }

    /// The registered sources, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        (0..self.next.load(Ordering::Relaxed))
            .filter_map(|i| self.get(SourceId(i)).map(|s| (SourceId(i), s)))
    }

    /// Total events lost over all sources.
    pub fn total_lost(&self) -> u64 {
        self.iter().map(|(_, s)| s.lost()).sum()
    }
}
