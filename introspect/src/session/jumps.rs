//! The session's side of jump-optimized probes: the guest's arena, optimizer passes from a
//! vCPU or the ticker, doorbell hits, and the in-guest rings drained into the event stream.

use super::{Decision, Introspector, decision, lock};
use crate::addr::Gva;
use crate::events::{Event, EventKind, Kind, RegSet};
use crate::probes::{ArmedAs, ProbeError, Quiesce, locate_arena};
use crate::target::{Target, VcpuAccess};
use disasm::Fetch;

/// How long the final drain waits for the event writer.
pub const FINAL_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The values of a guest module handler's record, in order (see `hvk_handler` in
/// `guest-kmod/rust/src/lib.rs`): `tgid << 32 | pid`, comm (16 bytes), the string argument's
/// first 24 bytes (little-endian, 8 a value). [`call_text`] turns them back into text.
pub const CALL_VALUES: [&str; 6] = ["pid", "comm0", "comm1", "str0", "str1", "str2"];

/// The text in `values` (little-endian bytes, up to the first NUL): a module handler record's
/// comm (`comm0`, `comm1`) or string argument (`str0`..`str2`).
pub fn call_text(values: &[u64]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Names of the values of in-guest records, for events.
fn fetch_name(f: Fetch, index: usize) -> &'static str {
    const MEM: [&str; disasm::MAX_FETCHES] = ["mem0", "mem1", "mem2", "mem3", "mem4", "mem5"];
    match f {
        Fetch::Reg(g) => g.name(),
        Fetch::Rflags => "rflags",
        Fetch::Mem(_) => MEM.get(index).copied().unwrap_or("mem"),
    }
}

impl Introspector {
    /// Updates every probe source's "how" from its site's state (int3, pending, jump, and
    /// why not a jump).
    pub fn refresh_how(&self) {
        for (site, s) in lock(&self.site_sources).iter() {
            let how = self.engine.armed_as(*site).to_string();
            for &src in &s.sources {
                self.sources().set_how(src, how.clone());
            }
        }
    }

    /// How the probe at `at` is armed now.
    pub fn armed_as(&self, at: &str) -> Option<ArmedAs> {
        let site = self.engine.resolve(at).ok()?;
        Some(self.engine.armed_as(site))
    }

    /// From vCPU `vcpu`'s thread, inside the exit where the guest reported its trampoline
    /// arena `[base, base+len)`: checks and lays it out and writes its header. The VMM then
    /// makes the doorbell page exit and calls [`Introspector::optimize_from_vcpu`].
    pub fn attach_arena(
        &self,
        target: &dyn Target,
        vcpu: &dyn VcpuAccess,
        base: u64,
        len: u64,
    ) -> Result<crate::probes::arena::ArenaLayout, ProbeError> {
        let ctx = vcpu.paging()?;
        self.engine.set_paging_if_unset(ctx);
        let layout = locate_arena(target, &ctx, Gva(base), len, target.vcpu_count())?;
        self.engine.attach_arena(target, layout.clone())?;
        Ok(layout)
    }

    /// From vCPU `vcpu`'s thread, inside the exit where the guest module reported its split
    /// arena (`code` executable, `data` writable; guest-virtual base and length each): checks
    /// it (see [`crate::probes::locate_split_arena`]: nothing over the kernel
    /// image, which comes from the symbols `_text`..`_end`), lays it out and writes its header.
    /// No pass runs here: the VMM asks the guest for a quiescence barrier first.
    pub fn attach_split_arena(
        &self,
        target: &dyn Target,
        vcpu: &dyn VcpuAccess,
        code: (u64, u64),
        data: (u64, u64),
    ) -> Result<crate::probes::arena::ArenaLayout, ProbeError> {
        let ctx = vcpu.paging()?;
        self.engine.set_paging_if_unset(ctx);
        let mut forbidden = Vec::new();
        let mut forbidden_va = Vec::new();
        let sym = |n: &str| {
            self.engine
                .symbols()
                .and_then(|t| t.resolve(n).ok())
                .map(Gva)
        };
        if let (Some(a), Some(b)) = (sym("_text"), sym("_end")) {
            forbidden_va.push((a, b));
            if let (Ok(pa), Ok(pb)) = (
                crate::paging::translate(target, &ctx, a),
                crate::paging::translate(target, &ctx, Gva(b.raw() - 1)),
            ) {
                forbidden.push((pa.gpa, crate::addr::Gpa(pb.gpa.raw() + 1)));
            }
        }
        let layout = crate::probes::locate_split_arena(
            target,
            &ctx,
            (Gva(code.0), code.1),
            (Gva(data.0), data.1),
            &forbidden,
            &forbidden_va,
            target.vcpu_count(),
        )?;
        self.engine.attach_arena(target, layout.clone())?;
        Ok(layout)
    }

