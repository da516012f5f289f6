//! The few ELF64 (little-endian) structures hvprobe needs, parsed by hand: program headers
//! (to map virtual addresses to file bytes) and section headers (to find `.symtab`).
//!
//! Every offset and size is bounds-checked: a truncated or corrupt file gives an
//! [`ElfError`], never a panic.

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `sh_type` of a symbol table.
pub const SHT_SYMTAB: u32 = 2;
/// `sh_type` of a section with no file bytes (`.bss`).
pub const SHT_NOBITS: u32 = 8;
/// `sh_flags`: writable.
pub const SHF_WRITE: u64 = 1;
/// `sh_flags`: executable.
pub const SHF_EXECINSTR: u64 = 4;

/// Why a file is not an ELF64 file hvprobe can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The file does not start with the ELF magic.
    #[error("Not an ELF file (no \\x7fELF magic): pass an uncompressed vmlinux")]
    NotElf,
    /// The file is ELF but not 64-bit little-endian.
    #[error(
        "Unsupported ELF file (class {class}, data {data}): only 64-bit little-endian is supported"
    )]
    Unsupported {
        /// EI_CLASS (2 = 64-bit).
        class: u8,
        /// EI_DATA (1 = little-endian).
        data: u8,
    },
    /// A header or table points outside the file.
    #[error(
        "Truncated ELF file: {what} at {offset:#x}+{len:#x} is past the end ({file_len:#x} bytes)"
    )]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its file offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A table's entry size is smaller than the ELF64 structure it holds.
    #[error("Corrupt ELF file: {what} entries are {size} bytes, expected at least {min}")]
    BadEntrySize {
        /// Which table.
        what: &'static str,
        /// The size the header gives.
        size: u64,
        /// The ELF64 structure's size.
        min: u64,
    },
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_type` ([`PT_LOAD`], ...).
    pub p_type: u32,
    /// `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
    /// File offset of the segment's bytes.
    pub offset: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// Physical (load) address.
    pub paddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero-filled).
    pub memsz: u64,
}

/// One section header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Offset of the name in the section-name string table.
    pub name: u32,
    /// `sh_type` ([`SHT_SYMTAB`], ...).
    pub sh_type: u32,
    /// `sh_flags` ([`SHF_WRITE`], [`SHF_EXECINSTR`], ...).
    pub flags: u64,
    /// Virtual address when loaded.
    pub addr: u64,
    /// File offset.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// `sh_link` (for a symbol table: its string table's index).
    pub link: u32,
    /// Size of one entry, for tables.
    pub entsize: u64,
}

/// A parsed ELF64 little-endian file, borrowing its bytes.
#[derive(Debug, Clone)]
pub struct ElfFile<'a> {
    data: &'a [u8],
    segments: Vec<Segment>,
    sections: Vec<Section>,
}

impl<'a> ElfFile<'a> {
    /// Parses the ELF header, program headers and section headers.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        let r = Reader { data };
        let ident = r.bytes(0, 16, "ELF header")?;
        if ident[4] != 2 || ident[5] != 1 {
            return Err(ElfError::Unsupported {
                class: ident[4],
                data: ident[5],
            });
        }
        r.bytes(0, 64, "ELF header")?;
        let phoff = r.u64(0x20)?;
        let shoff = r.u64(0x28)?;
        let phentsize = u64::from(r.u16(0x36)?);
        let phnum = u64::from(r.u16(0x38)?);
        let shentsize = u64::from(r.u16(0x3a)?);
        let shnum = u64::from(r.u16(0x3c)?);

        let mut segments = Vec::new();
        if phnum > 0 {
            check_entsize("program header", phentsize, 56)?;
            for i in 0..phnum {
                let at = r.table_entry("program header", phoff, phentsize, i, 56)?;
                segments.push(Segment {
                    p_type: r.u32(at)?,
                    flags: r.u32(at + 4)?,
                    offset: r.u64(at + 8)?,
                    vaddr: r.u64(at + 16)?,
                    paddr: r.u64(at + 24)?,
                    filesz: r.u64(at + 32)?,
                    memsz: r.u64(at + 40)?,
                });
            }
        }
        let mut sections = Vec::new();
        if shoff != 0 && shnum > 0 {
            check_entsize("section header", shentsize, 64)?;
            for i in 0..shnum {
                let at = r.table_entry("section header", shoff, shentsize, i, 64)?;
                sections.push(Section {
                    name: r.u32(at)?,
                    sh_type: r.u32(at + 4)?,
                    flags: r.u64(at + 8)?,
                    addr: r.u64(at + 16)?,
                    offset: r.u64(at + 24)?,
                    size: r.u64(at + 32)?,
                    link: r.u32(at + 40)?,
                    entsize: r.u64(at + 56)?,
                });
            }
        }
        Ok(ElfFile {
            data,
            segments,
            sections,
        })
    }

    /// The whole file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Every program header.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The loadable segments.
    pub fn load_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.p_type == PT_LOAD)
    }

    /// Every section header.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The file bytes of a segment (its `filesz` bytes).
    pub fn segment_bytes(&self, seg: &Segment) -> Result<&'a [u8], ElfError> {
        Reader { data: self.data }.bytes(seg.offset, seg.filesz, "segment")
    }

    /// The file bytes of a section (empty for [`SHT_NOBITS`]).
    pub fn section_bytes(&self, sec: &Section) -> Result<&'a [u8], ElfError> {
        if sec.sh_type == SHT_NOBITS {
            return Ok(&[]);
        }
        Reader { data: self.data }.bytes(sec.offset, sec.size, "section")
    }

    /// The file offset holding virtual address `vaddr`, through the loadable segments.
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.load_segments().find_map(|s| {
            let off = vaddr.checked_sub(s.vaddr)?;
            (off < s.filesz)
                .then(|| s.offset.checked_add(off))
                .flatten()
        })
    }

    /// `len` bytes at virtual address `vaddr`, if they all lie in one segment's file bytes.
    pub fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<&'a [u8]> {
        self.load_segments().find_map(|s| {
            let off = vaddr.checked_sub(s.vaddr)?;
            let end = off.checked_add(len as u64)?;
            if end > s.filesz {
                return None;
            }
            let start = usize::try_from(s.offset.checked_add(off)?).ok()?;
            self.data.get(start..start.checked_add(len)?)
        })
    }
}

