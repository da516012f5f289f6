//! `hvprobe probe-check`: whether probes may go at sites of a kernel image, before a session.
//! Per site: its address and `symbol+offset`, whether an int3 probe may go there
//! ([`disasm::can_probe`]) and whether it may be optimized into a jump
//! ([`disasm::can_optimize`]), with the typed reason when not. Code is read from the image's
//! vmlinux ELF; a function extends to its ELF size when known, else to the next symbol.

use std::collections::HashMap;
use std::fmt;

use disasm::{CannotOptimize, CannotProbe};
use introspect::elf::{ElfError, ElfFile};
use introspect::symbols::{ResolveError, SymbolTable};

use crate::kernel_symbols::{KernelSymbolsError, kernel_elf, kernel_symbols};
use crate::loader::LoadError;

/// Why a kernel image cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum ProbeCheckError {
    /// The image is not a kernel hvprobe can read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its vmlinux is not a readable ELF.
    #[error("The kernel's vmlinux is not a readable ELF")]
    Elf(#[source] ElfError),
    /// It has no symbols.
    #[error(transparent)]
    Symbols(#[from] KernelSymbolsError),
}

/// Why a site is not in code hvprobe can analyse (it resolved to an address, though).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCode {
    /// No text symbol at or below the address.
    #[error("{addr:#x} is not in a known function")]
    NotInFunction {
        /// The address.
        addr: u64,
    },
    /// The function's bytes are not in the image's file (a `.bss`-like or init-freed area).
    #[error("the bytes of {function} ({start:#x}..{end:#x}) are not in the image")]
    NotInImage {
        /// The function.
        function: String,
        /// Its first address.
        start: u64,
        /// The address just past it.
        end: u64,
    },
}

/// What was found at one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteReport {
    /// The address.
    pub addr: u64,
    /// `symbol+0xoff` (the nearest symbol at or below), if any.
    pub location: Option<String>,
    /// Whether an int3 probe may go there.
    pub probe: Result<(), ProbeRefusal>,
    /// Whether it may be optimized, and how many instructions a jump displaces.
    pub optimize: Result<usize, OptimizeRefusal>,
}

/// Why no int3 probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeRefusal {
    /// No code to analyse.
    #[error(transparent)]
    NoCode(#[from] NoCode),
    /// The analysis refused.
    #[error(transparent)]
    Refused(#[from] CannotProbe),
}

/// Why no jump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptimizeRefusal {
    /// Not probe-able in the first place.
    #[error("not probe-able")]
    NotProbeable,
    /// The analysis refused.
    #[error(transparent)]
    Refused(CannotOptimize),
}

impl fmt::Display for SiteReport {
    /// `start_kernel+0x0  0xffffffff83079e46  probe: yes  optimize: no (...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location.as_deref().unwrap_or("?");
        write!(f, "{location}  {:#x}  probe: ", self.addr)?;
        match &self.probe {
            Ok(()) => f.write_str("yes")?,
            Err(e) => write!(f, "no ({e})")?,
        }
        f.write_str("  optimize: ")?;
        match &self.optimize {
            Ok(1) => f.write_str("yes (displaces 1 instruction)"),
            Ok(n) => write!(f, "yes (displaces {n} instructions)"),
            Err(e) => write!(f, "no ({e})"),
        }
    }
}

/// How many functions' entries can be probed and optimized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryStats {
    /// Text functions with a size (or a following symbol) and bytes in the image.
    pub functions: usize,
    /// How many of them were checked (every `n`-th).
    pub checked: usize,
    /// Entries where an int3 probe may go.
    pub probeable: usize,
    /// Entries that may be optimized.
    pub optimizable: usize,
    /// Refusals to optimize by [`CannotOptimize::category`], most frequent first.
    pub refusals: Vec<(&'static str, usize)>,
    /// Entries starting with `call __fentry__` (ftrace's call site, which the kernel
    /// rewrites to a 5-byte nop at boot).
    pub fentry_calls: usize,
    /// Entries that may be optimized once their `call __fentry__` is that nop.
    pub optimizable_fentry_nopped: usize,
}

/// A kernel image's code and symbols, ready to answer about sites.
pub struct ProbeChecker {
    elf: Vec<u8>,
    symbols: SymbolTable,
    /// Instructions with exception-table fixups (Linux's `__ex_table`), sorted.
    fixups: Vec<u64>,
}