    /// Checks the guest module's handler address `func` (reported with its arena `code` /
    /// `data`, guest-virtual base and length each) before trampolines call it: a mapped
    /// kernel-half address, outside both arena regions and the kernel image, within a `call
    /// rel32` of every trampoline slot. It cannot prove the address is the module's function;
    /// a module that lies can only break its own guest, as a module can anyway.
    pub fn check_module_handler(
        &self,
        target: &dyn Target,
        vcpu: &dyn VcpuAccess,
        func: u64,
        code: (u64, u64),
        data: (u64, u64),
    ) -> Result<(), String> {
        if func == 0 {
            return Err("none given".into());
        }
        if func < 0xffff_8000_0000_0000 {
            return Err("not a kernel address".into());
        }
        let inside = |(base, len): (u64, u64)| func >= base && func - base < len;
        if inside(code) || inside(data) {
            return Err("inside the arena".into());
        }
        let sym = |n: &str| self.engine.symbols().and_then(|t| t.resolve(n).ok());
        if let (Some(a), Some(b)) = (sym("_text"), sym("_end"))
            && func >= a
            && func < b
        {
            return Err("inside the kernel image".into());
        }
        let reach = (1u64 << 31) - 16;
        let far = |x: u64| func.abs_diff(x) >= reach;
        if far(code.0) || far(code.0.saturating_add(code.1)) {
            return Err("beyond +/-2 GiB of the arena's code".into());
        }
        let ctx = vcpu.paging().map_err(|e| e.to_string())?;
        crate::paging::translate(target, &ctx, Gva(func))
            .map(|_| ())
            .map_err(|e| format!("not mapped: {e}"))
    }

    /// From vCPU `vcpu`'s thread: the guest module is unloading. Every jump into the arena
    /// becomes an int3 again (reason `why` in the table), the rings are drained a last time and
    /// the arena is forgotten. Returns how many jumps were undone.
    pub fn release_arena(&self, target: &dyn Target, vcpu: &dyn VcpuAccess, why: &str) -> usize {
        let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
        let q = Quiesce::FromVcpu {
            me: vcpu.index(),
            rip,
        };
        let n = match self.engine.release_arena(target, q, why) {
            Ok(n) => n,
            Err(e) => {
                self.note(format!("releasing the trampoline arena failed: {e}"));
                0
            }
        };
        self.drain(target);
        self.engine.forget_arena();
        self.how_stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
        n
    }

    /// One optimizer pass from vCPU `vcpu`'s thread (inside an exit): the other vCPUs are
    /// paused around it.
    pub fn optimize_from_vcpu(&self, target: &dyn Target, vcpu: &dyn VcpuAccess) {
        let rip = match vcpu.regs() {
            Ok(r) => r.rip,
            Err(e) => {
                self.note(format!("cannot read vCPU {}'s RIP: {e}", vcpu.index()));
                return;
            }
        };
        let q = Quiesce::FromVcpu {
            me: vcpu.index(),
            rip,
        };
        if let Err(e) = self.engine.optimize_pending(target, q) {
            self.note(format!("jump optimization failed: {e}"));
        }
        // Not refreshed here: that takes the optimizer's lock, which a controller's pass may
        // hold while it waits for this vCPU to pause. The next tick does it.
        self.how_stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// From a controlling thread, every few milliseconds: a ring drain, and an optimizer pass
    /// when a pending site was not quiescent on the last one.
    pub fn tick(&self, target: &dyn Target) -> usize {
        if self
            .how_stale
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.refresh_how();
        }
        if self.engine.has_deferred() {
            if let Err(e) = self.engine.optimize_pending(target, Quiesce::Controller) {
                self.note(format!("jump optimization failed: {e}"));
            }
            self.refresh_how();
        }
        self.drain(target)
    }

    /// A doorbell exit (a jump-optimized probe's exit handler) on `vcpu`.
    pub fn on_doorbell(&self, vcpu: &mut dyn VcpuAccess, value: u64) -> Decision {
        match self.engine.on_doorbell(vcpu, value) {
            Some(d) => decision(d),
            None => {
                self.note(format!(
                    "doorbell write {value:#x} from vCPU {} matches no trampoline",
                    vcpu.index()
                ));
                Decision::Continue
            }
        }
    }

