//! The slot manager: which request holds which of DR0-DR3.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc;

use super::dr7::{DR7_FIXED_1, decode_dr6, dr7_slot_bits};
use super::{BreakpointId, HwbpError, Request};
use crate::target::{GuestDebug, Target, TargetError, VcpuAccess};

/// Number of debug register slots (DR0-DR3).
pub const SLOTS: usize = 4;

/// Registered hardware breakpoints and the four slots they share.
///
/// Invariants: an installed breakpoint holds exactly one slot; a flexible breakpoint is either
/// installed or in the waiting line; a pinned one is always installed; no slot is free while
/// a flexible breakpoint waits.
///
/// The state is the same for every vCPU: after any change, apply [`SlotManager::debug_state`]
/// to all of them ([`SlotManager::apply_all`]).
#[derive(Debug, Clone)]
pub struct SlotManager {
    entries: BTreeMap<BreakpointId, Request>,
    slots: [Option<BreakpointId>; SLOTS],
    /// Flexible breakpoints not installed, in the order they get their turn.
    waiting: VecDeque<BreakpointId>,
    next_id: u64,
    la57: bool,
}

impl Default for SlotManager {
    fn default() -> Self {
        SlotManager::new()
    }
}

impl SlotManager {
    /// An empty manager that accepts addresses canonical under 5-level paging (every address
    /// any x86_64 guest can reach); see [`SlotManager::set_la57`].
    pub fn new() -> Self {
        SlotManager {
            entries: BTreeMap::new(),
            slots: [None; SLOTS],
            waiting: VecDeque::new(),
            next_id: 1,
            la57: true,
        }
    }

    /// Whether the guest uses 5-level paging (CR4.LA57): with `false`, addresses must be
    /// canonical in 48 bits. Applies to later requests.
    pub fn set_la57(&mut self, la57: bool) {
        self.la57 = la57;
    }

    /// Checks `req` as [`SlotManager::insert`] would, changing nothing.
    pub fn validate(&self, req: &Request) -> Result<(), HwbpError> {
        req.validate(self.la57)
    }

    /// Registers `req`. A pinned request takes a free slot or evicts a flexible breakpoint
    /// (which stays registered and waits for its turn), else fails with
    /// [`HwbpError::NoSlot`]; a flexible request takes a free slot or waits (registered, not
    /// installed) until [`SlotManager::remove`] or [`SlotManager::rotate`] gives it one.
    pub fn insert(&mut self, req: Request) -> Result<BreakpointId, HwbpError> {
        self.validate(&req)?;
        let id = BreakpointId(self.next_id);
        if req.pinned {
            let slot = self.claim_for_pinned()?;
            self.slots[slot] = Some(id);
        } else if let Some(slot) = self.free_slot() {
            self.slots[slot] = Some(id);
        } else {
            self.waiting.push_back(id);
        }
        self.next_id += 1;
        self.entries.insert(id, req);
        Ok(id)
    }

    /// Unregisters `id`, frees its slot and installs the next waiting flexible breakpoint in
    /// it, if any. Returns the removed request.
    pub fn remove(&mut self, id: BreakpointId) -> Result<Request, HwbpError> {
        let req = self.entries.remove(&id).ok_or(HwbpError::UnknownId(id))?;
        for slot in &mut self.slots {
            if *slot == Some(id) {
                *slot = None;
            }
        }
        self.waiting.retain(|&w| w != id);
        self.fill_free_slots();
        Ok(req)
    }

    /// Replaces the request of `id` in place: it keeps its id and its slot (or its place in
    /// the waiting line), with no window in which the slot is free. `new` is validated first
    /// and nothing changes on error. A waiting flexible breakpoint made pinned needs a slot as
    /// [`SlotManager::insert`] would; a pinned one made flexible stays installed until the
    /// next rotation. Returns the previous request.
    pub fn modify(&mut self, id: BreakpointId, new: Request) -> Result<Request, HwbpError> {
        if !self.entries.contains_key(&id) {
            return Err(HwbpError::UnknownId(id));
        }
        self.validate(&new)?;
        if new.pinned && self.slot_of(id).is_none() {
            let slot = self.claim_for_pinned()?;
            self.waiting.retain(|&w| w != id);
            self.slots[slot] = Some(id);
        }
        self.entries.insert(id, new).ok_or(HwbpError::UnknownId(id))
    }

