//! Kernel loaders: an ELF vmlinux, or an x86 bzImage whose compressed payload is decompressed
//! on the host (the guest never runs the kernel's own decompressor, which is far too slow on
//! emulated ring 0), plus the initrd.
//!
//! The format is told by content, never by file name:
//! - `7f 45 4c 46` at offset 0: an ELF vmlinux, loaded segment by segment at `p_paddr`;
//! - `HdrS` at 0x202 with boot protocol 2.08 or later: a bzImage. Its payload
//!   (`payload_offset`/`payload_length`, relative to the protected-mode code at
//!   `(setup_sects + 1) * 512`) is decompressed on the host ([`decompress_bzimage`]) into the
//!   vmlinux ELF, which is then loaded like any ELF. The image's setup header is returned for
//!   `boot_params.hdr`.
//!
//! Every malformed input gives a [`LoadError`]; nothing here panics on bad bytes (see the fuzz
//! target in `fuzz/` and its regression corpus, replayed by the unit tests).

mod bzimage;
mod decompress;
mod elf;
mod initrd;

use std::fmt;

use linux_loader::loader::bootparam::setup_header;

use crate::memory::{Gpa, GuestMem, MemoryError};

pub use bzimage::decompress_bzimage;
pub use decompress::MAX_DECOMPRESSED_SIZE;
pub use initrd::load_initrd;

/// Compression of a bzImage payload, detected from its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz with the x86 BCJ filter (`fd 37 7a 58 5a 00`).
    Xz,
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frame (`02 21 4c 18`).
    Lz4,
    /// bzip2 (`BZh`).
    Bzip2,
    /// Legacy `.lzma` / lzma_alone (`5d 00 00`).
    Lzma,
    /// LZO in an lzop container (`89 LZO 00 0d 0a 1a 0a`).
    Lzo,
}

impl Compression {
    /// The compression whose magic `bytes` start with, if any.
    pub fn detect(bytes: &[u8]) -> Option<Compression> {
        decompress::detect(bytes)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
        })
    }
}

/// What kind of image [`load_kernel`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFormat {
    /// An uncompressed ELF vmlinux.
    Elf,
    /// An x86 bzImage; its payload used `compression`.
    BzImage {
        /// Compression of the payload.
        compression: Compression,
    },
}

impl fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelFormat::Elf => f.write_str("ELF vmlinux"),
            KernelFormat::BzImage { compression } => write!(f, "bzImage ({compression})"),
        }
    }
}

/// A kernel placed in guest memory.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedKernel {
    /// 64-bit entry point (the ELF `e_entry`, a physical address).
    pub entry: Gpa,
    /// Lowest loaded byte.
    pub load_start: Gpa,
    /// One past the highest loaded byte, bss included (the initrd goes above this).
    pub load_end: Gpa,
    /// What the image was.
    pub format: KernelFormat,
    /// bzImage only: the image's setup header, to copy into `boot_params.hdr`.
    pub setup_header: Option<setup_header>,
    /// bzImage only: the kernel version string `hdr.kernel_version` points at.
    pub version: Option<String>,
}