fn check_entsize(what: &'static str, size: u64, min: u64) -> Result<(), ElfError> {
    if size < min {
        return Err(ElfError::BadEntrySize { what, size, min });
    }
    Ok(())
}

/// Bounds-checked little-endian reads from the file.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(crate) data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn bytes(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<&'a [u8], ElfError> {
        let err = ElfError::Truncated {
            what,
            offset,
            len,
            file_len: self.data.len() as u64,
        };
        let start = usize::try_from(offset).map_err(|_| err.clone())?;
        let n = usize::try_from(len).map_err(|_| err.clone())?;
        let end = start.checked_add(n).ok_or(err.clone())?;
        self.data.get(start..end).ok_or(err)
    }

    fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N], ElfError> {
        let b = self.bytes(offset, N as u64, "ELF field")?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&self, offset: u64) -> Result<u8, ElfError> {
        self.array::<1>(offset).map(|[b]| b)
    }

    pub(crate) fn u16(&self, offset: u64) -> Result<u16, ElfError> {
        self.array(offset).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&self, offset: u64) -> Result<u32, ElfError> {
        self.array(offset).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&self, offset: u64) -> Result<u64, ElfError> {
        self.array(offset).map(u64::from_le_bytes)
    }

    /// The offset of entry `i` of a table, checking that `min` bytes of it are in the file.
    pub(crate) fn table_entry(
        &self,
        what: &'static str,
        table: u64,
        entsize: u64,
        i: u64,
        min: u64,
    ) -> Result<u64, ElfError> {
        let at = i
            .checked_mul(entsize)
            .and_then(|o| o.checked_add(table))
            .ok_or(ElfError::Truncated {
                what,
                offset: table,
                len: u64::MAX,
                file_len: self.data.len() as u64,
            })?;
        self.bytes(at, min, what)?;
        Ok(at)
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{TestSym, build};
    use super::*;

    fn sample() -> Vec<u8> {
        let syms = [TestSym {
            name: "f",
            value: 0xffff_ffff_8100_0010,
            size: 4,
            info: 0x12,
            shndx: 1,
        }];
        build(0xffff_ffff_8100_0000, b"Linux version 6.1 test", &syms)
    }

    #[test]
    fn parses_segments_and_maps_vaddrs() {
        let data = sample();
        let elf = ElfFile::parse(&data).unwrap();
        assert_eq!(elf.load_segments().count(), 1);
        assert_eq!(elf.sections().len(), 6);
        assert_eq!(elf.vaddr_to_offset(0xffff_ffff_8100_0006), Some(0x1006));
        assert_eq!(
            elf.read_vaddr(0xffff_ffff_8100_0000, 13),
            Some(&b"Linux version"[..])
        );
        // Past the file bytes of the segment, or before it.
        assert_eq!(elf.read_vaddr(0xffff_ffff_8100_0010, 100), None);
        assert_eq!(elf.vaddr_to_offset(0x1000), None);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(ElfFile::parse(b"MZ\x90\x00").unwrap_err(), ElfError::NotElf);
        assert_eq!(ElfFile::parse(b"").unwrap_err(), ElfError::NotElf);
        let mut data = sample();
        data[4] = 1;
        assert_eq!(
            ElfFile::parse(&data).unwrap_err(),
            ElfError::Unsupported { class: 1, data: 1 }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let data = sample();
        for len in 0..data.len() {
            let cut = &data[..len];
            if let Ok(elf) = ElfFile::parse(cut) {
                for s in elf.load_segments() {
                    let _ = elf.segment_bytes(s);
                }
            }
        }
        // A huge program header count pointing past the end.
        let mut bad = sample();
        bad[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            ElfFile::parse(&bad),
            Err(ElfError::Truncated { .. })
        ));
    }
}