    /// At the end: drains until no committed record is left, waiting for the event writer to
    /// make room (at most [`FINAL_DRAIN`]; what is left then is counted as lost).
    pub(super) fn drain_all(&self, mem: &dyn Target) {
        let started = std::time::Instant::now();
        loop {
            let room = self.sink.room(Kind::Probe);
            let n = self.drain(mem);
            if n == 0 && room > 0 {
                return;
            }
            if started.elapsed() > FINAL_DRAIN {
                self.note(format!(
                    "the event writer fell behind: in-guest records left in the rings after {FINAL_DRAIN:?}"
                ));
                return;
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Moves every committed in-guest record into the event stream (and ring-full losses into
    /// the sources' lost counts and lost records). Returns how many records it took.
    ///
    /// Events are built without allocating (a register template per site, made once per
    /// drain; the site's symbol shared) and handed to the hub in batches, moved, not copied.
    /// Per record there is no lock, map lookup or atomic operation: the site of a run of
    /// records with one tag is looked up once, hits are counted per site and drain, and hit
    /// numbers are taken per source and batch ([`crate::events::Sources::hit_many`]).
    pub fn drain(&self, mem: &dyn Target) -> usize {
        /// Events handed to the hub at once.
        const BATCH: usize = 4096;
        let sites = lock(&self.site_sources);
        // Per site: its register names (rip, tsc, the fetched values), values filled per
        // record.
        let templates: std::collections::HashMap<Gva, RegSet> = sites
            .iter()
            .map(|(&site, s)| {
                let mut regs = RegSet::new();
                regs.push("rip", site.raw());
                regs.push("tsc", 0);
                if s.call {
                    for name in CALL_VALUES {
                        regs.push(name, 0);
                    }
                }
                for (k, f) in s.fetches.iter().enumerate() {
                    regs.push(fetch_name(*f, k), 0);
                }
                (site, regs)
            })
            .collect();
        let mut buf = lock(&self.drain_buf);
        let batch: &mut Vec<Event> = &mut buf;
        batch.clear();
        batch.reserve(BATCH);
        let now = self.sink.now_ns();
        let sources = self.sources().clone();
        // Records per site in this drain (counted on the engine's probes at the end).
        let mut per_site: Vec<(Gva, u64)> = Vec::new();
        // The site of the last record, with what its events are built from.
        let mut last: Option<(Gva, &super::SiteSources, &RegSet, usize)> = None;
        let hub = &self.sink;
        let flush = |batch: &mut Vec<Event>| {
            number_hits(&sources, batch);
            hub.emit_batch(batch);
        };
        let mut emit = |r: &crate::probes::ring::RingRecord, site: Option<Gva>| {
            let Some(site) = site else { return };
            let (s, template, k) = match last {
                Some((at, s, t, k)) if at == site => (s, t, k),
                _ => {
                    let (Some(s), Some(t)) = (sites.get(&site), templates.get(&site)) else {
                        return;
                    };
                    let k = per_site
                        .iter()
                        .position(|(at, _)| *at == site)
                        .unwrap_or_else(|| {
                            per_site.push((site, 0));
                            per_site.len() - 1
                        });
                    last = Some((site, s, t, k));
                    (s, t, k)
                }
            };
            per_site[k].1 += 1;
            let mut regs = *template;
            regs.set_value(1, r.tsc);
            let values = if s.call {
                CALL_VALUES.len()
            } else {
                s.fetches.len()
            };
            for (k, v) in r.values.iter().take(values).enumerate() {
                regs.set_value(k + 2, *v);
            }
            for &src in &s.sources {
                batch.push(Event {
                    time_ns: now,
                    vcpu: r.vcpu,
                    kind: EventKind::Probe,
                    source: src,
                    addr: site.raw(),
                    symbol: s.symbol.clone(),
                    regs,
                    // Numbered per batch, before it goes out.
                    hit: 0,
                });
            }
            if batch.len() >= BATCH {
                flush(batch);
            }
        };
        // Records stay in the guest's rings (262,144 per vCPU for the test kernel) until the
        // writers that must see everything have room: bursts wait there instead of being
        // dropped here. A ring that fills meanwhile counts its own losses, and room is kept
        // for the lost records that say so (one per site).
        let sources_per_record = sites.values().map(|s| s.sources.len()).max().unwrap_or(1);
        let markers: usize = sites.values().map(|s| s.sources.len()).sum();
        let room = self.sink.room(Kind::Probe).saturating_sub(markers) / sources_per_record.max(1);
        let n = match self.engine.drain_rings(mem, room, &mut emit) {
            Ok(n) => n,
            Err(e) => {
                self.note(format!("reading the in-guest probe rings failed: {e}"));
                0
            }
        };
        flush(batch);
        for (site, count) in per_site {
            self.engine.count_guest_hits(site, count);
        }
        for (site, lost) in self.engine.take_lost(mem) {
            if let Some(s) = sites.get(&site) {
                for &src in &s.sources {
                    self.sources().add_lost(src, lost);
                    let mut record = Event::lost(self.sink.now_ns(), 0, lost);
                    record.source = src;
                    record.addr = site.raw();
                    batch.push(record);
                }
            }
        }
        self.sink.emit_batch(batch);
        n
    }
}

/// Gives the events of `batch` (hit number 0) their sources' next hit numbers, in order:
/// one atomic operation per source and batch.
fn number_hits(sources: &crate::events::Sources, batch: &mut [Event]) {
    // (source, events in the batch, then the next number to give).
    let mut counts: Vec<(crate::events::SourceId, u64)> = Vec::new();
    for e in batch.iter() {
        match counts.iter_mut().find(|(s, _)| *s == e.source) {
            Some(c) => c.1 += 1,
            None => counts.push((e.source, 1)),
        }
    }
    for c in &mut counts {
        c.1 = sources.hit_many(c.0, c.1) + 1;
    }
    for e in batch.iter_mut() {
        if let Some(c) = counts.iter_mut().find(|(s, _)| *s == e.source) {
            e.hit = c.1;
            c.1 += 1;
        }
    }
}
