//! [`SymbolTable`]: symbols sorted by address, looked up by name or by address.

use std::cmp::Ordering;
use std::fmt;

/// Where x86_64 kernels are linked (`_text` without KASLR).
pub const X86_64_LINK_TEXT: u64 = 0xffff_ffff_8100_0000;

/// One symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name, e.g. `start_kernel`.
    pub name: String,
    /// Its address.
    pub addr: u64,
    /// Its size in bytes, when the source says (ELF symbol tables do; kallsyms do not).
    pub size: Option<u64>,
    /// The `nm` type letter: `T`/`t` text, `D`/`d` data, `R`/`r` read-only, `B`/`b` bss,
    /// `A` absolute, `W`/`V` weak; upper case is global, lower case local.
    pub kind: char,
    /// The module it belongs to (`/proc/kallsyms` `[module]` column), `None` for the kernel.
    pub module: Option<String>,
}

impl Symbol {
    /// A kernel (non-module) symbol of unknown size.
    pub fn new(name: impl Into<String>, addr: u64, kind: char) -> Self {
        Symbol {
            name: name.into(),
            addr,
            size: None,
            kind,
            module: None,
        }
    }

    /// Whether the symbol is global (upper-case type letter).
    pub fn is_global(&self) -> bool {
        self.kind.is_ascii_uppercase()
    }

    /// Whether the symbol is in a text (code) section.
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 'T' | 't')
    }

    fn is_weak(&self) -> bool {
        matches!(self.kind, 'W' | 'w' | 'V' | 'v')
    }

    fn leading_underscores(&self) -> usize {
        self.name.bytes().take_while(|&b| b == b'_').count()
    }
}

/// Among symbols at one address, which one names it: strong before weak, global before local,
/// fewer leading underscores (linker-made names) first, then by name; as the kernel does.
fn preference(a: &Symbol, b: &Symbol) -> Ordering {
    a.is_weak()
        .cmp(&b.is_weak())
        .then(b.is_global().cmp(&a.is_global()))
        .then(a.leading_underscores().cmp(&b.leading_underscores()))
        .then_with(|| a.name.cmp(&b.name))
}

/// An address described as a symbol plus an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolOffset<'a> {
    /// The nearest symbol at or below the address.
    pub symbol: &'a Symbol,
    /// How far past the symbol's start the address is.
    pub offset: u64,
}

impl fmt::Display for SymbolOffset<'_> {
    /// `name+0x10`, or `name+0x10/0x40` when the size is known, then ` [module]` if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.symbol.name, self.offset)?;
        if let Some(size) = self.symbol.size {
            write!(f, "/{size:#x}")?;
        }
        if let Some(m) = &self.symbol.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

/// Why a KASLR slide could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KaslrError {
    /// The table has no `_text`.
    #[error("The symbol table has no _text: cannot tell where the kernel was loaded")]
    NoText,
    /// `_text` is below the link address: not a KASLR slide.
    #[error(
        "_text is at {text:#x}, below the link address {link:#x}: these tables do not belong to that kernel"
    )]
    BelowLink {
        /// `_text` in the table.
        text: u64,
        /// The link address it was compared with.
        link: u64,
    },
    /// The difference is not a multiple of 2 MiB (x86_64 KASLR moves the kernel in 2 MiB steps).
    #[error("_text moved by {slide:#x}, which is not a multiple of 2 MiB: not a KASLR slide")]
    Misaligned {
        /// The difference.
        slide: u64,
    },
}

/// Symbols sorted by address, with a name index.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    /// Sorted by address, then by [`preference`].
    syms: Vec<Symbol>,
    /// Indices into `syms`, sorted by name, then preference, then address.
    by_name: Vec<usize>,
}

impl SymbolTable {
    /// A table of `symbols` (any order; duplicates are kept).
    pub fn new(mut symbols: Vec<Symbol>) -> Self {
        symbols.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| preference(a, b)));
        let mut by_name: Vec<usize> = (0..symbols.len()).collect();
        by_name.sort_by(|&a, &b| {
            let (x, y) = (&symbols[a], &symbols[b]);
            x.name
                .cmp(&y.name)
                .then_with(|| preference(x, y))
                .then(x.addr.cmp(&y.addr))
        });
        SymbolTable {
            syms: symbols,
            by_name,
        }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// Whether there are no symbols.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// All symbols, sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.syms
    }

    /// All symbols, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.syms.iter()
    }

    /// Symbols whose name contains `pattern`, in address order (`hvprobe symbols PATTERN`).
    pub fn matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = &'a Symbol> {
        self.syms.iter().filter(move |s| s.name.contains(pattern))
    }

    /// Every symbol called `name` (local names repeat), the preferred one first.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Symbol> + 'a {
        let start = self
            .by_name
            .partition_point(|&i| self.syms[i].name.as_str() < name);
        let end = self
            .by_name
            .partition_point(|&i| self.syms[i].name.as_str() <= name);
        self.by_name[start..end].iter().map(|&i| &self.syms[i])
    }

    /// The symbol called `name`: the global one if there is one, else the lowest-addressed.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.get_all(name).next()
    }

    /// The address of `name` (see [`Self::get`]).
    pub fn addr_of(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.addr)
    }

    /// The nearest symbol at or below `addr`, and the offset from it.
    ///
    /// As in the kernel, a symbol is taken to extend to the next one: no check against its
    /// size is made (the size, when known, shows in the `Display` output).
    pub fn lookup(&self, addr: u64) -> Option<SymbolOffset<'_>> {
        let after = self.syms.partition_point(|s| s.addr <= addr);
        let last = after.checked_sub(1)?;
        let at = self.syms[last].addr;
        // The preferred symbol at that address is the first of its run.
        let first = self.syms[..last].partition_point(|s| s.addr < at);
        let symbol = &self.syms[first];
        Some(SymbolOffset {
            symbol,
            offset: addr - symbol.addr,
        })
    }

    /// How far the kernel was moved from `link_text` (usually [`X86_64_LINK_TEXT`]): this
    /// table's `_text` minus the link address. A table from guest memory gives the runtime
    /// address; one from the image the link address (slide 0).
    pub fn kaslr_slide(&self, link_text: u64) -> Result<u64, KaslrError> {
        let text = self.addr_of("_text").ok_or(KaslrError::NoText)?;
        let slide = text.checked_sub(link_text).ok_or(KaslrError::BelowLink {
            text,
            link: link_text,
        })?;
        if slide % (2 << 20) != 0 {
            return Err(KaslrError::Misaligned { slide });
        }
        Ok(slide)
    }

    /// This table with the kernel's symbols moved by `slide` (see [`Self::kaslr_slide`]).
    /// Symbols below `_text` (per-CPU offsets, absolute values) do not move.
    pub fn slid(&self, slide: u64) -> SymbolTable {
        let text = self.addr_of("_text").unwrap_or(0);
        let moved = self
            .syms
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if s.addr >= text && s.module.is_none() {
                    s.addr = s.addr.wrapping_add(slide);
                }
                s
            })
            .collect();
        SymbolTable::new(moved)
    }
}

