//! The `.BTF` section of a vmlinux ELF.

use super::BtfError;
use crate::elf::{ElfError, ElfFile};

/// Offset of `e_shstrndx` in the ELF64 header.
const E_SHSTRNDX: usize = 0x3e;

/// The bytes of the section named `.BTF`.
pub(crate) fn btf_section(data: &[u8]) -> Result<&[u8], BtfError> {
    let elf = ElfFile::parse(data)?;
    let shstrndx = data
        .get(E_SHSTRNDX..E_SHSTRNDX + 2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or(ElfError::NotElf)?;
    let Some(names) = elf.sections().get(shstrndx) else {
        return Err(BtfError::NoBtfSection);
    };
    let names = elf.section_bytes(names)?;
    for sec in elf.sections() {
        let name = usize::try_from(sec.name)
            .ok()
            .and_then(|at| names.get(at..))
            .and_then(|rest| rest.split(|&b| b == 0).next());
        if name == Some(b".BTF") {
            return Ok(elf.section_bytes(sec)?);
        }
    }
    Err(BtfError::NoBtfSection)
}