impl ProbeChecker {
    /// Reads a kernel image (ELF or bzImage).
    pub fn new(image: &[u8]) -> Result<ProbeChecker, ProbeCheckError> {
        let elf = kernel_elf(image)?.into_owned();
        ElfFile::parse(&elf).map_err(ProbeCheckError::Elf)?;
        let (symbols, _) = kernel_symbols(&elf)?;
        let fixups = match (
            symbols.addr_of("__start___ex_table"),
            symbols.addr_of("__stop___ex_table"),
        ) {
            (Some(start), Some(end)) if end > start => ElfFile::parse(&elf)
                .ok()
                .and_then(|f| read(&f, start, end).map(|t| disasm::ex_table_insns(t, start)))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(ProbeChecker {
            elf,
            symbols,
            fixups,
        })
    }

    /// Addresses of the instructions with exception-table fixups (sorted; empty when the
    /// image has no `__ex_table`).
    pub fn fixups(&self) -> &[u64] {
        &self.fixups
    }

    /// The image's symbols.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// Checks a `SYM`, `SYM+OFF` or `0xADDR` site.
    pub fn check(&self, site: &str) -> Result<SiteReport, ResolveError> {
        let addr = self.symbols.resolve(site)?;
        Ok(self.check_addr(addr))
    }

    /// Checks an address.
    pub fn check_addr(&self, addr: u64) -> SiteReport {
        let location = self
            .symbols
            .lookup(addr)
            .map(|s| format!("{}+{:#x}", s.symbol.name, s.offset));
        let (probe, optimize) = match self.elf().and_then(|elf| self.function_code(&elf, addr)) {
            Err(e) => (Err(e.into()), Err(OptimizeRefusal::NotProbeable)),
            Ok((start, code)) => verdict(code, start, addr, &self.fixups),
        };
        SiteReport {
            addr,
            location,
            probe,
            optimize,
        }
    }

    /// Checks the entries of every `every`-th text function (1: all) with bytes in the image.
    pub fn entry_stats(&self, every: usize) -> EntryStats {
        let mut stats = EntryStats::default();
        let Ok(elf) = self.elf() else {
            return stats;
        };
        let mut refusals: HashMap<&'static str, usize> = HashMap::new();
        let fentry = self.symbols.addr_of("__fentry__");
        let syms = self.symbols.symbols();
        for (i, s) in syms.iter().enumerate() {
            if !s.is_text() || syms[..i].last().is_some_and(|p| p.addr == s.addr) {
                continue;
            }
            let Some(end) = self.function_end(i) else {
                continue;
            };
            let Some(code) = read(&elf, s.addr, end) else {
                continue;
            };
            stats.functions += 1;
            if (stats.functions - 1) % every.max(1) != 0 {
                continue;
            }
            stats.checked += 1;
            match disasm::can_optimize(code, s.addr, s.addr) {
                Ok(_) => {
                    stats.probeable += 1;
                    stats.optimizable += 1;
                }
                Err(e) => {
                    if !matches!(e, CannotOptimize::Probe(_)) {
                        stats.probeable += 1;
                    }
                    *refusals.entry(e.category()).or_default() += 1;
                }
            }
            let calls_fentry = disasm::decode(code, s.addr).is_ok_and(|i| {
                i.len == FENTRY_NOP.len()
                    && matches!(i.kind, disasm::InsnKind::RelCall { target } if Some(target) == fentry)
            });
            if calls_fentry {
                stats.fentry_calls += 1;
                let mut nopped = code.to_vec();
                nopped[..FENTRY_NOP.len()].copy_from_slice(&FENTRY_NOP);
                if disasm::can_optimize(&nopped, s.addr, s.addr).is_ok() {
                    stats.optimizable_fentry_nopped += 1;
                }
            }
        }
        stats.refusals = refusals.into_iter().collect();
        stats
            .refusals
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        stats
    }

    fn elf(&self) -> Result<ElfFile<'_>, NoCode> {
        // Parsed once in `new`: this cannot fail.
        ElfFile::parse(&self.elf).map_err(|_| NoCode::NotInFunction { addr: 0 })
    }

    /// The function containing `addr`: its start and its bytes.
    fn function_code<'a>(&self, elf: &ElfFile<'a>, addr: u64) -> Result<(u64, &'a [u8]), NoCode> {
        let syms = self.symbols.symbols();
        let after = syms.partition_point(|s| s.addr <= addr);
        let i = (0..after)
            .rev()
            .find(|&i| syms[i].is_text())
            .ok_or(NoCode::NotInFunction { addr })?;
        let start = syms[i].addr;
        let end = self
            .function_end(i)
            .filter(|&end| addr < end)
            .ok_or(NoCode::NotInFunction { addr })?;
        let code = read(elf, start, end).ok_or_else(|| NoCode::NotInImage {
            function: syms[i].name.clone(),
            start,
            end,
        })?;
        Ok((start, code))
    }

    /// The end of the function of symbol `i`: its size when known, else the next symbol.
    fn function_end(&self, i: usize) -> Option<u64> {
        let syms = self.symbols.symbols();
        let s = &syms[i];
        if let Some(size) = s.size.filter(|&n| n > 0) {
            return s.addr.checked_add(size);
        }
        syms[i..].iter().map(|n| n.addr).find(|&a| a > s.addr)
    }
}

/// The 5-byte nop the kernel writes over `call __fentry__` at boot (`nopl 0x0(%rax,%rax,1)`).
const FENTRY_NOP: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

fn read<'a>(elf: &ElfFile<'a>, start: u64, end: u64) -> Option<&'a [u8]> {
    elf.read_vaddr(start, usize::try_from(end - start).ok()?)
}

fn verdict(
    code: &[u8],
    start: u64,
    addr: u64,
    fixups: &[u64],
) -> (Result<(), ProbeRefusal>, Result<usize, OptimizeRefusal>) {
    if let Err(e) = disasm::can_probe(code, start, addr) {
        return (Err(e.into()), Err(OptimizeRefusal::NotProbeable));
    }
    let optimize = disasm::can_optimize(code, start, addr)
        .and_then(|info| disasm::check_fixups(&info, fixups).map(|()| info.displaced.len()))
        .map_err(OptimizeRefusal::Refused);
    (Ok(()), optimize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> ProbeChecker {
        ProbeChecker::new(crate::test_kernel::TEST_KERNEL).unwrap()
    }

    #[test]
    fn test_kernel_sites() {
        let c = checker();
        let entry = c.check("tk_probe_target").unwrap();
        assert_eq!(entry.location.as_deref(), Some("tk_probe_target+0x0"));
        assert_eq!(entry.probe, Ok(()));
        let line = entry.to_string();
        assert!(line.contains("probe: yes  optimize: "), "{line}");
        assert!(matches!(
            c.check("nonexistent"),
            Err(ResolveError::UnknownSymbol(_))
        ));
        let stats = c.entry_stats(1);
        assert!(stats.checked > 10, "{stats:?}");
        assert!(stats.probeable >= stats.optimizable, "{stats:?}");
        let none = c.check_addr(0x10);
        assert!(none.probe.is_err(), "{none:?}");
    }
}
