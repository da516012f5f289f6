//! The ELF vmlinux loader: every PT_LOAD segment goes at its `p_paddr`.
//!
//! We parse the program headers ourselves rather than call linux-loader's `Elf::load`: it
//! accepts 32-bit and non-x86 files, leaves bss unzeroed, may write some segments before
//! failing on a later one, and its errors cannot name the segment or the RAM size. Here every
//! segment is validated first, then written.

use crate::layout::HIMEM_START;
use crate::memory::{Gpa, GuestMem};

use super::LoadError;

/// ELF header size (64-bit).
const EHDR_SIZE: usize = 64;
/// Program header size (64-bit).
const PHDR_SIZE: u16 = 56;
/// `e_ident[EI_CLASS]` for 64-bit.
const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` for little-endian.
const ELFDATA2LSB: u8 = 1;
/// `e_machine` for x86_64.
const EM_X86_64: u16 = 62;
/// Loadable segment.
const PT_LOAD: u32 = 1;

/// Where a loaded ELF went.
pub(super) struct Loaded {
    /// `e_entry`.
    pub entry: Gpa,
    /// Lowest loaded byte.
    pub start: Gpa,
    /// One past the highest loaded byte (bss included).
    pub end: Gpa,
}

/// One PT_LOAD segment, validated.
struct Segment<'a> {
    paddr: u64,
    memsz: u64,
    bytes: &'a [u8],
}

/// Whether `image` starts with the ELF magic.
pub(super) fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Reads a little-endian u16 at `pos` (in bounds: checked by the caller).
fn u16_at(b: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes([b[pos], b[pos + 1]])
}

/// Reads a little-endian u32 at `pos` (in bounds: checked by the caller).
fn u32_at(b: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}

/// Reads a little-endian u64 at `pos` (in bounds: checked by the caller).
fn u64_at(b: &[u8], pos: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    u64::from_le_bytes(a)
}

/// Validates `image` as a 64-bit x86_64 ELF whose PT_LOAD segments all fit in `mem` above
/// [`HIMEM_START`], then writes them (zeroing bss).
pub(super) fn load(mem: &GuestMem, image: &[u8]) -> Result<Loaded, LoadError> {
    let len = image.len();
    if len < 6 {
        return Err(LoadError::ElfTruncated { len });
    }
    if image[4] != ELFCLASS64 {
        return Err(LoadError::ElfNot64Bit { class: image[4] });
    }
    if image[5] != ELFDATA2LSB {
        return Err(LoadError::ElfNotLittleEndian { encoding: image[5] });
    }
    if len < EHDR_SIZE {
        return Err(LoadError::ElfTruncated { len });
    }
    let machine = u16_at(image, 18);
    if machine != EM_X86_64 {
        return Err(LoadError::ElfNotX86_64 { machine });
    }
    let entry = u64_at(image, 24);
    let phoff = u64_at(image, 32);
    let phentsize = u16_at(image, 54);
    let phnum = u16_at(image, 56);
    let bad_phdrs = LoadError::ElfBadProgramHeaders {
        phoff,
        phnum,
        phentsize,
        len,
    };
    if phentsize != PHDR_SIZE {
        return Err(bad_phdrs);
    }
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|off| {
            let end = off.checked_add(usize::from(phnum) * usize::from(PHDR_SIZE))?;
            image.get(off..end)
        })
        .ok_or(bad_phdrs)?;

    let mut segments = Vec::new();
    for (index, ph) in table.chunks_exact(usize::from(PHDR_SIZE)).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(LoadError::SegmentFileSizeTooBig {
                index,
                filesz,
                memsz,
            });
        }
        let bytes = offset
            .checked_add(filesz)
            .and_then(|end| image.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
            .ok_or(LoadError::SegmentOutOfFile {
                index,
                offset,
                filesz,
                len,
            })?;
        if memsz == 0 {
            continue;
        }
        if paddr < HIMEM_START {
            return Err(LoadError::SegmentBelowHimem { index, paddr });
        }
        if !mem.contains(Gpa(paddr), memsz) {
            return Err(LoadError::SegmentOutsideRam {
                index,
                paddr,
                memsz,
                ram_size: mem.size(),
            });
        }
        segments.push(Segment {
            paddr,
            memsz,
            bytes,
        });
    }
    if segments.is_empty() {
        return Err(LoadError::ElfNoLoadSegment);
    }
    // `contains` succeeded, so `paddr + memsz` does not overflow.
    if !segments
        .iter()
        .any(|s| entry >= s.paddr && entry < s.paddr + s.memsz)
    {
        return Err(LoadError::EntryOutsideSegments { entry });
    }

    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    for s in &segments {
        mem.write(Gpa(s.paddr), s.bytes)
            .map_err(LoadError::Memory)?;
        let mut at = s.paddr + u64::try_from(s.bytes.len()).unwrap_or(u64::MAX);
        let end = s.paddr + s.memsz;
        while at < end {
            let n = usize::try_from(end - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            mem.write(Gpa(at), &ZEROS[..n]).map_err(LoadError::Memory)?;
            at += u64::try_from(n).unwrap_or(u64::MAX);
        }
    }
    let start = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let end = segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(0);
    Ok(Loaded {
        entry: Gpa(entry),
        start: Gpa(start),
        end: Gpa(end),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MEM, small_vmlinux, synthetic_elf};
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::new(MEM).unwrap()
    }

    fn err(image: &[u8]) -> LoadError {
        match load(&mem(), image) {
            Ok(_) => panic!("loaded a bad ELF"),
            Err(e) => e,
        }
    }

    #[test]
    fn header_checks() {
        let good = small_vmlinux();
        assert_eq!(err(&good[..4]), LoadError::ElfTruncated { len: 4 });
        assert_eq!(err(&good[..40]), LoadError::ElfTruncated { len: 40 });

        let mut elf32 = good.clone();
        elf32[4] = 1;
        let e = err(&elf32);
        assert_eq!(e, LoadError::ElfNot64Bit { class: 1 });
        assert!(e.to_string().contains("not 64-bit"));

        let mut be = good.clone();
        be[5] = 2;
        assert_eq!(err(&be), LoadError::ElfNotLittleEndian { encoding: 2 });

        let mut arm = good.clone();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(err(&arm), LoadError::ElfNotX86_64 { machine: 183 });

        let mut phent = good.clone();
        phent[54] = 32;
        assert!(matches!(
            err(&phent),
            LoadError::ElfBadProgramHeaders { phentsize: 32, .. }
        ));

        let mut phoff = good.clone();
        phoff[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            err(&phoff),
            LoadError::ElfBadProgramHeaders {
                phoff: u64::MAX,
                ..
            }
        ));

        let mut phnum = good.clone();
        phnum[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            err(&phnum),
            LoadError::ElfBadProgramHeaders {
                phnum: u16::MAX,
                ..
            }
        ));
    }

    #[test]
    fn segment_checks() {
        let text = [0xc3u8; 32];
        assert_eq!(
            err(&synthetic_elf(0x100_0000, &[])),
            LoadError::ElfNoLoadSegment
        );

        let mut note = synthetic_elf(0x100_0000, &[(0x100_0000, &text, 32)]);
        note[64] = 4; // PT_NOTE
        assert_eq!(err(&note), LoadError::ElfNoLoadSegment);

        let e = err(&synthetic_elf(0x1000, &[(0x1000, &text, 32)]));
        assert_eq!(
            e,
            LoadError::SegmentBelowHimem {
                index: 0,
                paddr: 0x1000
            }
        );

        let e = err(&synthetic_elf(
            0x100_0000,
            &[(0x100_0000, &text, 32), (0x1ff_0000, &text, 0x20_0000)],
        ));
        assert_eq!(
            e,
            LoadError::SegmentOutsideRam {
                index: 1,
                paddr: 0x1ff_0000,
                memsz: 0x20_0000,
                ram_size: MEM
            }
        );
        assert_eq!(
            e.to_string(),
            "ELF segment 1 (physical 0x1ff0000+0x200000) does not fit in 32 MiB of guest RAM: \
             give the guest more memory"
        );

        let wrap = synthetic_elf(u64::MAX - 8, &[(u64::MAX - 8, &text, 32)]);
        assert!(matches!(
            err(&wrap),
            LoadError::SegmentOutsideRam { index: 0, .. }
        ));

        let big = synthetic_elf(0x100_0000, &[(0x100_0000, &text, 8)]);
        assert_eq!(
            err(&big),
            LoadError::SegmentFileSizeTooBig {
                index: 0,
                filesz: 32,
                memsz: 8
            }
        );

        let mut cut = synthetic_elf(0x100_0000, &[(0x100_0000, &text, 32)]);
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            err(&cut),
            LoadError::SegmentOutOfFile {
                index: 0,
                filesz: 32,
                ..
            }
        ));

        let mut off = synthetic_elf(0x100_0000, &[(0x100_0000, &text, 32)]);
        off[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert!(matches!(
            err(&off),
            LoadError::SegmentOutOfFile { index: 0, .. }
        ));

        let entry = synthetic_elf(0x200_0000, &[(0x100_0000, &text, 32)]);
        assert_eq!(
            err(&entry),
            LoadError::EntryOutsideSegments { entry: 0x200_0000 }
        );
    }

    #[test]
    fn nothing_is_written_when_a_later_segment_is_bad() {
        let m = mem();
        let text = [0xaau8; 32];
        let elf = synthetic_elf(
            0x100_0000,
            &[(0x100_0000, &text, 32), (0x4000_0000, &text, 32)],
        );
        assert!(load(&m, &elf).is_err());
        assert_eq!(m.read_u64(Gpa(0x100_0000)).unwrap(), 0);
    }

    #[test]
    fn bss_is_zeroed_over_old_contents() {
        let m = mem();
        m.write(Gpa(0x100_0000), &[0xee; 0x3_0000]).unwrap();
        let text = [0x90u8; 16];
        let l = load(
            &m,
            &synthetic_elf(0x100_0000, &[(0x100_0000, &text, 0x2_0010)]),
        )
        .unwrap();
        assert_eq!(l.end, Gpa(0x102_0010));
        let mut b = vec![0u8; 0x2_0010];
        m.read(Gpa(0x100_0000), &mut b).unwrap();
        assert!(b[..16].iter().all(|&x| x == 0x90));
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(m.read_u64(Gpa(0x102_0010)).unwrap(), 0xeeee_eeee_eeee_eeee);
    }
}
