//! Preparing a site for a jump while the guest runs: the checks on its function's original
//! bytes (`disasm::can_optimize`, exception-table fixups, other probes and breakpoints in the
//! window, one physical range) and its trampoline, written into a fresh slot.

use disasm::{Handler, RingSpec, TrampolineSpec, build_trampoline, jump_patch};

use super::super::arena::{SLOT_CODE, SLOT_SIZE};
use super::super::registry::{MAX_WINDOW, Window};
use super::super::{ProbeEngine, ProbeError, lock};
use super::{JumpHandler, OptState, Prepared};
use crate::addr::Gva;
use crate::paging::{self, PageWalker, PagingContext};
use crate::target::Target;

impl ProbeEngine {
    /// Whether `site` could become a jump, judged from its function's original bytes
    /// (`disasm::can_optimize`) before any arena exists. Checked again when it is optimized.
    pub fn check_jump(&self, target: &dyn Target, site: Gva) -> Result<(), ProbeError> {
        let ctx = self.paging_context(target)?;
        let (code, start) =
            self.function_code(target, &ctx, site)
                .map_err(|reason| ProbeError::CannotJump {
                    addr: site,
                    symbol: self.describe(site),
                    reason,
                })?;
        let mut opt = lock(&self.opt);
        let fixups = self.fixups(&mut opt, target, &ctx);
        disasm::can_optimize(&code, start, site.raw())
            .and_then(|info| disasm::check_fixups(&info, fixups))
            .map_err(|e| ProbeError::CannotJump {
                addr: site,
                symbol: self.describe(site),
                reason: e.to_string(),
            })
    }

    /// Checks that the 8 bytes an in-guest handler would read at `addr` are mapped now (the
    /// trampoline reads them without a fault handler).
    pub fn check_fetch(&self, target: &dyn Target, addr: Gva) -> Result<(), ProbeError> {
        let ctx = self.paging_context(target)?;
        for a in [addr, Gva(addr.raw().wrapping_add(7))] {
            paging::translate(target, &ctx, a)
                .map_err(|source| ProbeError::Translate { addr: a, source })?;
        }
        Ok(())
    }

    fn describe(&self, site: Gva) -> String {
        self.symbols()
            .and_then(|t| t.lookup(site.raw()))
            .map_or_else(|| site.to_string(), |s| s.to_string())
    }

    /// Checks `site` and writes its trampoline into a fresh slot (the guest may run: nothing
    /// jumps to a free slot). The error is the reason the site stays an int3.
    pub(super) fn prepare(
        &self,
        target: &dyn Target,
        ctx: &PagingContext,
        opt: &mut OptState,
        site: Gva,
    ) -> Result<Prepared, String> {
        let (code, func_start) = self.function_code(target, ctx, site)?;
        let info =
            disasm::can_optimize(&code, func_start, site.raw()).map_err(|e| e.to_string())?;
        disasm::check_fixups(&info, self.fixups(opt, target, ctx)).map_err(|e| e.to_string())?;
        let len = info.len;
        if len > MAX_WINDOW {
            return Err(format!("the window is {len} bytes"));
        }
        let end = Gva(site.raw() + len as u64);
        if let Some(other) = self.read_reg().armed_in(Gva(site.raw() + 1), end).first() {
            return Err(format!(
                "another probe at {other} is inside the {len}-byte window"
            ));
        }
        if let Some((a, who)) = opt
            .reserved
            .iter()
            .find(|(a, _)| *a > site.raw() && *a < end.raw())
        {
            return Err(format!("{who} at {a:#x} is inside the {len}-byte window"));
        }
        let first = paging::translate(target, ctx, site).map_err(|e| e.to_string())?;
        let last = paging::translate(target, ctx, Gva(end.raw() - 1)).map_err(|e| e.to_string())?;
        if last.gpa.raw() != first.gpa.raw() + len as u64 - 1 {
            return Err("the window crosses into a page that is not physically next".into());
        }
        let mut window = Window {
            len,
            orig: [0; MAX_WINDOW],
        };
        self.read_phys(target, first.gpa, &mut window.orig[..len])
            .map_err(|e| e.to_string())?;
        let want_handler = opt
            .wants
            .get(&site)
            .map(|w| w.handler.clone())
            .unwrap_or(JumpHandler::Exit);
        let cpu_source = opt.cpu_source;
        let module_handler = opt.module_handler;
        if matches!(want_handler, JumpHandler::Call(_)) && module_handler.is_none() {
            return Err("the guest gives no handler to call (no guest module)".into());
        }
        let arena = opt.arena.as_mut().ok_or("no arena")?;
        let layout = arena.layout.clone();
        let slot = arena
            .pool
            .alloc()
            .ok_or("every trampoline slot is in use")?;
        let tag = arena.next_tag;
        arena.next_tag = arena.next_tag.wrapping_add(1).max(1);
        let (slot_va, slot_pa) = layout.slot(slot);
        let handler = match &want_handler {
            JumpHandler::Exit => Handler::Exit {
                doorbell: layout.doorbell().0.raw(),
            },
            JumpHandler::InGuest(fetches) => Handler::InGuest(RingSpec {
                cpu: cpu_source,
                rings: layout.ring(0).0.raw(),
                ring_count: layout.ring_count,
                ring_stride: u32::try_from(layout.ring_stride).unwrap_or(u32::MAX),
                capacity: layout.ring_capacity,
                lost: layout.slot_lost(slot).0.raw(),
                fetches: fetches.clone(),
            }),
            JumpHandler::Call(arg) => Handler::Call {
                func: module_handler.unwrap_or_default(),
                arg: *arg,
                ring: RingSpec {
                    cpu: cpu_source,
                    rings: layout.ring(0).0.raw(),
                    ring_count: layout.ring_count,
                    ring_stride: u32::try_from(layout.ring_stride).unwrap_or(u32::MAX),
                    capacity: layout.ring_capacity,
                    lost: layout.slot_lost(slot).0.raw(),
                    fetches: Vec::new(),
                },
            },
        };
        let built = build_trampoline(&TrampolineSpec {
            at: slot_va.raw(),
            tag,
            site: site.raw(),
            displaced: window.bytes(),
            handler,
            max_len: SLOT_CODE,
        })
        .and_then(|t| jump_patch(site.raw(), slot_va.raw()).map(|_| t));
        let t = match built {
            Ok(t) => t,
            Err(e) => {
                arena.pool.free_unused(slot);
                return Err(e.to_string());
            }
        };
        let mut bytes = vec![0xccu8; usize::try_from(SLOT_SIZE).unwrap_or(256)];
        bytes[..t.code.len()].copy_from_slice(&t.code);
        bytes[SLOT_CODE..].fill(0);
        if let Err(e) = target.write_phys(slot_pa, &bytes) {
            arena.pool.free_unused(slot);
            return Err(e.to_string());
        }
        Ok(Prepared {
            site,
            gpa: first.gpa,
            slot,
            tag,
            window,
            kind: want_handler.kind(),
            map: t.map,
        })
    }

