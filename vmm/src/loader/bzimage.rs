//! The x86 bzImage container: setup header, version string and payload location
//! (Documentation/arch/x86/boot.rst).

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use super::{Compression, LoadError, decompress};

/// File offset of the setup header (`hdr.setup_sects`).
const HDR_START: usize = 0x1f1;
/// File offset of `hdr.header` ("HdrS").
const HDR_MAGIC_OFF: usize = 0x202;
/// `hdr.header` value.
const HDR_MAGIC: &[u8; 4] = b"HdrS";
/// First boot protocol with `payload_offset` / `payload_length`.
const MIN_PROTOCOL: u16 = 0x0208;
/// Longest version string we read.
const MAX_VERSION_LEN: usize = 256;

/// A bzImage's parts, borrowed from the image.
pub(super) struct BzImage<'a> {
    /// The setup header as found in the image.
    pub header: setup_header,
    /// The compressed vmlinux.
    pub payload: &'a [u8],
    /// The kernel version string, when `hdr.kernel_version` points at printable text.
    pub version: Option<String>,
}

/// Whether `image` carries the bzImage magic.
pub(super) fn is_bzimage(image: &[u8]) -> bool {
    image.get(HDR_MAGIC_OFF..HDR_MAGIC_OFF + 4) == Some(HDR_MAGIC)
}

/// Parses the setup header and locates the payload. `image` must satisfy [`is_bzimage`].
pub(super) fn parse(image: &[u8]) -> Result<BzImage<'_>, LoadError> {
    let len = image.len();
    let mut header = setup_header::default();
    let hdr_bytes = image
        .get(HDR_START..HDR_START + header.as_slice().len())
        .ok_or(LoadError::TruncatedSetupHeader { len })?;
    header.as_mut_slice().copy_from_slice(hdr_bytes);
    if { header.version } < MIN_PROTOCOL {
        return Err(LoadError::OldBootProtocol {
            version: header.version,
        });
    }

    let setup_sects = header.setup_sects;
    let sects = if setup_sects == 0 {
        4
    } else {
        u64::from(setup_sects)
    };
    let pm_start = (sects + 1) * 512;
    let file_len = u64::try_from(len).unwrap_or(u64::MAX);
    if pm_start >= file_len {
        return Err(LoadError::SetupBeyondFile { setup_sects, len });
    }

    let offset = pm_start + u64::from(header.payload_offset);
    let length = header.payload_length;
    let end = offset + u64::from(length);
    if length == 0 || end > file_len {
        return Err(LoadError::PayloadOutOfBounds {
            offset,
            length,
            len,
        });
    }
    // Both fit in the file, so they fit in usize.
    let payload = &image[to_usize(offset)..to_usize(end)];

    let version = version_string(image, header.kernel_version);
    Ok(BzImage {
        header,
        payload,
        version,
    })
}

/// `u64` to `usize` for values already bounded by a slice length.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The NUL-terminated string at `kernel_version + 0x200`, if there is a printable one.
fn version_string(image: &[u8], kernel_version: u16) -> Option<String> {
    if kernel_version == 0 {
        return None;
    }
    let start = usize::from(kernel_version) + 0x200;
    let rest = image.get(start..)?;
    let rest = &rest[..rest.len().min(MAX_VERSION_LEN)];
    let end = rest.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')).then(|| s.to_owned())
}

/// Decompresses a bzImage's payload on the host and returns the vmlinux ELF it contains,
/// with the compression found.
pub fn decompress_bzimage(image: &[u8]) -> Result<(Vec<u8>, Compression), LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    if !is_bzimage(image) {
        return Err(LoadError::NotABzImage {
            head: super::hex_head(image),
        });
    }
    decompress::decompress_vmlinux(parse(image)?.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_string_edge_cases() {
        let mut img = vec![0u8; 0x400];
        img[0x300..0x305].copy_from_slice(b"6.1.0");
        assert_eq!(version_string(&img, 0x100).as_deref(), Some("6.1.0"));
        assert_eq!(version_string(&img, 0), None);
        assert_eq!(version_string(&img, 0xffff), None, "beyond the file");
        img[0x301] = 0x07;
        assert_eq!(version_string(&img, 0x100), None, "not printable");
        let mut unterminated = vec![b'x'; 0x800];
        unterminated[..0x300].fill(0);
        assert_eq!(version_string(&unterminated, 0x100), None);
    }

    #[test]
    fn decompress_bzimage_rejects_non_bzimages() {
        assert_eq!(decompress_bzimage(&[]).unwrap_err(), LoadError::Empty);
        assert_eq!(
            decompress_bzimage(b"\x7fELF").unwrap_err(),
            LoadError::NotABzImage {
                head: "7f 45 4c 46".into()
            }
        );
    }
}
