//! Symbols of a kernel image on the host: the ELF symbol table when there is one (our test
//! kernel, a vmlinux with symbols), else the kernel's own embedded kallsyms tables (Debian's
//! stripped vmlinux inside its bzImage, whose System.map is a stub). A bzImage is decompressed
//! first, exactly as for booting it.

use std::fmt;

use introspect::symbols::{KallsymsError, SymbolTable, SymtabError};

use crate::loader::{self, LoadError};

/// Where a symbol table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolSource {
    /// The ELF `.symtab`.
    ElfSymtab,
    /// The kernel's embedded kallsyms tables.
    Kallsyms,
}

impl fmt::Display for SymbolSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SymbolSource::ElfSymtab => "the ELF symbol table",
            SymbolSource::Kallsyms => "the kernel's embedded kallsyms tables",
        })
    }
}

/// Why no symbols could be had.
#[derive(Debug, thiserror::Error)]
pub enum KernelSymbolsError {
    /// The image is not a kernel hvprobe can read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Neither a symbol table nor kallsyms.
    #[error(
        "No symbols found: the ELF has no symbol table ({symtab}) and no kallsyms tables ({kallsyms})"
    )]
    NoSymbols {
        /// Why the symbol table was not usable.
        symtab: SymtabError,
        /// Why kallsyms were not found.
        kallsyms: KallsymsError,
    },
}

/// The vmlinux ELF of a kernel image (a bzImage is decompressed).
pub fn kernel_elf(image: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, LoadError> {
    if image.starts_with(b"\x7fELF") {
        return Ok(std::borrow::Cow::Borrowed(image));
    }
    loader::decompress_bzimage(image).map(|(elf, _)| std::borrow::Cow::Owned(elf))
}

/// The symbols of a kernel image (ELF or bzImage).
pub fn kernel_symbols(image: &[u8]) -> Result<(SymbolTable, SymbolSource), KernelSymbolsError> {
    let elf = kernel_elf(image)?;
    match SymbolTable::from_elf(&elf) {
        Ok(t) if !t.is_empty() => Ok((t, SymbolSource::ElfSymtab)),
        Ok(_) => kallsyms(&elf, SymtabError::NoSymtab),
        Err(e) => kallsyms(&elf, e),
    }
}

fn kallsyms(
    elf: &[u8],
    symtab: SymtabError,
) -> Result<(SymbolTable, SymbolSource), KernelSymbolsError> {
    SymbolTable::from_kallsyms_image(elf)
        .map(|t| (t, SymbolSource::Kallsyms))
        .map_err(|kallsyms| KernelSymbolsError::NoSymbols { symtab, kallsyms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kernel_symbols_come_from_its_symtab() {
        let (t, src) = kernel_symbols(crate::test_kernel::TEST_KERNEL).unwrap();
        assert_eq!(src, SymbolSource::ElfSymtab);
        let s = t.get("tk_probe_target").expect("named function");
        assert!(s.is_text());
        assert_eq!(t.lookup(s.addr + 1).unwrap().offset, 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            kernel_symbols(b"nonsense"),
            Err(KernelSymbolsError::Load(_))
        ));
    }
}
