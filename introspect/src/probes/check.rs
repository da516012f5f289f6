//! Where a probe may not go: unknown symbols, data, code the int3 / debug path depends on,
//! and addresses that are not on an instruction boundary of their function.

use disasm::Insn;

use super::arch::{MAX_INSN_LEN, arch_can_probe};
use super::{ProbeEngine, ProbeError};
use crate::addr::Gva;
use crate::paging::{self, PageWalker, PagingContext, PhysMem, Translation};
use crate::symbols::{Symbol, SymbolTable};

/// Functions the guest's int3, debug and NMI handling runs: a probe there would trap inside
/// the trap handler (names compared without `.cold`, `.constprop.0` and similar suffixes).
pub const DENIED_FUNCTIONS: &[&str] = &[
    "asm_exc_int3",
    "exc_int3",
    "do_int3",
    "do_int3_user",
    "poke_int3_handler",
    "kprobe_int3_handler",
    "asm_exc_debug",
    "exc_debug",
    "exc_debug_kernel",
    "exc_debug_user",
    "noist_exc_debug",
    "asm_exc_nmi",
    "exc_nmi",
    "default_do_nmi",
];

/// Name prefixes of function families the int3 path depends on.
pub const DENIED_PREFIXES: &[&str] = &["text_poke", "int3_emulate_"];

/// Kernel text sections no probe may enter: (start symbol, end symbol, what runs there).
pub const DENIED_SECTIONS: &[(&str, &str, &str)] = &[
    (
        "__entry_text_start",
        "__entry_text_end",
        "entry code, which runs before the kernel can take an int3",
    ),
    (
        "__irqentry_text_start",
        "__irqentry_text_end",
        "interrupt entry code, which runs before the kernel can take an int3",
    ),
    (
        "__noinstr_text_start",
        "__noinstr_text_end",
        "noinstr code, which the kernel forbids instrumenting",
    ),
    (
        "__kprobes_text_start",
        "__kprobes_text_end",
        "the kernel's own kprobes blacklist section",
    ),
];

/// The furthest from its symbol an address may be for the boundary check (bytes decoded).
pub const MAX_FUNCTION_SCAN: u64 = 1 << 20;

/// `name` without a compiler suffix (`foo.cold`, `foo.constprop.0`, `foo.isra.0`).
fn base_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Whether the symbol's type letter says code: `T`/`t` text, `W`/`w` weak text.
fn is_text_kind(kind: char) -> bool {
    matches!(kind, 'T' | 't' | 'W' | 'w')
}

impl ProbeEngine {
    /// The address `expr` names (`name`, `name+0x10`, `0xffff...`); without a symbol table
    /// only numeric addresses resolve.
    pub fn resolve(&self, expr: &str) -> Result<Gva, ProbeError> {
        let empty = SymbolTable::default();
        let table = self.symbols.as_deref().unwrap_or(&empty);
        Ok(Gva(table.resolve(expr)?))
    }

