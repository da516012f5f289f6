//! Symbols from an ELF file's `.symtab` (the test kernel, a vmlinux that is not stripped).

use super::table::{Symbol, SymbolTable};
use crate::elf::{ElfError, ElfFile, Reader, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, SHT_SYMTAB};

const SYM_SIZE: u64 = 24;
const SHN_UNDEF: u16 = 0;
const SHN_ABS: u16 = 0xfff1;
const STT_NOTYPE: u8 = 0;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const STB_LOCAL: u8 = 0;
const STB_WEAK: u8 = 2;

/// Why an ELF symbol table did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymtabError {
    /// The ELF structure itself is bad.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// There is no `.symtab`.
    #[error(
        "The ELF file has no symbol table (stripped): use the kernel's embedded kallsyms instead"
    )]
    NoSymtab,
    /// The symbol table's string table link is not a valid section.
    #[error("Corrupt ELF symbol table: its string table is section {0}, which does not exist")]
    BadStrtab(u32),
    /// A symbol's name runs outside the string table or is not UTF-8.
    #[error("Corrupt ELF symbol table: symbol {index} has a bad name offset {offset:#x}")]
    BadName {
        /// The symbol's index.
        index: u64,
        /// Its name offset.
        offset: u32,
    },
}

impl SymbolTable {
    /// Loads the function, object and untyped symbols of an ELF file's `.symtab`.
    pub fn from_elf(data: &[u8]) -> Result<SymbolTable, SymtabError> {
        let elf = ElfFile::parse(data)?;
        let symtab = elf
            .sections()
            .iter()
            .find(|s| s.sh_type == SHT_SYMTAB)
            .ok_or(SymtabError::NoSymtab)?;
        let strtab = usize::try_from(symtab.link)
            .ok()
            .and_then(|i| elf.sections().get(i))
            .ok_or(SymtabError::BadStrtab(symtab.link))?;
        let strings = elf.section_bytes(strtab)?;
        let table = elf.section_bytes(symtab)?;
        let r = Reader { data: table };
        let count = table.len() as u64 / SYM_SIZE;
        let mut syms = Vec::new();
        // Entry 0 is the null symbol.
        for index in 1..count {
            let at = index * SYM_SIZE;
            let name_off = r.u32(at)?;
            let info = r.u8(at + 4)?;
            let shndx = r.u16(at + 6)?;
            let value = r.u64(at + 8)?;
            let size = r.u64(at + 16)?;
            let (bind, ty) = (info >> 4, info & 0xf);
            if shndx == SHN_UNDEF || !matches!(ty, STT_NOTYPE | STT_OBJECT | STT_FUNC) {
                continue;
            }
            let name = c_str(strings, name_off).ok_or(SymtabError::BadName {
                index,
                offset: name_off,
            })?;
            if name.is_empty() {
                continue;
            }
            let kind = kind_letter(&elf, ty, bind, shndx);
            syms.push(Symbol {
                name: name.to_string(),
                addr: value,
                size: (size > 0).then_some(size),
                kind,
                module: None,
            });
        }
        Ok(SymbolTable::new(syms))
    }
}

