//! Host-side decompression of a bzImage payload, in the seven formats Linux builds.
//!
//! The kernel build appends the uncompressed size as 4 little-endian bytes after every format
//! but gzip (`size_append`), so every decoder here stops at its stream's end and ignores what
//! follows. Output is capped at [`MAX_DECOMPRESSED_SIZE`] whatever the stream claims.

use std::io::{self, Read};

use super::{Compression, LoadError, hex_head};

/// Largest decompressed payload accepted (512 MiB; Debian's vmlinux is about 70 MiB).
pub const MAX_DECOMPRESSED_SIZE: u64 = 512 << 20;
/// Memory liblzma may use for an xz or lzma dictionary (the kernel uses 32 or 64 MiB).
const LZMA_MEMLIMIT: u64 = 256 << 20;
/// LZ4 legacy frame magic.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// LZ4 legacy frames hold blocks of at most 8 MiB of output.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// lzop file magic.
const LZOP_MAGIC: &[u8; 9] = b"\x89LZO\x00\x0d\x0a\x1a\x0a";
/// Largest lzop block the kernel's own unlzo accepts (`LZO_BLOCK_SIZE`).
const LZOP_MAX_BLOCK: usize = 256 << 10;

/// The compression `bytes` start with.
pub(super) fn detect(bytes: &[u8]) -> Option<Compression> {
    const MAGICS: [(&[u8], Compression); 7] = [
        (b"\x1f\x8b", Compression::Gzip),
        (b"\xfd7zXZ\x00", Compression::Xz),
        (b"\x28\xb5\x2f\xfd", Compression::Zstd),
        (b"\x02\x21\x4c\x18", Compression::Lz4),
        (b"BZh", Compression::Bzip2),
        (b"\x5d\x00\x00", Compression::Lzma),
        (LZOP_MAGIC, Compression::Lzo),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| bytes.starts_with(m))
        .map(|&(_, c)| c)
}

/// Detects the payload's compression, decompresses it and checks that it is an ELF file.
pub(super) fn decompress_vmlinux(payload: &[u8]) -> Result<(Vec<u8>, Compression), LoadError> {
    let compression = detect(payload).ok_or_else(|| LoadError::UnknownCompression {
        head: hex_head(payload),
    })?;
    let out = decompress(compression, payload)?;
    if !out.starts_with(b"\x7fELF") {
        return Err(LoadError::PayloadNotElf {
            head: hex_head(&out),
        });
    }
    Ok((out, compression))
}

/// Decompresses `payload`, which is known to be a `c` stream.
fn decompress(c: Compression, payload: &[u8]) -> Result<Vec<u8>, LoadError> {
    match c {
        Compression::Gzip => read_all(c, flate2::read::GzDecoder::new(payload)),
        Compression::Xz => {
            let s = xz2::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
                .map_err(|e| corrupt(c, e))?;
            liblzma(c, s, payload)
        }
        Compression::Lzma => {
            let s =
                xz2::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT).map_err(|e| corrupt(c, e))?;
            liblzma(c, s, payload)
        }
        Compression::Zstd => {
            let mut src = payload;
            let init = ruzstd::decoding::StreamingDecoder::new(&mut src).map(|d| read_all(c, d));
            match init {
                Ok(r) => r,
                Err(_) if src.is_empty() => Err(LoadError::TruncatedPayload { compression: c }),
                Err(e) => Err(corrupt(c, e)),
            }
        }
        Compression::Bzip2 => read_all(c, bzip2::read::BzDecoder::new(payload)),
        Compression::Lz4 => lz4_legacy(payload),
        Compression::Lzo => lzop(payload),
    }
}

/// A corrupt-stream error carrying the decoder's words.
fn corrupt(compression: Compression, e: impl std::fmt::Display) -> LoadError {
    LoadError::CorruptPayload {
        compression,
        reason: e.to_string(),
    }
}

/// The size-bomb error.
fn too_large(compression: Compression) -> LoadError {
    LoadError::PayloadTooLarge {
        compression,
        limit: MAX_DECOMPRESSED_SIZE,
    }
}