    /// Whether a probe may go at `site`, which `ctx` translates in `mem`: the page must be
    /// executable; with a symbol table, the symbol there must be code, outside the deny-list
    /// ([`DENIED_FUNCTIONS`], [`DENIED_PREFIXES`], [`DENIED_SECTIONS`], and
    /// [`ProbeEngine::deny_function`]), and `site` must start an instruction when decoding its
    /// function's original bytes from the function's start. Returns the instruction there.
    pub fn check<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        ctx: &PagingContext,
        site: Gva,
    ) -> Result<Insn, ProbeError> {
        let t = paging::translate(mem, ctx, site)
            .map_err(|source| ProbeError::Translate { addr: site, source })?;
        self.check_translated(mem, ctx, site, &t)
    }

    pub(super) fn check_translated<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        ctx: &PagingContext,
        site: Gva,
        t: &Translation,
    ) -> Result<Insn, ProbeError> {
        if !t.executable {
            return Err(ProbeError::NotExecutable { addr: site });
        }
        let Some(table) = self.symbols.as_deref() else {
            let code = self.read_code(mem, ctx, site, site)?;
            return arch_can_probe(&code, site.raw(), site.raw()).map_err(|reason| {
                ProbeError::CannotProbe {
                    addr: site,
                    symbol: site.to_string(),
                    reason,
                }
            });
        };
        let so = table
            .lookup(site.raw())
            .ok_or(ProbeError::NoFunction { addr: site })?;
        let symbol = so.to_string();
        let func = so.symbol;
        self.check_text(table, site, func, &symbol)?;
        self.check_denied(table, site, func, &symbol)?;
        if let Some(size) = func.size.filter(|&s| s > 0 && so.offset >= s) {
            return Err(ProbeError::NotInFunction {
                addr: site,
                symbol,
                function: func.name.clone(),
                size,
            });
        }
        if so.offset > MAX_FUNCTION_SCAN {
            return Err(ProbeError::NoFunction { addr: site });
        }
        let code = self.read_code(mem, ctx, Gva(func.addr), site)?;
        arch_can_probe(&code, func.addr, site.raw()).map_err(|reason| ProbeError::CannotProbe {
            addr: site,
            symbol,
            reason,
        })
    }

    /// Refuses data: a symbol whose type is not text, or (types unknown) an address outside
    /// `_stext.._etext`.
    fn check_text(
        &self,
        table: &SymbolTable,
        site: Gva,
        func: &Symbol,
        symbol: &str,
    ) -> Result<(), ProbeError> {
        if func.kind.is_ascii_alphabetic() {
            if is_text_kind(func.kind) {
                return Ok(());
            }
            return Err(ProbeError::Data {
                addr: site,
                symbol: symbol.to_string(),
                kind: func.kind,
            });
        }
        match (table.addr_of("_stext"), table.addr_of("_etext")) {
            (Some(stext), Some(etext)) if !(stext..etext).contains(&site.raw()) => {
                Err(ProbeError::OutsideText {
                    addr: site,
                    stext,
                    etext,
                })
            }
            _ => Ok(()),
        }
    }

    /// Refuses the deny-listed sections and functions (every alias at the function's address).
    fn check_denied(
        &self,
        table: &SymbolTable,
        site: Gva,
        func: &Symbol,
        symbol: &str,
    ) -> Result<(), ProbeError> {
        let denied = |why: String| ProbeError::Denied {
            addr: site,
            symbol: symbol.to_string(),
            why,
        };
        for &(start, end, what) in DENIED_SECTIONS {
            let (Some(s), Some(e)) = (table.addr_of(start), table.addr_of(end)) else {
                continue;
            };
            if (s..e).contains(&site.raw()) {
                return Err(denied(format!("it is in {start}..{end}: {what}")));
            }
        }
        let syms = table.symbols();
        let first = syms.partition_point(|s| s.addr < func.addr);
        let aliases = syms[first..].iter().take_while(|s| s.addr == func.addr);
        for s in aliases.filter(|s| is_text_kind(s.kind) || !s.kind.is_ascii_alphabetic()) {
            let name = base_name(&s.name);
            if DENIED_FUNCTIONS.contains(&name) || self.denied.iter().any(|d| d == name) {
                return Err(denied(format!(
                    "{name} is part of the int3 / debug / NMI path (a probe there would trap inside the trap handler)"
                )));
            }
            if let Some(p) = DENIED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
                return Err(denied(format!(
                    "{p}* functions patch kernel text and handle its int3s"
                )));
            }
        }
        Ok(())
    }

    /// The original bytes from `start` to the end of the instruction at `site` (up to 15 bytes
    /// past it, fewer where the next page does not translate).
    fn read_code<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        ctx: &PagingContext,
        start: Gva,
        site: Gva,
    ) -> Result<Vec<u8>, ProbeError> {
        let view = self.recovered(mem);
        let mut walker = PageWalker::new();
        let head = usize::try_from(site.raw() - start.raw()).unwrap_or(usize::MAX);
        let mut code = vec![0; head + MAX_INSN_LEN];
        if walker.read_virt(&view, ctx, start, &mut code).is_ok() {
            return Ok(code);
        }
        let in_page = usize::try_from(site.bytes_to_page_end())
            .unwrap_or(MAX_INSN_LEN)
            .min(MAX_INSN_LEN);
        code.truncate(head + in_page);
        walker
            .read_virt(&view, ctx, start, &mut code)
            .map_err(|source| ProbeError::Read { addr: site, source })?;
        Ok(code)
    }
}