/// The NUL-terminated UTF-8 string at `off`.
fn c_str(strings: &[u8], off: u32) -> Option<&str> {
    let rest = strings.get(usize::try_from(off).ok()?..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The `nm` letter for a symbol, from its type, binding and section.
fn kind_letter(elf: &ElfFile<'_>, ty: u8, bind: u8, shndx: u16) -> char {
    let upper = if shndx == SHN_ABS {
        'A'
    } else if bind == STB_WEAK {
        return if ty == STT_OBJECT { 'V' } else { 'W' };
    } else {
        match elf.sections().get(usize::from(shndx)) {
            _ if ty == STT_FUNC => 'T',
            Some(s) if s.flags & SHF_EXECINSTR != 0 => 'T',
            Some(s) if s.sh_type == SHT_NOBITS => 'B',
            Some(s) if s.flags & SHF_WRITE != 0 => 'D',
            Some(_) => 'R',
            None => '?',
        }
    };
    if bind == STB_LOCAL {
        upper.to_ascii_lowercase()
    } else {
        upper
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing::{TestSym, build};

    const BASE: u64 = 0xffff_ffff_8100_0000;

    fn syms() -> Vec<TestSym<'static>> {
        vec![
            TestSym {
                name: "_text",
                value: BASE,
                size: 0,
                info: 0x10,
                shndx: 1,
            },
            TestSym {
                name: "start_kernel",
                value: BASE + 0x10,
                size: 0x20,
                info: 0x12,
                shndx: 1,
            },
            TestSym {
                name: "helper",
                value: BASE + 0x30,
                size: 8,
                info: 0x02,
                shndx: 1,
            },
            TestSym {
                name: "counter",
                value: BASE + 0x100,
                size: 8,
                info: 0x11,
                shndx: 2,
            },
            TestSym {
                name: "weakfn",
                value: BASE + 0x40,
                size: 4,
                info: 0x22,
                shndx: 1,
            },
            TestSym {
                name: "undefined",
                value: 0,
                size: 0,
                info: 0x10,
                shndx: 0,
            },
            TestSym {
                name: "file.c",
                value: 0,
                size: 0,
                info: 0x04,
                shndx: 0xfff1,
            },
            TestSym {
                name: "abs_sym",
                value: 0x42,
                size: 0,
                info: 0x10,
                shndx: 0xfff1,
            },
        ]
    }

    #[test]
    fn loads_functions_objects_and_absolutes() {
        let data = build(BASE, &[0x90; 0x100], &syms());
        let t = SymbolTable::from_elf(&data).unwrap();
        assert_eq!(t.len(), 6, "{:?}", t.symbols());
        let sk = t.get("start_kernel").unwrap();
        assert_eq!((sk.addr, sk.size, sk.kind), (BASE + 0x10, Some(0x20), 'T'));
        assert_eq!(t.get("helper").unwrap().kind, 't');
        assert_eq!(t.get("counter").unwrap().kind, 'B');
        assert_eq!(t.get("weakfn").unwrap().kind, 'W');
        assert_eq!(t.get("abs_sym").unwrap().kind, 'A');
        assert_eq!(t.get("_text").unwrap().size, None);
        assert_eq!(
            t.lookup(BASE + 0x14).unwrap().to_string(),
            "start_kernel+0x4/0x20"
        );
        assert!(t.get("undefined").is_none());
    }

    #[test]
    fn stripped_and_corrupt_files() {
        let data = build(BASE, &[0; 16], &syms());
        // Make the .symtab section a PROGBITS one: the file is then "stripped".
        let elf = ElfFile::parse(&data).unwrap();
        let shoff =
            usize::try_from(u64::from_le_bytes(data[0x28..0x30].try_into().unwrap())).unwrap();
        let symtab_hdr = shoff + 3 * 64;
        assert_eq!(elf.sections()[3].sh_type, SHT_SYMTAB);
        let mut stripped = data.clone();
        stripped[symtab_hdr + 4..symtab_hdr + 8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            SymbolTable::from_elf(&stripped).unwrap_err(),
            SymtabError::NoSymtab
        );
        // A string table link to nowhere.
        let mut bad_link = data.clone();
        bad_link[symtab_hdr + 40..symtab_hdr + 44].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(
            SymbolTable::from_elf(&bad_link).unwrap_err(),
            SymtabError::BadStrtab(99)
        );
        // Every truncation fails cleanly.
        for len in (0..data.len()).step_by(7) {
            let _ = SymbolTable::from_elf(&data[..len]);
        }
        assert_eq!(
            SymbolTable::from_elf(b"not an elf").unwrap_err(),
            SymtabError::Elf(ElfError::NotElf)
        );
    }

    /// Regenerates the seeds of the `elf_symtab` fuzz target's regression corpus (fuzzer finds
    /// next to them are left alone):
    /// `cargo test -p introspect --lib elf_symtab::tests::write_regression_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/regressions/elf_symtab/seed-*"]
    fn write_regression_seeds() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/elf_symtab");
        std::fs::create_dir_all(&dir).unwrap();
        let good = build(BASE, &[0x90; 0x40], &syms());
        let shoff =
            usize::try_from(u64::from_le_bytes(good[0x28..0x30].try_into().unwrap())).unwrap();
        let symtab_hdr = shoff + 3 * 64;
        let patched = |at: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        let symtab_off = usize::try_from(u64::from_le_bytes(
            good[symtab_hdr + 24..symtab_hdr + 32].try_into().unwrap(),
        ))
        .unwrap();
        let seeds = [
            ("seed-good-kernel-like", good.clone()),
            (
                "seed-bad-stripped",
                patched(symtab_hdr + 4, &1u32.to_le_bytes()),
            ),
            (
                "seed-bad-strtab-link",
                patched(symtab_hdr + 40, &99u32.to_le_bytes()),
            ),
            (
                "seed-bad-name-offset",
                patched(symtab_off + 24, &0xffff_fff0u32.to_le_bytes()),
            ),
            (
                "seed-bad-symtab-past-end",
                patched(symtab_hdr + 32, &0xffff_0000u64.to_le_bytes()),
            ),
            (
                "seed-bad-section-headers-past-end",
                patched(0x28, &0xffff_ff00u64.to_le_bytes()),
            ),
            ("seed-bad-truncated", good[..good.len() / 2].to_vec()),
        ];
        for (name, bytes) in seeds {
            let r = SymbolTable::from_elf(&bytes);
            assert_eq!(
                r.as_ref().is_ok_and(|t| !t.is_empty()),
                name.starts_with("seed-good-"),
                "{name}: {r:?}"
            );
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
