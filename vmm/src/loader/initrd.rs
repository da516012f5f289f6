//! The initrd: placed page-aligned as high as possible in low RAM, above the kernel.

use crate::layout::MMIO_HOLE_START;
use crate::memory::{Gpa, GuestMem};

use super::LoadError;

/// Initrd placement alignment.
const PAGE: u64 = 4096;

/// Writes `initrd` into `mem` and returns its guest-physical address and size.
///
/// The initrd starts on a page boundary, ends at or below `min(max_addr, top of low RAM)`
/// (`max_addr` is an exclusive bound; passing the setup header's inclusive `initrd_addr_max`
/// costs at most one page) and never overlaps `[.., kernel_end)`.
pub fn load_initrd(
    mem: &GuestMem,
    initrd: &[u8],
    kernel_end: Gpa,
    max_addr: u64,
) -> Result<(Gpa, u64), LoadError> {
    if initrd.is_empty() {
        return Err(LoadError::InitrdEmpty);
    }
    let size = u64::try_from(initrd.len()).unwrap_or(u64::MAX);
    let top = mem.size().min(MMIO_HOLE_START).min(max_addr);
    let bottom = kernel_end
        .raw()
        .checked_next_multiple_of(PAGE)
        .unwrap_or(u64::MAX);
    let start = top.checked_sub(size).map(|s| s / PAGE * PAGE);
    match start {
        Some(start) if start >= bottom => {
            mem.write(Gpa(start), initrd).map_err(LoadError::Memory)?;
            Ok((Gpa(start), size))
        }
        _ => Err(LoadError::InitrdTooLarge {
            size,
            available: top.saturating_sub(bottom),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 64 << 20;

    #[test]
    fn placed_high_and_aligned() {
        let m = GuestMem::new(MEM).unwrap();
        let rd = vec![0x42u8; 10_000];
        let (at, size) = load_initrd(&m, &rd, Gpa(0x200_0000), u64::MAX).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(at.raw() % PAGE, 0);
        assert_eq!(at, Gpa((MEM - 10_000) / PAGE * PAGE));
        let mut b = vec![0u8; 10_000];
        m.read(at, &mut b).unwrap();
        assert_eq!(b, rd);
    }

    #[test]
    fn respects_max_addr() {
        let m = GuestMem::new(MEM).unwrap();
        let (at, _) = load_initrd(&m, &[1; 4096], Gpa(0x100_0000), 0x180_0000).unwrap();
        assert_eq!(at, Gpa(0x17f_f000));
        // An exact fit right above the kernel.
        let (at, _) = load_initrd(&m, &[1; 4096], Gpa(0x100_0001), 0x100_2000).unwrap();
        assert_eq!(at, Gpa(0x100_1000));
    }

    #[test]
    fn too_large_and_empty() {
        let m = GuestMem::new(MEM).unwrap();
        assert_eq!(
            load_initrd(&m, &[], Gpa(0x100_0000), u64::MAX).unwrap_err(),
            LoadError::InitrdEmpty
        );
        let rd = vec![0u8; 8 << 20];
        let e = load_initrd(&m, &rd, Gpa(0x380_0001), u64::MAX).unwrap_err();
        assert_eq!(
            e,
            LoadError::InitrdTooLarge {
                size: 8 << 20,
                available: (8 << 20) - PAGE
            }
        );
        assert!(
            e.to_string()
                .starts_with("Initrd of 8388608 bytes does not fit")
        );
        // Exactly the space left.
        load_initrd(&m, &rd, Gpa(0x380_0000), u64::MAX).unwrap();
        // The kernel ends above max_addr: nothing is available.
        assert_eq!(
            load_initrd(&m, &[1], Gpa(0x300_0000), 0x200_0000).unwrap_err(),
            LoadError::InitrdTooLarge {
                size: 1,
                available: 0
            }
        );
        // The kernel ends at the very top of the address space.
        assert_eq!(
            load_initrd(&m, &[1], Gpa(u64::MAX), u64::MAX).unwrap_err(),
            LoadError::InitrdTooLarge {
                size: 1,
                available: 0
            }
        );
    }
}
