//! The kernel's own embedded symbol tables (kallsyms), found by content in a decompressed
//! kernel image or in a buffer read from guest memory.
//!
//! With CONFIG_KALLSYMS_BASE_RELATIVE (every x86_64 kernel since 4.6), `scripts/kallsyms.c`
//! emits into `.rodata`, each array 8-aligned, in this order for Linux 6.1:
//!
//! | array | contents |
//! |---|---|
//! | `kallsyms_offsets` | one 32-bit offset per symbol, in address order |
//! | `kallsyms_relative_base` | u64 |
//! | `kallsyms_num_syms` | u32 |
//! | `kallsyms_names` | per symbol: length (1 or 2 bytes), token numbers; first char = type |
//! | `kallsyms_markers` | u32 offset into the names every 256 symbols |
//! | `kallsyms_seqs_of_names` | 3 bytes per symbol (6.2+, and backported to Debian's 6.1) |
//! | `kallsyms_token_table` | 256 NUL-terminated tokens |
//! | `kallsyms_token_index` | 256 u16 offsets into the token table |
//!
//! (6.4+ moves offsets, relative base and seqs after the token index; both orders are read.)
//!
//! The search, as vmlinux-to-elf does it: find the token table by the digit tokens it always
//! holds and check it against the index after it (`tokens.rs`); find the markers before it
//! (`markers.rs`); find `num_syms` and the names that end at the markers and agree with every
//! marker (`names.rs`); then the offsets, whose addresses must come out sorted (`offsets.rs`).
//! Any inconsistency rejects a candidate; bad input gives a [`KallsymsError`], never a panic.

mod markers;
mod names;
mod offsets;
mod region;
mod tokens;

#[cfg(test)]
mod encode;
#[cfg(test)]
mod tests;

use super::table::{Symbol, SymbolTable};
use crate::elf::{ElfError, ElfFile};
use region::Region;

/// Why no kallsyms tables were found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KallsymsError {
    /// No token table: no run of the tokens "0" to "9".
    #[error(
        "No kallsyms token table found: the kernel was built without CONFIG_KALLSYMS, or this is not a decompressed kernel image"
    )]
    TokenTableNotFound,
    /// Digit tokens were found, but no token index agrees with them.
    #[error("No kallsyms_token_index agrees with the token table candidate at {near:#x}")]
    TokenIndexNotFound {
        /// Address of the digit tokens of the last candidate.
        near: u64,
    },
    /// A token table was found but no plausible markers precede it.
    #[error("No kallsyms_markers before the token table at {token_table:#x}")]
    MarkersNotFound {
        /// Address of the token table.
        token_table: u64,
    },
    /// Markers were found but no `num_syms` + names agree with them.
    #[error("No kallsyms_num_syms / kallsyms_names agree with the markers at {markers:#x}")]
    NamesNotFound {
        /// Address of the markers.
        markers: u64,
    },
    /// A name does not expand to a type letter and a name.
    #[error("kallsyms_names at {names:#x}: symbol {index}: {reason}")]
    NamesInconsistent {
        /// Address of the names.
        names: u64,
        /// The symbol's index.
        index: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// No offsets table gives sorted addresses.
    #[error(
        "No kallsyms_offsets / kallsyms_relative_base found for the {num_syms} symbols at {num_syms_at:#x}"
    )]
    OffsetsNotFound {
        /// The symbol count.
        num_syms: u32,
        /// Address of `kallsyms_num_syms`.
        num_syms_at: u64,
    },
    /// The image is not a readable ELF file.
    #[error("Cannot read the kernel image")]
    Elf(#[from] ElfError),
}

impl KallsymsError {
    /// How far the search got: the most advanced failure is the one worth reporting.
    fn progress(&self) -> u8 {
        match self {
            KallsymsError::Elf(_) | KallsymsError::TokenTableNotFound => 0,
            KallsymsError::TokenIndexNotFound { .. } => 1,
            KallsymsError::MarkersNotFound { .. } => 2,
            KallsymsError::NamesNotFound { .. } => 3,
            KallsymsError::OffsetsNotFound { .. } => 4,
            KallsymsError::NamesInconsistent { .. } => 5,
        }
    }

    fn most_advanced(self, other: KallsymsError) -> KallsymsError {
        if other.progress() > self.progress() {
            other
        } else {
            self
        }
    }
}