    /// The kernel's exception-table instructions, read from guest memory once and kept.
    fn fixups<'a>(
        &self,
        opt: &'a mut OptState,
        target: &dyn Target,
        ctx: &PagingContext,
    ) -> &'a [u64] {
        opt.fixups
            .get_or_insert_with(|| self.guest_fixups(target, ctx))
            .as_slice()
    }

    /// The kernel's exception table, read through the guest's page tables (empty without
    /// `__start___ex_table` / `__stop___ex_table` symbols, as in the test kernel).
    fn guest_fixups(&self, target: &dyn Target, ctx: &PagingContext) -> Vec<u64> {
        let Some(table) = self.symbols() else {
            return Vec::new();
        };
        let (Some(start), Some(end)) = (
            table.addr_of("__start___ex_table"),
            table.addr_of("__stop___ex_table"),
        ) else {
            return Vec::new();
        };
        let Some(len) = end
            .checked_sub(start)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= 16 << 20)
        else {
            return Vec::new();
        };
        let mut bytes = vec![0u8; len];
        let mut walker = PageWalker::new();
        match self.read_virt(&mut walker, target, ctx, Gva(start), &mut bytes) {
            Ok(()) => disasm::ex_table_insns(&bytes, start),
            Err(_) => Vec::new(),
        }
    }

    /// The function containing `site`, as its original bytes and its start.
    fn function_code(
        &self,
        target: &dyn Target,
        ctx: &PagingContext,
        site: Gva,
    ) -> Result<(Vec<u8>, u64), String> {
        let table = self
            .symbols()
            .ok_or("no symbol table: the function's bounds are unknown")?;
        let so = table
            .lookup(site.raw())
            .ok_or("no function symbol covers the address")?;
        // Symbols from kallsyms have no size: as the kernel's kallsyms_lookup_size_offset(),
        // a function ends where the next symbol at a higher address starts.
        let next = || {
            let syms = table.symbols();
            let i = syms.partition_point(|s| s.addr <= so.symbol.addr);
            syms.get(i).map(|s| s.addr - so.symbol.addr)
        };
        let size = so
            .symbol
            .size
            .filter(|&s| s > 0)
            .or_else(next)
            .ok_or_else(|| format!("the size of {} is unknown", so.symbol.name))?;
        if size > super::super::MAX_FUNCTION_SCAN {
            return Err(format!(
                "{} is larger than {:#x} bytes",
                so.symbol.name,
                super::super::MAX_FUNCTION_SCAN
            ));
        }
        let mut code = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let mut walker = PageWalker::new();
        self.read_virt(&mut walker, target, ctx, Gva(so.symbol.addr), &mut code)
            .map_err(|e| e.to_string())?;
        Ok((code, so.symbol.addr))
    }
}
