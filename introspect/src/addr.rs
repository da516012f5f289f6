//! Guest addresses: [`Gpa`] (guest-physical) and [`Gva`] (guest-virtual) are distinct types,
//! so one can never be passed where the other is meant.

use std::fmt;

/// The size of a base page on x86_64.
pub const PAGE_SIZE: u64 = 4096;

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

/// A guest-virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gva(pub u64);

macro_rules! address_methods {
    ($t:ident) => {
        impl $t {
            /// The address as a plain integer.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// This address plus `off`, or `None` on overflow.
            pub fn checked_add(self, off: u64) -> Option<$t> {
                self.0.checked_add(off).map($t)
            }
            /// The offset of this address inside its 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
            /// The first address of the 4 KiB page holding this address.
            pub const fn page_base(self) -> $t {
                $t(self.0 & !(PAGE_SIZE - 1))
            }
            /// The 4 KiB page number (address divided by 4096).
            pub const fn page_number(self) -> u64 {
                self.0 >> 12
            }
            /// Bytes from this address to the end of its 4 KiB page (1 to 4096).
            pub const fn bytes_to_page_end(self) -> u64 {
                PAGE_SIZE - self.page_offset()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_methods!(Gpa);
address_methods!(Gva);

impl Gva {
    /// Whether the address is canonical: bits 63 down to 47 (4-level paging) or 56 (5-level
    /// paging, `la57`) all equal.
    pub const fn is_canonical(self, la57: bool) -> bool {
        let bits = if la57 { 57 } else { 48 };
        // The top implemented bit and every bit above it, as one number: all zeros or all ones.
        let top = self.0 >> (bits - 1);
        top == 0 || top == (1u64 << (65 - bits)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_hex() {
        assert_eq!(Gpa(0x1000).to_string(), "0x1000");
        assert_eq!(Gva(0xffff_ffff_8100_0000).to_string(), "0xffffffff81000000");
        assert_eq!(format!("{:x}", Gva(0xabc)), "abc");
    }

    #[test]
    fn checked_add_overflows_to_none() {
        assert_eq!(Gpa(1).checked_add(2), Some(Gpa(3)));
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(Gva(u64::MAX - 1).checked_add(1), Some(Gva(u64::MAX)));
    }

    #[test]
    fn page_helpers() {
        let a = Gva(0x1234_5678);
        assert_eq!(a.page_offset(), 0x678);
        assert_eq!(a.page_base(), Gva(0x1234_5000));
        assert_eq!(a.page_number(), 0x12345);
        assert_eq!(a.bytes_to_page_end(), 0x1000 - 0x678);
        assert_eq!(Gpa(0x2000).bytes_to_page_end(), 0x1000);
    }

    #[test]
    fn canonical_checks_both_depths() {
        assert!(Gva(0x0000_7fff_ffff_ffff).is_canonical(false));
        assert!(!Gva(0x0000_8000_0000_0000).is_canonical(false));
        assert!(Gva(0xffff_8000_0000_0000).is_canonical(false));
        assert!(Gva(0x0000_8000_0000_0000).is_canonical(true));
        assert!(Gva(0x00ff_ffff_ffff_ffff).is_canonical(true));
        assert!(!Gva(0x0100_0000_0000_0000).is_canonical(true));
        assert!(Gva(0xff00_0000_0000_0000).is_canonical(true));
        assert!(!Gva(0xff7f_ffff_ffff_ffff).is_canonical(false));
    }
}