/// The virtual addresses of the tables found (for reading them again from guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KallsymsLayout {
    /// `kallsyms_offsets`.
    pub offsets: u64,
    /// `kallsyms_relative_base`.
    pub relative_base: u64,
    /// The value of `kallsyms_relative_base` (the lowest non-per-CPU symbol address).
    pub relative_base_value: u64,
    /// `kallsyms_num_syms`.
    pub num_syms: u64,
    /// `kallsyms_names`.
    pub names: u64,
    /// `kallsyms_markers`.
    pub markers: u64,
    /// `kallsyms_seqs_of_names`, when it sits between the markers and the token table.
    pub seqs_of_names: Option<u64>,
    /// `kallsyms_token_table`.
    pub token_table: u64,
    /// `kallsyms_token_index`.
    pub token_index: u64,
    /// Whether non-negative offsets are absolute (CONFIG_KALLSYMS_ABSOLUTE_PERCPU).
    pub absolute_percpu: bool,
}

/// Symbols read from kallsyms, with where the tables are.
#[derive(Debug, Clone)]
pub struct Kallsyms {
    /// The symbols (sizes unknown: kallsyms does not record them).
    pub symbols: SymbolTable,
    /// Where the tables were found.
    pub layout: KallsymsLayout,
}

/// Finds the kallsyms tables in `bytes`, whose first byte is at virtual address `base`
/// (a segment of a kernel image, or a range of guest memory read through the page tables).
pub fn find_kallsyms(bytes: &[u8], base: u64) -> Result<Kallsyms, KallsymsError> {
    let r = Region { bytes, base };
    let mut best = KallsymsError::TokenTableNotFound;
    for digits in tokens::digit_runs(&r) {
        let Some(table) = tokens::token_table_at(&r, digits) else {
            best = best.most_advanced(KallsymsError::TokenIndexNotFound { near: r.va(digits) });
            continue;
        };
        match from_token_table(&r, &table) {
            Ok(k) => return Ok(k),
            Err(e) => best = best.most_advanced(e),
        }
    }
    Err(best)
}

/// Finds the kallsyms tables in a decompressed kernel image (ELF, usually stripped), searching
/// each loadable segment at its virtual address.
pub fn find_kallsyms_in_elf(image: &[u8]) -> Result<Kallsyms, KallsymsError> {
    let elf = ElfFile::parse(image)?;
    let mut best = KallsymsError::TokenTableNotFound;
    for seg in elf.load_segments() {
        let bytes = elf.segment_bytes(seg)?;
        match find_kallsyms(bytes, seg.vaddr) {
            Ok(k) => return Ok(k),
            Err(e) => best = best.most_advanced(e),
        }
    }
    Err(best)
}

impl SymbolTable {
    /// The symbols of a decompressed kernel image's embedded kallsyms tables.
    pub fn from_kallsyms_image(image: &[u8]) -> Result<SymbolTable, KallsymsError> {
        find_kallsyms_in_elf(image).map(|k| k.symbols)
    }

    /// The symbols of kallsyms tables found in `bytes` read from virtual address `base`.
    pub fn from_kallsyms_bytes(bytes: &[u8], base: u64) -> Result<SymbolTable, KallsymsError> {
        find_kallsyms(bytes, base).map(|k| k.symbols)
    }
}

fn from_token_table(
    r: &Region<'_>,
    table: &tokens::TokenTable<'_>,
) -> Result<Kallsyms, KallsymsError> {
    let mut best = KallsymsError::MarkersNotFound {
        token_table: r.va(table.start),
    };
    for m in markers::candidates(r, table.start) {
        let Some(found) = names::find(r, &m) else {
            best = best.most_advanced(KallsymsError::NamesNotFound {
                markers: r.va(m.pos),
            });
            continue;
        };
        let Some(addrs) = offsets::find(r, found.num_syms_pos, found.count, table.index_end())
        else {
            best = best.most_advanced(KallsymsError::OffsetsNotFound {
                num_syms: found.count,
                num_syms_at: r.va(found.num_syms_pos),
            });
            continue;
        };
        let decoded = names::decode(r, &found, &table.tokens)?;
        let symbols = decoded
            .into_iter()
            .zip(&addrs.addrs)
            .map(|((kind, name), &addr)| Symbol::new(name, addr, kind))
            .collect();
        return Ok(Kallsyms {
            symbols: SymbolTable::new(symbols),
            layout: KallsymsLayout {
                offsets: r.va(addrs.offsets_pos),
                relative_base: r.va(addrs.relative_base_pos),
                relative_base_value: addrs.relative_base,
                num_syms: r.va(found.num_syms_pos),
                names: r.va(found.start),
                markers: r.va(m.pos),
                seqs_of_names: m.seqs.map(|s| r.va(s)),
                token_table: r.va(table.start),
                token_index: r.va(table.index),
                absolute_percpu: addrs.absolute_percpu,
            },
        });
    }
    Err(best)
}
