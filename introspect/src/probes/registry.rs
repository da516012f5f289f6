//! [`ProbeRegistry`]: probes by id, sites by guest-virtual and guest-physical address.
//!
//! A *site* is one probed address; several probes (handlers) at one address share it and its
//! one int3 (kprobes' aggregation). A site's handler list is an immutable shared slice,
//! replaced whole on register / unregister, so a hit clones one `Arc` under the registry lock
//! and calls the handlers without holding it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ProbeHandler;
use super::arch::Emulated;
use crate::addr::{Gpa, Gva};

/// A registered probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe #{}", self.0)
    }
}

/// A probe's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Times its handler ran.
    pub hits: u64,
    /// Hits that did not run its handler (kprobes' `nmissed`): a hit on a vCPU already in the
    /// middle of another probe's hit (re-entry). The probed instruction still ran.
    pub nmissed: u64,
    /// Hits whose probed instruction the host emulated (one exit, no single-step; see
    /// `disasm::Emulation`). Counted once per probe of the site.
    pub emulated: u64,
}

/// What [`super::ProbeEngine::probes`] reports about one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInfo {
    /// The probe.
    pub id: ProbeId,
    /// Its address.
    pub site: Gva,
    /// Whether its site's int3 is in guest memory.
    pub armed: bool,
    /// Its counters.
    pub stats: ProbeStats,
}

/// One handler and its counters.
pub(super) struct Probe {
    pub(super) id: ProbeId,
    pub(super) handler: Box<dyn ProbeHandler>,
    hits: AtomicU64,
    nmissed: AtomicU64,
    emulated: AtomicU64,
}

impl Probe {
    /// Counts a hit; returns the count including it.
    pub(super) fn hit(&self) -> u64 {
        self.hits.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts `n` hits at once (in-guest records, per drain).
    pub(super) fn hits_add(&self, n: u64) {
        self.hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a hit whose instruction the host emulated.
    pub(super) fn emulated(&self) {
        self.emulated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a missed hit.
    pub(super) fn missed(&self) {
        self.nmissed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> ProbeStats {
        ProbeStats {
            hits: self.hits.load(Ordering::Relaxed),
            nmissed: self.nmissed.load(Ordering::Relaxed),
            emulated: self.emulated.load(Ordering::Relaxed),
        }
    }
}

/// Where an armed site's int3 is and what it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Armed {
    /// The byte patched (vCPU 0's translation of the site when armed).
    pub(super) gpa: Gpa,
    /// The original byte.
    pub(super) orig: u8,
    /// How a hit completes the original instruction on the host, when it can (decided from
    /// the original bytes when the site was checked and armed).
    pub(super) emulation: Option<Emulated>,
    /// Set while the site is jump-optimized: the original bytes of the whole window the
    /// `jmp rel32` covers (byte 0 included), all at `gpa` on.
    pub(super) window: Option<Window>,
}

/// The most bytes a jump's window covers: the instruction at +4 may be 15 bytes long.
pub(super) const MAX_WINDOW: usize = disasm::JUMP_LEN - 1 + disasm::MAX_INSN_LEN;

/// The original bytes under an optimized site's jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// How many bytes the jump displaced (>= 5).
    pub(super) len: usize,
    /// The original bytes (the first `len` count).
    pub(super) orig: [u8; MAX_WINDOW],
}

impl Window {
    /// The original bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.orig[..self.len]
    }
}

/// One probed address.
pub(super) struct Site {
    /// Its handlers, in registration order.
    pub(super) probes: Arc<[Arc<Probe>]>,
    /// Set while its int3 is (logically) in guest memory.
    pub(super) armed: Option<Armed>,
    /// vCPUs executing its displaced instruction right now: the original byte is in memory
    /// until the last one re-arms.
    pub(super) stepping: u32,
}

/// Every probe and site of one [`super::ProbeEngine`].
#[derive(Default)]
pub struct ProbeRegistry {
    sites: HashMap<Gva, Site>,
    /// Armed sites by the byte they patch.
    by_gpa: BTreeMap<Gpa, Gva>,
    owners: HashMap<ProbeId, Gva>,
    /// Addresses once armed: a vCPU that hit the int3 just before it went away is re-run.
    retired: HashSet<Gva>,
    next_id: u64,
}

impl fmt::Debug for ProbeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeRegistry")
            .field("probes", &self.owners.len())
            .field("sites", &self.sites.len())
            .field("armed", &self.by_gpa.len())
            .finish()
    }
}

impl ProbeRegistry {
    /// Number of probes.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether there are no probes.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Number of armed sites.
    pub fn armed_count(&self) -> usize {
        self.by_gpa.len()
    }