    /// Gives the next group of waiting flexible breakpoints their turn, round-robin over the
    /// slots pinned breakpoints leave (perf's flexible-group rotation): the installed flexible
    /// ones go to the back of the line and the front of the line is installed. A breakpoint
    /// installed before and after keeps its slot. With `n` flexible breakpoints sharing `k`
    /// slots, each is installed for `k` out of every `n` rotations. Returns whether the
    /// installed set changed (then re-apply the debug state to every vCPU).
    pub fn rotate(&mut self) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        let old = self.slots;
        let flexible_slots: Vec<usize> = (0..SLOTS).filter(|&s| !self.is_pinned_slot(s)).collect();
        for &s in &flexible_slots {
            if let Some(id) = self.slots[s].take() {
                self.waiting.push_back(id);
            }
        }
        let group: Vec<BreakpointId> = (0..flexible_slots.len())
            .filter_map(|_| self.waiting.pop_front())
            .collect();
        let mut homeless = Vec::new();
        for id in group {
            match old.iter().position(|&o| o == Some(id)) {
                Some(s) => self.slots[s] = Some(id),
                None => homeless.push(id),
            }
        }
        for id in homeless {
            if let Some(s) = self.free_slot() {
                self.slots[s] = Some(id);
            }
        }
        self.slots != old
    }

    /// The breakpoint in each slot, DR0 first.
    pub fn installed(&self) -> [Option<BreakpointId>; SLOTS] {
        self.slots
    }

    /// The slot (0-3) `id` is installed in, if it is.
    pub fn slot_of(&self, id: BreakpointId) -> Option<u8> {
        self.slots
            .iter()
            .position(|&s| s == Some(id))
            .and_then(|s| u8::try_from(s).ok())
    }

    /// The request of `id`.
    pub fn get(&self, id: BreakpointId) -> Option<&Request> {
        self.entries.get(&id)
    }

    /// Every registered breakpoint (installed or waiting), by id.
    pub fn iter(&self) -> impl Iterator<Item = (BreakpointId, &Request)> {
        self.entries.iter().map(|(&id, req)| (id, req))
    }

    /// The flexible breakpoints waiting for a slot, next first.
    pub fn waiting(&self) -> impl Iterator<Item = BreakpointId> + '_ {
        self.waiting.iter().copied()
    }

    /// Number of registered breakpoints.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no breakpoint is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The installed breakpoint and its request in slot `slot`.
    pub(super) fn in_slot(&self, slot: u8) -> Option<(BreakpointId, &Request)> {
        let id = (*self.slots.get(usize::from(slot))?)?;
        Some((id, self.entries.get(&id)?))
    }

    /// The debug state for the installed set: `base` (single-step, int3 intercept kept) with
    /// DR0-DR3 holding the installed addresses, DR7 their local enable, R/W and LEN bits plus
    /// reserved bit 10, and `hw_breakpoints` set when any slot is used.
    pub fn debug_state(&self, base: GuestDebug) -> GuestDebug {
        let mut debug = GuestDebug {
            hw_breakpoints: false,
            dr: [0; SLOTS],
            dr7: DR7_FIXED_1,
            ..base
        };
        for slot in 0..4u8 {
            if let Some((_, req)) = self.in_slot(slot) {
                debug.dr[usize::from(slot)] = req.addr.raw();
                debug.dr7 |= dr7_slot_bits(slot, req.kind, req.len);
                debug.hw_breakpoints = true;
            }
        }
        debug
    }

    /// Applies [`SlotManager::debug_state`] to one vCPU (after its reset, or at its start).
    pub fn apply_to(&self, vcpu: &mut dyn VcpuAccess, base: GuestDebug) -> Result<(), TargetError> {
        vcpu.set_debug(&self.debug_state(base))
    }

    /// Applies [`SlotManager::debug_state`] to every vCPU through [`Target::with_vcpu`]. Every
    /// vCPU is tried; the first failure is returned.
    pub fn apply_all(&self, target: &dyn Target, base: GuestDebug) -> Result<(), TargetError> {
        let debug = self.debug_state(base);
        let mut first_err = None;
        for index in 0..target.vcpu_count() {
            let (tx, rx) = mpsc::channel();
            let result = target
                .with_vcpu(
                    index,
                    Box::new(move |vcpu: &mut dyn VcpuAccess| {
                        // The receiver outlives this call: with_vcpu returns after running it.
                        let _ = tx.send(vcpu.set_debug(&debug));
                    }),
                )
                .and_then(|()| rx.try_recv().unwrap_or(Err(TargetError::NoVcpu(index))));
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The breakpoints installed in the slots `dr6` reports as fired (B0-B3), in slot order.
    pub fn hit_breakpoints(&self, dr6: u64) -> Vec<BreakpointId> {
        decode_dr6(dr6)
            .slots
            .into_iter()
            .filter_map(|s| self.in_slot(s).map(|(id, _)| id))
            .collect()
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    fn is_pinned_slot(&self, slot: usize) -> bool {
        self.slots[slot]
            .and_then(|id| self.entries.get(&id))
            .is_some_and(|r| r.pinned)
    }

    /// A slot for a pinned request: a free one, else one taken from the flexible breakpoint in
    /// the highest slot (it goes to the front of the waiting line, having lost its turn).
    /// Changes nothing on error.
    fn claim_for_pinned(&mut self) -> Result<usize, HwbpError> {
        if let Some(s) = self.free_slot() {
            return Ok(s);
        }
        if let Some(s) = (0..SLOTS).rev().find(|&s| !self.is_pinned_slot(s)) {
            if let Some(evicted) = self.slots[s].take() {
                self.waiting.push_front(evicted);
            }
            return Ok(s);
        }
        Err(HwbpError::NoSlot {
            held_by: self
                .slots
                .iter()
                .flatten()
                .filter_map(|id| self.entries.get(id))
                .map(|r| r.owner.clone())
                .collect(),
        })
    }

    fn fill_free_slots(&mut self) {
        while let Some(s) = self.free_slot() {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            self.slots[s] = Some(id);
        }
    }
}
