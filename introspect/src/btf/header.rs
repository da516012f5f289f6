//! The BTF header and the string section.

use super::BtfError;

/// `BTF_MAGIC` as stored little-endian.
pub(crate) const MAGIC: u16 = 0xeb9f;
/// The fixed part of `struct btf_header`.
pub(crate) const HEADER_LEN: usize = 24;

/// `struct btf_header`. Section offsets are relative to the end of the header
/// (`hdr_len` bytes from the start of the blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (1).
    pub version: u8,
    /// Flags (none are defined).
    pub flags: u8,
    /// Length of the header (24, or more for a newer header with zeroed extra fields).
    pub hdr_len: u32,
    /// Offset of the type section from the end of the header.
    pub type_off: u32,
    /// Length of the type section.
    pub type_len: u32,
    /// Offset of the string section from the end of the header.
    pub str_off: u32,
    /// Length of the string section.
    pub str_len: u32,
}

/// A little-endian u32 at `at`, if the slice holds it.
pub(crate) fn le32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Header {
    /// Reads and checks the header of `data`.
    pub fn parse(data: &[u8]) -> Result<Header, BtfError> {
        let len = data.len();
        let field = |at: usize| le32(data, at).ok_or(BtfError::TooShort { len });
        let (Some(&m0), Some(&m1)) = (data.first(), data.get(1)) else {
            return Err(BtfError::TooShort { len });
        };
        let magic = u16::from_le_bytes([m0, m1]);
        if magic == MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != MAGIC {
            return Err(BtfError::BadMagic { magic });
        }
        if len < HEADER_LEN {
            return Err(BtfError::TooShort { len });
        }
        let version = data.get(2).copied().unwrap_or(0);
        if version != 1 {
            return Err(BtfError::UnsupportedVersion { version });
        }
        let h = Header {
            version,
            flags: data.get(3).copied().unwrap_or(0),
            hdr_len: field(4)?,
            type_off: field(8)?,
            type_len: field(12)?,
            str_off: field(16)?,
            str_len: field(20)?,
        };
        if (h.hdr_len as usize) < HEADER_LEN || h.hdr_len as usize > len {
            return Err(BtfError::BadHeaderLen {
                hdr_len: h.hdr_len,
                len,
            });
        }
        h.section("type", h.type_off, h.type_len, len)?;
        h.section("string", h.str_off, h.str_len, len)?;
        Ok(h)
    }

    /// The byte range of a section in the blob, checked against the blob's length.
    fn section(
        &self,
        section: &'static str,
        off: u32,
        size: u32,
        len: usize,
    ) -> Result<std::ops::Range<usize>, BtfError> {
        let offset = u64::from(self.hdr_len) + u64::from(off);
        let end = offset + u64::from(size);
        let err = BtfError::SectionOutOfBounds {
            section,
            offset,
            size: u64::from(size),
            len,
        };
        if end > len as u64 {
            return Err(err);
        }
        match (usize::try_from(offset), usize::try_from(end)) {
            (Ok(start), Ok(end)) => Ok(start..end),
            _ => Err(err),
        }
    }

    /// The byte range of the type section (checked by [`Header::parse`]).
    pub(crate) fn type_range(&self, len: usize) -> Result<std::ops::Range<usize>, BtfError> {
        self.section("type", self.type_off, self.type_len, len)
    }

    /// The offset of the type section from the start of the blob.
    pub(crate) fn type_start(&self) -> u64 {
        u64::from(self.hdr_len) + u64::from(self.type_off)
    }
}

/// A validated name: a range of the string section (empty for anonymous types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StrRef {
    start: u32,
    len: u32,
}

impl StrRef {
    /// Anonymous: offset 0, the empty string.
    pub(crate) const EMPTY: StrRef = StrRef { start: 0, len: 0 };

    pub(crate) fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// The string section: NUL-terminated UTF-8 names, offset 0 being the empty string.
#[derive(Debug, Clone)]
pub(crate) struct Strings {
    text: String,
}

impl Strings {
    /// Copies and checks the string section: it must start and end with a NUL and be UTF-8.
    pub(crate) fn parse(data: &[u8], h: &Header) -> Result<Strings, BtfError> {
        let range = h.section("string", h.str_off, h.str_len, data.len())?;
        let base = range.start as u64;
        let bytes = data.get(range).unwrap_or_default();
        if bytes.first() != Some(&0) {
            return Err(BtfError::BadStrings {
                reason: "the first string is not empty",
                offset: base,
            });
        }
        if bytes.last() != Some(&0) {
            return Err(BtfError::BadStrings {
                reason: "the last string is not NUL-terminated",
                offset: base + bytes.len() as u64 - 1,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| BtfError::BadStrings {
            reason: "invalid UTF-8",
            offset: base + e.valid_up_to() as u64,
        })?;
        Ok(Strings {
            text: text.to_owned(),
        })
    }

    /// The string starting at `off`, if `off` starts one (is in the section and on a
    /// character boundary).
    pub(crate) fn lookup(&self, off: u32) -> Option<StrRef> {
        let start = off as usize;
        let rest = self.text.get(start..)?;
        // The section ends with a NUL, so every suffix holds one.
        let len = rest.find('\0')?;
        Some(StrRef {
            start: off,
            len: u32::try_from(len).ok()?,
        })
    }

    /// A validated name's text.
    pub(crate) fn get(&self, s: StrRef) -> &str {
        let start = s.start as usize;
        self.text
            .get(start..start + s.len as usize)
            .unwrap_or_default()
    }
}