    /// The probes at `site`, in registration order.
    pub fn probes_at(&self, site: Gva) -> Vec<ProbeId> {
        self.sites
            .get(&site)
            .map(|s| s.probes.iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }

    /// The address of probe `id`.
    pub fn site_of(&self, id: ProbeId) -> Option<Gva> {
        self.owners.get(&id).copied()
    }

    /// Whether `site`'s int3 is armed.
    pub fn is_armed(&self, site: Gva) -> bool {
        self.sites.get(&site).is_some_and(|s| s.armed.is_some())
    }

    /// Probe `id`'s counters.
    pub fn stats(&self, id: ProbeId) -> Option<ProbeStats> {
        self.probe(id).map(|p| p.stats())
    }

    /// Every probe, by id.
    pub fn infos(&self) -> Vec<ProbeInfo> {
        let mut v: Vec<ProbeInfo> = self
            .sites
            .iter()
            .flat_map(|(&site, s)| {
                s.probes.iter().map(move |p| ProbeInfo {
                    id: p.id,
                    site,
                    armed: s.armed.is_some(),
                    stats: p.stats(),
                })
            })
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Replaces every byte of `buf` (read from guest-physical `gpa` on) that an armed site
    /// patched with the original byte.
    pub fn recover(&self, gpa: Gpa, buf: &mut [u8]) {
        let Some(end) = gpa.raw().checked_add(buf.len() as u64) else {
            return;
        };
        // A window starting up to MAX_WINDOW - 1 bytes before `gpa` may reach into `buf`.
        let from = Gpa(gpa.raw().saturating_sub(MAX_WINDOW as u64 - 1));
        for (&at, site) in self.by_gpa.range(from..Gpa(end)) {
            let Some(a) = self.sites.get(site).and_then(|s| s.armed) else {
                continue;
            };
            let original = [a.orig];
            let bytes: &[u8] = match &a.window {
                Some(w) => w.bytes(),
                None => &original,
            };
            for (k, &b) in bytes.iter().enumerate() {
                let Some(p) = at.raw().checked_add(k as u64) else {
                    break;
                };
                if p < gpa.raw() || p >= end {
                    continue;
                }
                let off = usize::try_from(p - gpa.raw()).unwrap_or(usize::MAX);
                if let Some(slot) = buf.get_mut(off) {
                    *slot = b;
                }
            }
        }
    }

    fn probe(&self, id: ProbeId) -> Option<&Arc<Probe>> {
        let site = self.owners.get(&id)?;
        self.sites.get(site)?.probes.iter().find(|p| p.id == id)
    }

    pub(super) fn site(&self, site: Gva) -> Option<&Site> {
        self.sites.get(&site)
    }

    pub(super) fn site_mut(&mut self, site: Gva) -> Option<&mut Site> {
        self.sites.get_mut(&site)
    }

    /// Whether `site` is or was a probe address.
    pub(super) fn knows(&self, site: Gva) -> bool {
        self.sites.contains_key(&site) || self.retired.contains(&site)
    }

    /// The armed site patching `gpa`, if any.
    pub(super) fn armed_at(&self, gpa: Gpa) -> Option<Gva> {
        self.by_gpa.get(&gpa).copied()
    }

    /// Adds a probe at `site`, joining the site's other probes.
    pub(super) fn add(&mut self, site: Gva, handler: Box<dyn ProbeHandler>) -> ProbeId {
        self.next_id += 1;
        let id = ProbeId(self.next_id);
        let probe = Arc::new(Probe {
            id,
            handler,
            hits: AtomicU64::new(0),
            nmissed: AtomicU64::new(0),
            emulated: AtomicU64::new(0),
        });
        let s = self.sites.entry(site).or_insert_with(|| Site {
            probes: Arc::new([]),
            armed: None,
            stepping: 0,
        });
        s.probes = s.probes.iter().cloned().chain([probe]).collect();
        self.owners.insert(id, site);
        id
    }

    /// Removes probe `id`; drops its site when that was the last probe and the site is
    /// neither armed nor being stepped. Returns the probe's final counters.
    pub(super) fn remove(&mut self, id: ProbeId) -> Option<ProbeStats> {
        let site = self.owners.remove(&id)?;
        let s = self.sites.get_mut(&site)?;
        let stats = s.probes.iter().find(|p| p.id == id).map(|p| p.stats());
        s.probes = s.probes.iter().filter(|p| p.id != id).cloned().collect();
        self.drop_if_unused(site);
        stats
    }

    /// Drops `site` if it has no probes, is not armed and nobody steps it.
    pub(super) fn drop_if_unused(&mut self, site: Gva) {
        if self
            .sites
            .get(&site)
            .is_some_and(|s| s.probes.is_empty() && s.armed.is_none() && s.stepping == 0)
        {
            self.sites.remove(&site);
        }
    }

    /// Records `site` as armed.
    pub(super) fn set_armed(&mut self, site: Gva, armed: Armed) {
        if let Some(s) = self.sites.get_mut(&site) {
            s.armed = Some(armed);
            self.by_gpa.insert(armed.gpa, site);
        }
    }

    /// Sets or clears the jump window of armed `site`.
    pub(super) fn set_window(&mut self, site: Gva, window: Option<Window>) {
        if let Some(a) = self.sites.get_mut(&site).and_then(|s| s.armed.as_mut()) {
            a.window = window;
        }
    }

    /// Armed sites whose address is in `[from, to)`.
    pub(super) fn armed_in(&self, from: Gva, to: Gva) -> Vec<Gva> {
        self.sites
            .iter()
            .filter(|(a, s)| s.armed.is_some() && **a >= from && **a < to)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Records `site` as disarmed; returns what was armed.
    pub(super) fn set_disarmed(&mut self, site: Gva) -> Option<Armed> {
        let armed = self.sites.get_mut(&site)?.armed.take()?;
        self.by_gpa.remove(&armed.gpa);
        self.retired.insert(site);
        Some(armed)
    }
}