impl FromIterator<Symbol> for SymbolTable {
    fn from_iter<I: IntoIterator<Item = Symbol>>(iter: I) -> Self {
        SymbolTable::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SymbolTable {
        let mut sized = Symbol::new("sized", 0x3000, 'T');
        sized.size = Some(0x40);
        SymbolTable::new(vec![
            Symbol::new("b_local", 0x2000, 't'),
            Symbol::new("startup_64", X86_64_LINK_TEXT, 'T'),
            Symbol::new("_text", X86_64_LINK_TEXT, 'T'),
            Symbol::new("a_func", 0x1000, 'T'),
            Symbol::new("b_global", 0x2000, 'T'),
            Symbol::new("dup", 0x5000, 't'),
            Symbol::new("dup", 0x4000, 't'),
            Symbol::new("dup", 0x6000, 'T'),
            Symbol::new("fixed_percpu_data", 0, 'A'),
            sized,
        ])
    }

    #[test]
    fn name_lookup_prefers_global() {
        let t = table();
        assert_eq!(t.len(), 10);
        assert_eq!(t.addr_of("a_func"), Some(0x1000));
        assert_eq!(t.addr_of("dup"), Some(0x6000));
        assert_eq!(t.get_all("dup").count(), 3);
        assert_eq!(t.addr_of("nope"), None);
        assert_eq!(t.get_all("nope").count(), 0);
    }

    #[test]
    fn address_lookup_finds_nearest_preceding() {
        let t = table();
        let s = t.lookup(0x1010).unwrap();
        assert_eq!((s.symbol.name.as_str(), s.offset), ("a_func", 0x10));
        assert_eq!(s.to_string(), "a_func+0x10");
        // Two symbols at one address: the global one names it.
        assert_eq!(t.lookup(0x2004).unwrap().symbol.name, "b_global");
        // Linker-style underscore names lose to real ones.
        assert_eq!(
            t.lookup(X86_64_LINK_TEXT).unwrap().symbol.name,
            "startup_64"
        );
        assert_eq!(t.lookup(0x3008).unwrap().to_string(), "sized+0x8/0x40");
        assert_eq!(t.lookup(0).unwrap().symbol.name, "fixed_percpu_data");
        assert!(SymbolTable::default().lookup(5).is_none());
        let mut m = Symbol::new("mod_fn", 0x10, 't');
        m.module = Some("virtio".into());
        let t2 = SymbolTable::new(vec![m]);
        assert_eq!(t2.lookup(0x11).unwrap().to_string(), "mod_fn+0x1 [virtio]");
        assert!(t2.lookup(0xf).is_none());
    }

    #[test]
    fn kaslr_slide_and_slid_table() {
        let t = table();
        assert_eq!(t.kaslr_slide(X86_64_LINK_TEXT), Ok(0));
        let moved = t.slid(0x1e00_0000);
        assert_eq!(moved.addr_of("_text"), Some(X86_64_LINK_TEXT + 0x1e00_0000));
        assert_eq!(moved.addr_of("a_func"), Some(0x1000));
        assert_eq!(moved.kaslr_slide(X86_64_LINK_TEXT), Ok(0x1e00_0000));
        assert_eq!(
            t.kaslr_slide(X86_64_LINK_TEXT + 0x20_0000),
            Err(KaslrError::BelowLink {
                text: X86_64_LINK_TEXT,
                link: X86_64_LINK_TEXT + 0x20_0000
            })
        );
        assert_eq!(
            t.slid(0x1000).kaslr_slide(X86_64_LINK_TEXT),
            Err(KaslrError::Misaligned { slide: 0x1000 })
        );
        assert_eq!(
            SymbolTable::default().kaslr_slide(X86_64_LINK_TEXT),
            Err(KaslrError::NoText)
        );
    }

    #[test]
    fn matching_filters_by_substring() {
        let names: Vec<_> = table().matching("b_").map(|s| s.name.clone()).collect();
        assert_eq!(names, ["b_global", "b_local"]);
    }
}