/// Why a kernel or initrd could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The image has no bytes at all.
    #[error("Kernel image is empty: pass a vmlinux or a bzImage")]
    Empty,
    /// Neither ELF nor bzImage.
    #[error("Not a kernel image (it starts with {head}): pass an x86_64 ELF vmlinux or a bzImage")]
    NotAKernel {
        /// The first bytes, in hex.
        head: String,
    },
    /// [`decompress_bzimage`] was given something without the bzImage magic.
    #[error("Not a bzImage (it starts with {head}, and there is no \"HdrS\" at 0x202)")]
    NotABzImage {
        /// The first bytes, in hex.
        head: String,
    },
    /// The whole file is a compressed stream (a `vmlinux.gz`, say), not a kernel.
    #[error("The file is a bare {compression} stream, not a kernel: decompress it first")]
    BareCompressedStream {
        /// The stream's compression.
        compression: Compression,
    },
    /// `HdrS` is there but the setup header is cut short.
    #[error(
        "bzImage setup header is truncated: the file has {len} bytes, the header ends at 0x268"
    )]
    TruncatedSetupHeader {
        /// File size.
        len: usize,
    },
    /// The bzImage predates boot protocol 2.08 (no payload fields).
    #[error(
        "bzImage boot protocol {}.{:02} is too old: hvprobe needs 2.08 or later (Linux 2.6.26+)",
        version >> 8,
        version & 0xff
    )]
    OldBootProtocol {
        /// `hdr.version`.
        version: u16,
    },
    /// `setup_sects` puts the protected-mode code beyond the end of the file.
    #[error(
        "bzImage setup_sects ({setup_sects}) puts the kernel code beyond the end of the {len}-byte file: the image is truncated or corrupt"
    )]
    SetupBeyondFile {
        /// `hdr.setup_sects` as found (0 means 4).
        setup_sects: u8,
        /// File size.
        len: usize,
    },
    /// `payload_offset` / `payload_length` point outside the file (or the payload is empty).
    #[error(
        "bzImage payload ({length} bytes at file offset {offset:#x}) is not inside the {len}-byte file: the image is truncated or corrupt"
    )]
    PayloadOutOfBounds {
        /// Absolute file offset of the payload.
        offset: u64,
        /// `hdr.payload_length`.
        length: u32,
        /// File size.
        len: usize,
    },
    /// The payload magic is none of the seven the kernel supports.
    #[error(
        "Unknown bzImage payload compression (payload starts with {head}): hvprobe reads gzip, xz, zstd, lz4, bzip2, lzma and lzo"
    )]
    UnknownCompression {
        /// The payload's first bytes, in hex.
        head: String,
    },
    /// The compressed stream is invalid.
    #[error("Corrupt {compression} payload in the bzImage ({reason}): the image is damaged")]
    CorruptPayload {
        /// The stream's compression.
        compression: Compression,
        /// What the decompressor said.
        reason: String,
    },
    /// The compressed stream ends before its end marker.
    #[error("The {compression} payload of the bzImage ends early: the image is truncated")]
    TruncatedPayload {
        /// The stream's compression.
        compression: Compression,
    },
    /// The payload decompresses to more than [`MAX_DECOMPRESSED_SIZE`].
    #[error(
        "The {compression} payload decompresses to more than {} MiB: not a plausible kernel",
        limit >> 20
    )]
    PayloadTooLarge {
        /// The stream's compression.
        compression: Compression,
        /// The cap, in bytes.
        limit: u64,
    },
    /// The decompressed payload is not an ELF file.
    #[error("The decompressed bzImage payload is not an ELF vmlinux (it starts with {head})")]
    PayloadNotElf {
        /// The first decompressed bytes, in hex.
        head: String,
    },
    /// The ELF header is cut short.
    #[error("ELF header is truncated: the file has {len} bytes, a 64-bit ELF header needs 64")]
    ElfTruncated {
        /// File size.
        len: usize,
    },
    /// ELFCLASS32 (or garbage) instead of ELFCLASS64.
    #[error("ELF class {class} is not 64-bit: hvprobe loads x86_64 kernels only")]
    ElfNot64Bit {
        /// `e_ident[EI_CLASS]` (1 is 32-bit).
        class: u8,
    },
    /// Big-endian (or garbage) data encoding.
    #[error("ELF data encoding {encoding} is not little-endian: hvprobe loads x86_64 kernels only")]
    ElfNotLittleEndian {
        /// `e_ident[EI_DATA]` (2 is big-endian).
        encoding: u8,
    },
    /// Some other architecture.
    #[error("ELF machine {machine} is not x86_64 (62): build the kernel for x86_64")]
    ElfNotX86_64 {
        /// `e_machine`.
        machine: u16,
    },
    /// The program header table is malformed or outside the file.
    #[error(
        "ELF program header table ({phnum} entries of {phentsize} bytes at {phoff:#x}) is malformed or outside the {len}-byte file"
    )]
    ElfBadProgramHeaders {
        /// `e_phoff`.
        phoff: u64,
        /// `e_phnum`.
        phnum: u16,
        /// `e_phentsize` (must be 56).
        phentsize: u16,
        /// File size.
        len: usize,
    },
    /// Nothing to load.
    #[error("ELF has no PT_LOAD segment: not a bootable kernel")]
    ElfNoLoadSegment,
    /// A segment's file bytes lie outside the file.
    #[error(
        "ELF segment {index} ({filesz:#x} bytes at file offset {offset:#x}) is outside the {len}-byte file: the image is truncated"
    )]
    SegmentOutOfFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// File size.
        len: usize,
    },
    /// `p_filesz > p_memsz`.
    #[error("ELF segment {index} has p_filesz {filesz:#x} larger than p_memsz {memsz:#x}")]
    SegmentFileSizeTooBig {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment would overwrite the low-memory boot structures.
    #[error(
        "ELF segment {index} at physical {paddr:#x} is below {:#x}, where hvprobe keeps its boot structures: link the kernel higher",
        crate::layout::HIMEM_START
    )]
    SegmentBelowHimem {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
    },
    /// A segment does not fit in guest RAM.
    #[error(
        "ELF segment {index} (physical {paddr:#x}+{memsz:#x}) does not fit in {} MiB of guest RAM: give the guest more memory",
        ram_size >> 20
    )]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
        /// Guest RAM size in bytes.
        ram_size: u64,
    },
    /// `e_entry` is not inside any loaded segment.
    #[error("ELF entry point {entry:#x} is not inside any PT_LOAD segment (by physical address)")]
    EntryOutsideSegments {
        /// `e_entry`.
        entry: u64,
    },
    /// Writing into guest memory failed (after validation: a bug, or RAM changed under us).
    #[error("Cannot write the image into guest memory")]
    Memory(#[source] MemoryError),
    /// The initrd has no bytes.
    #[error("Initrd is empty: pass a cpio archive or leave --initrd out")]
    InitrdEmpty,
    /// The initrd does not fit between the kernel and the top of usable low RAM.
    #[error(
        "Initrd of {size} bytes does not fit: only {available} bytes are free between the kernel and the top of low RAM; give the guest more memory or use a smaller initrd"
    )]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Bytes free for it.
        available: u64,
    },
}