/// Reads a decoder to its end, at most [`MAX_DECOMPRESSED_SIZE`] bytes.
fn read_all(c: Compression, r: impl Read) -> Result<Vec<u8>, LoadError> {
    let mut out = Vec::new();
    r.take(MAX_DECOMPRESSED_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            if ends_early(&e) {
                LoadError::TruncatedPayload { compression: c }
            } else {
                corrupt(c, e)
            }
        })?;
    if u64::try_from(out.len()).map_or(true, |n| n > MAX_DECOMPRESSED_SIZE) {
        return Err(too_large(c));
    }
    Ok(out)
}

/// Whether `e`, or an error it wraps, is an unexpected end of input.
fn ends_early(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::UnexpectedEof {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = err.source();
    }
    false
}

/// Runs a liblzma decoder over `payload` until its stream ends, ignoring what follows (xz2's
/// `read::XzDecoder` calls trailing bytes, such as the kernel's appended size, corrupt).
fn liblzma(
    c: Compression,
    mut stream: xz2::stream::Stream,
    payload: &[u8],
) -> Result<Vec<u8>, LoadError> {
    let cap = usize::try_from(MAX_DECOMPRESSED_SIZE).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::new();
    let mut input = payload;
    loop {
        if out.len() == out.capacity() {
            if out.len() > cap {
                return Err(too_large(c));
            }
            out.reserve_exact(out.len().clamp(1 << 16, 64 << 20).min(cap + 1 - out.len()));
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let status = stream
            .process_vec(input, &mut out, xz2::stream::Action::Run)
            .map_err(|e| corrupt(c, e))?;
        let consumed = usize::try_from(stream.total_in() - in_before).unwrap_or(usize::MAX);
        input = input.get(consumed..).unwrap_or_default();
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out);
        }
        if out.len() > cap {
            return Err(too_large(c));
        }
        // liblzma stops early only when it runs out of input or output space.
        if out.len() < out.capacity() && (input.is_empty() || consumed == 0) {
            if input.is_empty() {
                return Err(LoadError::TruncatedPayload { compression: c });
            }
            if out.len() == out_before {
                return Err(corrupt(c, "the decoder makes no progress"));
            }
        }
    }
}

