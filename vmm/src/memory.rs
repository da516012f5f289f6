//! Guest memory: the one place hvprobe touches vm-memory.
//!
//! Everything else reads and writes guest RAM through [`GuestMem`] and names guest-physical
//! addresses with [`Gpa`], so a guest-virtual address can never be passed where a physical
//! one is meant.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{MIN_MEM_SIZE, MMIO_HOLE_END, MMIO_HOLE_START};

pub use introspect::Gpa;

fn ga(g: Gpa) -> GuestAddress {
    GuestAddress(g.0)
}

/// Errors of guest memory creation and access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The requested size is below what any guest can use.
    #[error("Guest memory of {size} bytes is too small: hvprobe needs at least {min} MiB", min = MIN_MEM_SIZE >> 20)]
    TooSmall {
        /// Requested size.
        size: u64,
    },
    /// The requested size is not a whole number of pages.
    #[error("Guest memory size {size:#x} is not a multiple of 4 KiB")]
    Unaligned {
        /// Requested size.
        size: u64,
    },
    /// The host refused the mapping (usually: more than the host can give).
    #[error("Cannot allocate {size} MiB of guest memory on the host ({reason}); try a smaller --mem", size = size >> 20)]
    Allocate {
        /// Requested size.
        size: u64,
        /// What the host said.
        reason: String,
    },
    /// An access touched guest-physical addresses with no RAM behind them.
    #[error("Guest-physical range {addr}+{len:#x} is not backed by guest RAM")]
    OutOfRange {
        /// First byte of the access.
        addr: Gpa,
        /// Length of the access.
        len: usize,
    },
}

/// Guest RAM: one or two host mappings (below the 32-bit MMIO hole, and above 4 GiB when the
/// guest has more than 3 GiB).
///
/// It is backed by one memfd (the low range at offset 0, the high range after it), so that a
/// control API client can be handed a read-only descriptor of it (`mem.memfd`) and read guest
/// memory at memory speed.
#[derive(Clone, Debug)]
pub struct GuestMem {
    inner: GuestMemoryMmap,
    size: u64,
    file: std::sync::Arc<std::fs::File>,
}

impl GuestMem {
    /// Allocates `size` bytes of guest RAM laid out around the MMIO hole.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size < MIN_MEM_SIZE {
            return Err(MemoryError::TooSmall { size });
        }
        if size % 4096 != 0 {
            return Err(MemoryError::Unaligned { size });
        }
        let alloc = |reason: String| MemoryError::Allocate { size, reason };
        let file = std::sync::Arc::new(memfd(size).map_err(|e| alloc(e.to_string()))?);
        let mut offset = 0u64;
        let mut regions = Vec::new();
        for (start, len) in Self::ram_ranges(size) {
            let l = usize::try_from(len)
                .map_err(|_| alloc("size does not fit the host address space".into()))?;
            regions.push((
                GuestAddress(start),
                l,
                Some(vm_memory::FileOffset::from_arc(file.clone(), offset)),
            ));
            offset += len;
        }
        let inner =
            GuestMemoryMmap::from_ranges_with_files(&regions).map_err(|e| alloc(e.to_string()))?;
        Ok(GuestMem { inner, size, file })
    }

    /// The memfd behind guest RAM (read-write: hand clients a read-only reopening of it).
    pub fn memfd(&self) -> &std::fs::File {
        &self.file
    }

    /// Where each RAM range lies in [`GuestMem::memfd`]: `(guest start, length, file offset)`.
    pub fn memfd_layout(&self) -> Vec<(Gpa, u64, u64)> {
        let mut offset = 0;
        Self::ram_ranges(self.size)
            .into_iter()
            .map(|(start, len)| {
                let r = (Gpa(start), len, offset);
                offset += len;
                r
            })
            .collect()
    }

    /// The guest-physical RAM ranges `(start, len)` for a guest of `size` bytes.
    pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
        if size <= MMIO_HOLE_START {
            vec![(0, size)]
        } else {
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, size - MMIO_HOLE_START),
            ]
        }
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The vm-memory object (for linux-loader and KVM memslot registration).
    pub fn inner(&self) -> &GuestMemoryMmap {
        &self.inner
    }

    /// Iterates over `(guest start, length, host address)` of every RAM region.
    pub fn regions(&self) -> impl Iterator<Item = (Gpa, u64, *mut u8)> + '_ {
        self.inner
            .iter()
            .map(|r| (Gpa(r.start_addr().0), r.len(), r.as_ptr()))
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: Gpa, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.inner
            .read_slice(buf, ga(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len(),
            })
    }

    /// Writes `buf` at `addr`.
    pub fn write(&self, addr: Gpa, buf: &[u8]) -> Result<(), MemoryError> {
        self.inner
            .write_slice(buf, ga(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len(),
            })
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, addr: Gpa) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, addr: Gpa, v: u64) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Whether `[addr, addr+len)` is entirely guest RAM.
    pub fn contains(&self, addr: Gpa, len: u64) -> bool {
        if len == 0 {
            return self.inner.address_in_range(ga(addr));
        }
        let Some(last) = addr.0.checked_add(len - 1) else {
            return false;
        };
        self.inner
            .iter()
            .any(|r| addr.0 >= r.start_addr().0 && last < r.start_addr().0 + r.len())
    }
}

/// An anonymous memory file of `size` bytes (`memfd_create`), close-on-exec.
fn memfd(size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated C string literal; memfd_create only reads it and
    // returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"hvprobe-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create, is valid, and nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

impl introspect::PhysMem for GuestMem {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), introspect::PhysMemError> {
        self.read(gpa, buf)
            .map_err(|_| introspect::PhysMemError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }
}

impl introspect::PhysMemMut for GuestMem {
    fn write_phys(&self, gpa: Gpa, buf: &[u8]) -> Result<(), introspect::PhysMemError> {
        self.write(gpa, buf)
            .map_err(|_| introspect::PhysMemError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(GuestMem::ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn big_guest_skips_the_mmio_hole() {
        let r = GuestMem::ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }

    #[test]
    fn rejects_tiny_and_unaligned() {
        assert_eq!(
            GuestMem::new(1 << 20).unwrap_err(),
            MemoryError::TooSmall { size: 1 << 20 }
        );
        assert_eq!(
            GuestMem::new((32 << 20) + 1).unwrap_err(),
            MemoryError::Unaligned {
                size: (32 << 20) + 1
            }
        );
    }

    #[test]
    fn read_write_round_trip_and_bounds() {
        let m = GuestMem::new(16 << 20).unwrap();
        m.write_u64(Gpa(0x1000), 0xdead_beef_cafe).unwrap();
        assert_eq!(m.read_u64(Gpa(0x1000)).unwrap(), 0xdead_beef_cafe);
        assert!(m.contains(Gpa(0), 16 << 20));
        assert!(!m.contains(Gpa(0), (16 << 20) + 1));
        assert_eq!(
            m.read_u64(Gpa((16 << 20) - 4)).unwrap_err(),
            MemoryError::OutOfRange {
                addr: Gpa((16 << 20) - 4),
                len: 8
            }
        );
    }
}