/// Hex dump of the first bytes of `bytes`, for error messages ("7f 45 4c 46 02 01 01 00").
fn hex_head(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing".into();
    }
    let mut s = bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if bytes.len() > 8 {
        s.push_str(" ..");
    }
    s
}

/// Detects the format of `image` and loads it into `mem`.
///
/// An ELF vmlinux is loaded at its physical addresses; a bzImage's payload is decompressed on
/// the host first and the resulting vmlinux is loaded the same way.
pub fn load_kernel(mem: &GuestMem, image: &[u8]) -> Result<LoadedKernel, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    if elf::is_elf(image) {
        let l = elf::load(mem, image)?;
        return Ok(LoadedKernel {
            entry: l.entry,
            load_start: l.start,
            load_end: l.end,
            format: KernelFormat::Elf,
            setup_header: None,
            version: None,
        });
    }
    if bzimage::is_bzimage(image) {
        let bz = bzimage::parse(image)?;
        let (vmlinux, compression) = decompress::decompress_vmlinux(bz.payload)?;
        let l = elf::load(mem, &vmlinux)?;
        return Ok(LoadedKernel {
            entry: l.entry,
            load_start: l.start,
            load_end: l.end,
            format: KernelFormat::BzImage { compression },
            setup_header: Some(bz.header),
            version: bz.version,
        });
    }
    if let Some(compression) = decompress::detect(image) {
        return Err(LoadError::BareCompressedStream { compression });
    }
    Err(LoadError::NotAKernel {
        head: hex_head(image),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;

    /// Guest RAM size the synthetic tests use.
    pub const MEM: u64 = 32 << 20;

    /// A 64-bit x86_64 ELF with one PT_LOAD per `(paddr, bytes, memsz)`.
    pub fn synthetic_elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phnum = u16::try_from(segments.len()).unwrap();
        let mut data_off = 64 + 56 * segments.len();
        let mut elf = vec![0u8; data_off];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // ELFDATA2LSB
        elf[6] = 1; // EV_CURRENT
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&entry.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&phnum.to_le_bytes());
        for (i, (paddr, bytes, memsz)) in segments.iter().enumerate() {
            let ph = 64 + 56 * i;
            let off = u64::try_from(data_off).unwrap();
            let filesz = u64::try_from(bytes.len()).unwrap();
            elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
            elf[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            elf[ph + 16..ph + 24]
                .copy_from_slice(&0xffff_ffff_8000_0000u64.wrapping_add(*paddr).to_le_bytes());
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            elf[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            elf[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
            elf.extend_from_slice(bytes);
            data_off += bytes.len();
        }
        elf
    }

    /// The small vmlinux most tests wrap: text at 16 MiB, data plus bss at 17 MiB.
    pub fn small_vmlinux() -> Vec<u8> {
        let text: Vec<u8> = (0..20_000u32)
            .map(|i| u8::try_from((i * 7 + i / 13) % 251).unwrap())
            .collect();
        let data = b"hvprobe synthetic kernel data".repeat(50);
        synthetic_elf(
            0x100_0000,
            &[(0x100_0000, &text, 0x6000), (0x110_0000, &data, 0x8000)],
        )
    }

    /// Version string the synthetic bzImages carry.
    pub const SYNTH_VERSION: &str = "6.1.0-hvprobe-synthetic (test@hvprobe) #1 SMP";

    /// A bzImage (boot protocol 2.15, setup_sects = 3) around `payload`.
    pub fn synthetic_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3u8;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = 0x100usize;
        let mut img = vec![0u8; pm_start + payload_offset];
        img[0x1f1] = setup_sects;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // string at 0x300
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x248..0x24c].copy_from_slice(&u32::try_from(payload_offset).unwrap().to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        img[0x300..0x300 + SYNTH_VERSION.len()].copy_from_slice(SYNTH_VERSION.as_bytes());
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0u8; 64]); // the bzImage trailer (CRC, padding)
        img
    }

    /// `data` compressed the way the kernel build compresses its payload, with the 4-byte
    /// uncompressed size the kernel's `size_append` adds after every format but gzip.
    pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                return e.finish().unwrap();
            }
            Compression::Xz => {
                let mut opts = xz2::stream::LzmaOptions::new_preset(6).unwrap();
                opts.dict_size(1 << 20);
                let mut filters = xz2::stream::Filters::new();
                filters.x86().lzma2(&opts);
                let s =
                    xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32)
                        .unwrap();
                let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), s);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Compression::Lz4 => {
                // Legacy frame, with small blocks so that several are exercised.
                let mut v = 0x184c_2102u32.to_le_bytes().to_vec();
                for chunk in data.chunks(8 << 10) {
                    let b = lz4_flex::block::compress(chunk);
                    v.extend_from_slice(&u32::try_from(b.len()).unwrap().to_le_bytes());
                    v.extend_from_slice(&b);
                }
                v
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzma => {
                let mut opts = xz2::stream::LzmaOptions::new_preset(6).unwrap();
                opts.dict_size(1 << 20);
                let s = xz2::stream::Stream::new_lzma_encoder(&opts).unwrap();
                let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), s);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzo => lzop(data, 8 << 10),
        };
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out
    }

    /// An lzop file (version 0x1030, method LZO1X-1, adler32 of the uncompressed data) with
    /// blocks of `block` bytes; a block that does not shrink is stored as is, like lzop does.
    pub fn lzop(data: &[u8], block: usize) -> Vec<u8> {
        let mut v = b"\x89LZO\x00\x0d\x0a\x1a\x0a".to_vec();
        v.extend_from_slice(&0x1030u16.to_be_bytes()); // version
        v.extend_from_slice(&0x2080u16.to_be_bytes()); // library version
        v.extend_from_slice(&0x0940u16.to_be_bytes()); // version needed
        v.push(1); // method LZO1X-1
        v.push(5); // level
        v.extend_from_slice(&1u32.to_be_bytes()); // flags: F_ADLER32_D
        v.extend_from_slice(&0o100644u32.to_be_bytes()); // mode
        v.extend_from_slice(&0u32.to_be_bytes()); // mtime low
        v.extend_from_slice(&0u32.to_be_bytes()); // mtime high
        v.push(0); // no file name
        v.extend_from_slice(&0u32.to_be_bytes()); // header checksum (not checked)
        for chunk in data.chunks(block) {
            let c = lzo1x::compress(chunk, lzo1x::CompressLevel::default());
            let stored = c.len() >= chunk.len();
            v.extend_from_slice(&u32::try_from(chunk.len()).unwrap().to_be_bytes());
            let body: &[u8] = if stored { chunk } else { &c };
            v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
            v.extend_from_slice(&decompress::adler32(chunk).to_be_bytes());
            v.extend_from_slice(body);
        }
        v.extend_from_slice(&0u32.to_be_bytes());
        v
    }

    pub const ALL: [Compression; 7] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Lz4,
        Compression::Bzip2,
        Compression::Lzma,
        Compression::Lzo,
    ];

    fn mem() -> GuestMem {
        GuestMem::new(MEM).unwrap()
    }

    #[test]
    fn elf_round_trip() {
        let m = mem();
        let elf = small_vmlinux();
        let k = load_kernel(&m, &elf).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, Gpa(0x100_0000));
        assert_eq!(k.load_start, Gpa(0x100_0000));
        assert_eq!(k.load_end, Gpa(0x110_8000));
        assert!(k.setup_header.is_none() && k.version.is_none());
        let mut b = [0u8; 4];
        m.read(Gpa(0x110_0000), &mut b).unwrap();
        assert_eq!(&b, b"hvpr");
    }

    #[test]
    fn bzimage_round_trip_every_compression() {
        let vmlinux = small_vmlinux();
        for c in ALL {
            let img = synthetic_bzimage(&compress(c, &vmlinux));
            let (out, found) = decompress_bzimage(&img).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(found, c);
            assert_eq!(out, vmlinux, "{c}");
            let m = mem();
            let k = load_kernel(&m, &img).unwrap();
            assert_eq!(k.format, KernelFormat::BzImage { compression: c });
            assert_eq!(k.format.to_string(), format!("bzImage ({c})"));
            assert_eq!(k.entry, Gpa(0x100_0000));
            assert_eq!(k.load_end, Gpa(0x110_8000));
            assert_eq!(k.version.as_deref(), Some(SYNTH_VERSION));
            let hdr = k.setup_header.unwrap();
            assert_eq!({ hdr.header }, 0x5372_6448);
            assert_eq!({ hdr.version }, 0x020f);
            assert_eq!({ hdr.initrd_addr_max }, 0x7fff_ffff);
            let mut b = vec![0u8; 0x6000];
            m.read(Gpa(0x100_0000), &mut b).unwrap();
            assert_eq!(&b[..20_000], &vmlinux[64 + 112..64 + 112 + 20_000]);
            assert!(b[20_000..].iter().all(|&x| x == 0), "bss is zeroed");
        }
    }

    #[test]
    fn compression_display_names() {
        let names: Vec<String> = ALL.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["gzip", "xz", "zstd", "lz4", "bzip2", "lzma", "lzo"]);
    }

    #[test]
    fn empty_and_not_a_kernel() {
        let m = mem();
        assert_eq!(load_kernel(&m, &[]).unwrap_err(), LoadError::Empty);
        let e = load_kernel(&m, b"MZ\x90\x00 this is a PE file, no HdrS").unwrap_err();
        assert_eq!(
            e,
            LoadError::NotAKernel {
                head: "4d 5a 90 00 20 74 68 69 ..".into()
            }
        );
        assert!(
            e.to_string()
                .starts_with("Not a kernel image (it starts with 4d 5a")
        );
        let gz = compress(Compression::Gzip, b"hello");
        assert_eq!(
            load_kernel(&m, &gz).unwrap_err(),
            LoadError::BareCompressedStream {
                compression: Compression::Gzip
            }
        );
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let mut img = synthetic_bzimage(&compress(Compression::Gzip, &small_vmlinux()));
        // setup_sects = 0 means four sectors: the code moves one sector up.
        img[0x1f1] = 0;
        img.splice(0x800..0x800, [0u8; 512]);
        let (_, c) = decompress_bzimage(&img).unwrap();
        assert_eq!(c, Compression::Gzip);
    }

    /// Where the bad inputs should end up; every case asserts its variant.
    #[test]
    fn bad_bzimages() {
        let m = mem();
        let good = synthetic_bzimage(&compress(Compression::Gzip, &small_vmlinux()));
        let len = good.len();

        let short = &good[..0x240];
        assert_eq!(
            load_kernel(&m, short).unwrap_err(),
            LoadError::TruncatedSetupHeader { len: 0x240 }
        );

        let mut old = good.clone();
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        let e = load_kernel(&m, &old).unwrap_err();
        assert_eq!(e, LoadError::OldBootProtocol { version: 0x0204 });
        assert!(e.to_string().contains("2.04 is too old"), "{e}");

        let mut sects = good.clone();
        sects[0x1f1] = 0xff;
        assert_eq!(
            load_kernel(&m, &sects).unwrap_err(),
            LoadError::SetupBeyondFile {
                setup_sects: 0xff,
                len
            }
        );

        let mut off = good.clone();
        off[0x248..0x24c].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            load_kernel(&m, &off).unwrap_err(),
            LoadError::PayloadOutOfBounds {
                offset: 0x1_0000_07f0,
                ..
            }
        ));

        let mut plen = good.clone();
        plen[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load_kernel(&m, &plen).unwrap_err(),
            LoadError::PayloadOutOfBounds {
                length: u32::MAX,
                ..
            }
        ));

        let mut zero = good.clone();
        zero[0x24c..0x250].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            load_kernel(&m, &zero).unwrap_err(),
            LoadError::PayloadOutOfBounds { length: 0, .. }
        ));

        let mut magic = good.clone();
        magic[0x900..0x904].copy_from_slice(b"\xde\xad\xbe\xef");
        assert_eq!(
            load_kernel(&m, &magic).unwrap_err(),
            LoadError::UnknownCompression {
                head: "de ad be ef 00 00 00 00 ..".into()
            }
        );

        let not_elf = synthetic_bzimage(&compress(Compression::Zstd, b"just some text, no ELF"));
        assert_eq!(
            load_kernel(&m, &not_elf).unwrap_err(),
            LoadError::PayloadNotElf {
                head: "6a 75 73 74 20 73 6f 6d ..".into()
            }
        );
    }

    #[test]
    fn bzimage_whose_vmlinux_does_not_fit() {
        let text = [0x90u8; 64];
        let elf = synthetic_elf(0x800_0000, &[(0x800_0000, &text, 0x1000)]);
        let img = synthetic_bzimage(&compress(Compression::Xz, &elf));
        assert_eq!(
            load_kernel(&mem(), &img).unwrap_err(),
            LoadError::SegmentOutsideRam {
                index: 0,
                paddr: 0x800_0000,
                memsz: 0x1000,
                ram_size: MEM
            }
        );
    }

    fn workspace_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every file of the committed fuzz regression corpus returns (Ok or Err) without panicking.
    #[test]
    fn fuzz_regression_corpus_replays() {
        let dir = workspace_root().join("fuzz/regressions/kernel_loader");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            files.len() >= 12,
            "corpus {} has {} files",
            dir.display(),
            files.len()
        );
        let m = mem();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let r = load_kernel(&m, &bytes);
            let _ = decompress_bzimage(&bytes);
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            println!("{name}: {:?}", r.as_ref().map(|k| k.format));
            // Seeds say in their name whether they are good; fuzzer finds can go either way.
            if name.starts_with("seed-good-") {
                assert!(r.is_ok(), "{name}: {r:?}");
            } else if name.starts_with("seed-") {
                assert!(r.is_err(), "{name} loaded");
            }
        }
    }

    /// Regenerates the seed files of the fuzz regression corpus (crash files found by the
    /// fuzzer live next to them and are left alone): `cargo test -p vmm --lib
    /// write_regression_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/regressions/kernel_loader/seed-*"]
    fn write_regression_seeds() {
        let dir = workspace_root().join("fuzz/regressions/kernel_loader");
        std::fs::create_dir_all(&dir).unwrap();
        let text = [0x90u8, 0x90, 0xf4, 0xeb, 0xfd];
        let tiny = synthetic_elf(0x100_0000, &[(0x100_0000, &text, 0x1000)]);
        let good = synthetic_bzimage(&compress(Compression::Gzip, &tiny));
        let patched = |off: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[off..off + bytes.len()].copy_from_slice(bytes);
            v
        };
        let mut elf32 = tiny.clone();
        elf32[4] = 1;
        let mut no_load = tiny.clone();
        no_load[64] = 4;
        let mut phdrs = tiny.clone();
        phdrs[32..40].copy_from_slice(&0xfff0u64.to_le_bytes());
        let mut corrupt_gz = compress(Compression::Gzip, &tiny);
        let mid = corrupt_gz.len() / 2;
        corrupt_gz[mid..mid + 8].fill(0xa5);
        let xz = compress(Compression::Xz, &tiny);
        let mut lz4_huge = 0x184c_2102u32.to_le_bytes().to_vec();
        lz4_huge.extend_from_slice(&0x7fff_fff0u32.to_le_bytes());
        lz4_huge.extend_from_slice(&[0x1f; 32]);
        let mut lzo_bad = lzop(&tiny, 4096);
        lzo_bad[42..46].copy_from_slice(&0xffffu32.to_be_bytes()); // src_len > dst_len
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            (
                "not-a-kernel-pe",
                b"MZ\x90\x00\x03\x00\x00\x00PE stub, no HdrS".to_vec(),
            ),
            ("bare-gzip", compress(Compression::Gzip, b"not a kernel")),
            ("truncated-setup-header", good[..0x230].to_vec()),
            (
                "old-boot-protocol",
                patched(0x206, &0x0206u16.to_le_bytes()),
            ),
            ("setup-sects-beyond-file", patched(0x1f1, &[0xfe])),
            (
                "payload-offset-beyond-file",
                patched(0x248, &0x7fff_0000u32.to_le_bytes()),
            ),
            (
                "payload-length-beyond-file",
                patched(0x24c, &0xffff_ffffu32.to_le_bytes()),
            ),
            ("unknown-compression", patched(0x900, b"\xca\xfe\xba\xbe")),
            (
                "good-version-pointer-wild",
                patched(0x20e, &0xfff0u16.to_le_bytes()),
            ),
            ("corrupt-gzip", synthetic_bzimage(&corrupt_gz)),
            ("truncated-xz", synthetic_bzimage(&xz[..xz.len() / 2])),
            ("lz4-huge-block", synthetic_bzimage(&lz4_huge)),
            ("lzo-bad-block", synthetic_bzimage(&lzo_bad)),
            (
                "payload-not-elf",
                synthetic_bzimage(&compress(Compression::Lzma, b"text")),
            ),
            ("elf32", elf32),
            ("elf-no-pt-load", no_load),
            ("elf-phdrs-out-of-file", phdrs),
            (
                "elf-segment-outside-ram",
                synthetic_elf(0x4000_0000, &[(0x4000_0000, &text, 0x1000)]),
            ),
            ("good-elf", tiny.clone()),
            (
                "good-bzimage-zstd",
                synthetic_bzimage(&compress(Compression::Zstd, &tiny)),
            ),
            (
                "good-bzimage-lzo",
                synthetic_bzimage(&compress(Compression::Lzo, &tiny)),
            ),
        ];
        for (name, bytes) in seeds {
            assert!(bytes.len() <= 4096, "{name} is {} bytes", bytes.len());
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }

    fn debian_kernel() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("HVPROBE_DEBIAN_KERNEL") {
            return Some(PathBuf::from(p));
        }
        let boot = workspace_root().join(".cache/debian-kernel/root/boot");
        let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .collect();
        found.sort();
        found.pop()
    }

    #[test]
    fn debian_kernel_loads() {
        let Some(path) = debian_kernel() else {
            println!(
                "SKIPPED (not tested): Debian kernel not fetched; run scripts/fetch-debian-kernel.sh"
            );
            eprintln!(
                "SKIPPED (not tested): Debian kernel not fetched; run scripts/fetch-debian-kernel.sh"
            );
            return;
        };
        let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let t = Instant::now();
        let (vmlinux, c) = decompress_bzimage(&image).unwrap();
        let took = t.elapsed();
        eprintln!(
            "debian kernel {}: {c} payload, {} -> {} bytes decompressed in {took:?}",
            path.display(),
            image.len(),
            vmlinux.len()
        );
        assert_eq!(c, Compression::Xz);
        let m = GuestMem::new(256 << 20).unwrap();
        let k = load_kernel(&m, &image).unwrap();
        assert_eq!(
            k.format,
            KernelFormat::BzImage {
                compression: Compression::Xz
            }
        );
        assert_eq!(k.entry, Gpa(0x100_0000));
        assert!(k.load_start >= Gpa(0x100_0000) && k.load_end > k.load_start);
        let v = k.version.unwrap();
        assert!(v.starts_with("6.1"), "{v}");
        assert!(k.setup_header.is_some());
        let (initrd, size) = load_initrd(&m, &[1u8; 5000], k.load_end, 0x7fff_ffff).unwrap();
        assert!(initrd >= k.load_end && initrd.raw() + size <= 256 << 20);
    }
}