/// Reads a little-endian u32 at `pos`.
fn le32(b: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(pos..pos.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads a big-endian u32 at `pos`.
fn be32(b: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(pos..pos.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads a big-endian u16 at `pos`.
fn be16(b: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(pos..pos.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// `u32` to `usize` (lossless on every host hvprobe builds for).
fn usize_from(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The LZ4 legacy frame (`lz4 -l`): magic, then blocks each prefixed with its compressed size
/// (u32 LE), each decompressing to at most 8 MiB. A new magic may start a concatenated frame.
/// The stream has no end marker: it ends at the end of the input, or at a lone trailing u32
/// (the kernel's appended uncompressed size).
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, LoadError> {
    let c = Compression::Lz4;
    let truncated = || LoadError::TruncatedPayload { compression: c };
    let max_block = lz4_flex::block::get_maximum_output_size(LZ4_LEGACY_BLOCK);
    let mut out = Vec::new();
    let mut scratch = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4; // after the magic
    let mut blocks = 0usize;
    while pos < payload.len() {
        let size = le32(payload, pos).ok_or_else(truncated)?;
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        if pos == payload.len() && blocks > 0 {
            break; // the appended uncompressed size
        }
        let size = usize_from(size);
        if size == 0 || size > max_block {
            return Err(corrupt(
                c,
                format!("block of {size} bytes in a legacy frame (at most {max_block})"),
            ));
        }
        let block = payload.get(pos..pos + size).ok_or_else(truncated)?;
        let n = lz4_flex::block::decompress_into(block, &mut scratch).map_err(|e| corrupt(c, e))?;
        if u64::try_from(out.len() + n).map_or(true, |t| t > MAX_DECOMPRESSED_SIZE) {
            return Err(too_large(c));
        }
        out.extend_from_slice(&scratch[..n]);
        pos += size;
        blocks += 1;
    }
    if blocks == 0 {
        return Err(truncated());
    }
    Ok(out)
}

/// Adler-32, as lzop uses it for its block checksums.
pub(super) fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the longest run for which `b` cannot overflow before the reduction.
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// lzop header flags.
mod lzop_flags {
    /// Adler-32 of each block's uncompressed data follows its sizes.
    pub const ADLER32_D: u32 = 0x0000_0001;
    /// Adler-32 of each compressed block's data.
    pub const ADLER32_C: u32 = 0x0000_0002;
    /// An extra field follows the header.
    pub const EXTRA_FIELD: u32 = 0x0000_0040;
    /// CRC-32 of each block's uncompressed data.
    pub const CRC32_D: u32 = 0x0000_0100;
    /// CRC-32 of each compressed block's data.
    pub const CRC32_C: u32 = 0x0000_0200;
    /// A filter id follows the flags.
    pub const FILTER: u32 = 0x0000_0800;
}

/// An lzop file: header, then blocks of (uncompressed size u32 BE, compressed size u32 BE,
/// checksums as the header flags say, data) until an uncompressed size of 0. A block whose
/// sizes are equal is stored uncompressed.
fn lzop(payload: &[u8]) -> Result<Vec<u8>, LoadError> {
    use lzop_flags::*;
    let c = Compression::Lzo;
    let truncated = || LoadError::TruncatedPayload { compression: c };
    let mut pos = LZOP_MAGIC.len();
    let version = be16(payload, pos).ok_or_else(truncated)?;
    pos += 4; // version, library version
    if version >= 0x0940 {
        pos += 2; // version needed to extract
    }
    let method = *payload.get(pos).ok_or_else(truncated)?;
    if !(1..=3).contains(&method) {
        return Err(corrupt(c, format!("lzop method {method} is not LZO1X")));
    }
    pos += 1;
    if version >= 0x0940 {
        pos += 1; // level
    }
    let flags = be32(payload, pos).ok_or_else(truncated)?;
    pos += 4;
    if flags & FILTER != 0 {
        return Err(corrupt(c, "lzop filters are not supported"));
    }
    pos += 8; // mode, mtime low
    if version >= 0x0940 {
        pos += 4; // mtime high
    }
    let name_len = *payload.get(pos).ok_or_else(truncated)?;
    pos += 1 + usize::from(name_len) + 4; // name, header checksum
    if flags & EXTRA_FIELD != 0 {
        let extra = be32(payload, pos).ok_or_else(truncated)?;
        pos = pos
            .checked_add(4 + usize_from(extra) + 4)
            .ok_or_else(truncated)?;
    }

    let mut out = Vec::new();
    loop {
        let dst_len = usize_from(be32(payload, pos).ok_or_else(truncated)?);
        pos += 4;
        if dst_len == 0 {
            return Ok(out);
        }
        if dst_len > LZOP_MAX_BLOCK {
            return Err(corrupt(c, format!("lzop block of {dst_len} bytes")));
        }
        let src_len = usize_from(be32(payload, pos).ok_or_else(truncated)?);
        pos += 4;
        if src_len == 0 || src_len > dst_len {
            return Err(corrupt(
                c,
                format!("lzop block of {src_len} bytes expanding to {dst_len}"),
            ));
        }
        let mut sums = Vec::new();
        for (flag, data_sum) in [
            (ADLER32_D, true),
            (CRC32_D, true),
            (ADLER32_C, false),
            (CRC32_C, false),
        ] {
            // Checksums of the compressed data exist only for blocks that were compressed.
            if flags & flag != 0 && (data_sum || src_len < dst_len) {
                sums.push((flag, be32(payload, pos).ok_or_else(truncated)?));
                pos += 4;
            }
        }
        let src = payload.get(pos..pos + src_len).ok_or_else(truncated)?;
        pos += src_len;
        if u64::try_from(out.len() + dst_len).map_or(true, |t| t > MAX_DECOMPRESSED_SIZE) {
            return Err(too_large(c));
        }
        let start = out.len();
        if src_len == dst_len {
            out.extend_from_slice(src);
        } else {
            out.resize(start + dst_len, 0);
            lzo1x::decompress(src, &mut out[start..]).map_err(|e| corrupt(c, e))?;
        }
        for (flag, want) in sums {
            let data = if flag & (ADLER32_D | CRC32_D) != 0 {
                &out[start..]
            } else {
                src
            };
            let got = if flag & (ADLER32_D | ADLER32_C) != 0 {
                adler32(data)
            } else {
                let mut crc = flate2::Crc::new();
                crc.update(data);
                crc.sum()
            };
            if got != want {
                return Err(corrupt(c, "lzop block checksum mismatch"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ALL, compress, lzop as make_lzop, small_vmlinux};
    use super::*;

    #[test]
    fn detects_every_magic() {
        for c in ALL {
            assert_eq!(detect(&compress(c, b"x")), Some(c), "{c}");
        }
        assert_eq!(detect(b"\x7fELF"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"\x1f"), None);
    }

    #[test]
    fn adler32_known_value() {
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        assert_eq!(adler32(&[0xff; 100_000]), {
            let (mut a, mut b) = (1u64, 0u64);
            for _ in 0..100_000 {
                a = (a + 0xff) % 65521;
                b = (b + a) % 65521;
            }
            u32::try_from((b << 16) | a).unwrap()
        });
    }

    #[test]
    fn truncated_streams() {
        let data = small_vmlinux();
        for c in ALL {
            let mut z = compress(c, &data);
            if c != Compression::Gzip {
                z.truncate(z.len() - 4); // drop the appended size first
            }
            z.truncate(z.len() * 2 / 3);
            let e = decompress(c, &z).unwrap_err();
            assert_eq!(e, LoadError::TruncatedPayload { compression: c });
            println!("{c}: truncated -> {e}");
        }
    }

    #[test]
    fn corrupt_streams() {
        let data = small_vmlinux();
        for c in ALL {
            let mut z = compress(c, &data);
            let mid = z.len() / 2;
            for b in &mut z[mid..mid + 16] {
                *b ^= 0x5a;
            }
            match decompress(c, &z) {
                Err(LoadError::CorruptPayload { compression, .. })
                | Err(LoadError::TruncatedPayload { compression }) => assert_eq!(compression, c),
                // Formats without a checksum may decode garbage; it must not be the original.
                Ok(out) => {
                    assert!(matches!(c, Compression::Lz4 | Compression::Lzma), "{c}");
                    assert_ne!(out, data, "{c}");
                }
                Err(e) => panic!("{c}: {e:?}"),
            }
        }
    }

    #[test]
    fn lzop_stored_blocks_and_checksum() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap())
            .collect();
        let z = make_lzop(&data, 1000);
        assert_eq!(lzop(&z).unwrap(), data);
        let mut bad = z.clone();
        bad[46] ^= 1; // the first block's adler32 (the header is 38 bytes)
        assert_eq!(
            lzop(&bad).unwrap_err(),
            LoadError::CorruptPayload {
                compression: Compression::Lzo,
                reason: "lzop block checksum mismatch".into()
            }
        );
        let mut filter = z.clone();
        filter[19] |= 0x08; // F_H_FILTER (0x800) in the big-endian flags at 17..21
        assert!(matches!(
            lzop(&filter).unwrap_err(),
            LoadError::CorruptPayload { .. }
        ));
        assert_eq!(
            lzop(&z[..40]).unwrap_err(),
            LoadError::TruncatedPayload {
                compression: Compression::Lzo
            }
        );
    }

    #[test]
    fn lz4_legacy_edge_cases() {
        let c = Compression::Lz4;
        let magic = LZ4_LEGACY_MAGIC.to_le_bytes();
        assert_eq!(
            lz4_legacy(&magic).unwrap_err(),
            LoadError::TruncatedPayload { compression: c }
        );
        let mut huge = magic.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            lz4_legacy(&huge).unwrap_err(),
            LoadError::CorruptPayload { .. }
        ));
        // Two concatenated frames.
        let a = compress(c, b"first frame ");
        let b = compress(c, b"second frame");
        let mut both = a[..a.len() - 4].to_vec();
        both.extend_from_slice(&b);
        assert_eq!(lz4_legacy(&both).unwrap(), b"first frame second frame");
    }

    /// Size bombs stop at the cap instead of eating the host's memory.
    #[test]
    fn size_bomb_is_capped() {
        // 600 MiB of zeros as a bzip2 stream of a few hundred bytes would be too slow to
        // build in a debug test; gzip of 520 MiB of zeros is about 500 KiB and quick.
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECOMPRESSED_SIZE >> 20) + 8 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert_eq!(
            decompress(Compression::Gzip, &bomb).unwrap_err(),
            LoadError::PayloadTooLarge {
                compression: Compression::Gzip,
                limit: MAX_DECOMPRESSED_SIZE
            }
        );
    }
}
