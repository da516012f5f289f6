//! Reading Linux's `boot_params` ("zero page"), which hvprobe fills in and passes in `rsi`.

/// Offset of `hdr.cmd_line_ptr` (u32).
const CMD_LINE_PTR: usize = 0x228;
/// Offset of `e820_entries` (u8).
const E820_ENTRIES: usize = 0x1e8;
/// Offset of `e820_table` (20-byte entries).
const E820_TABLE: usize = 0x2d0;
/// Size of one `boot_e820_entry`.
const E820_ENTRY_SIZE: usize = 20;
/// Entries the zero page has room for (E820_MAX_ENTRIES_ZEROPAGE).
const E820_MAX_ENTRIES: usize = 128;
/// Longest command line read (Linux's COMMAND_LINE_SIZE on x86).
const CMDLINE_MAX: usize = 2048;

/// One e820 memory map entry.
#[derive(Clone, Copy)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type: 1 RAM, 2 reserved, 3 ACPI, ...
    pub kind: u32,
}

impl E820Entry {
    /// Linux's name for the entry's type.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "usable",
            2 => "reserved",
            3 => "ACPI data",
            4 => "ACPI NVS",
            5 => "unusable",
            7 => "persistent (type 7)",
            12 => "persistent (type 12)",
            _ => "unknown",
        }
    }
}

/// The boot_params page hvprobe passed.
pub struct BootParams {
    base: usize,
}

impl BootParams {
    /// Wraps the boot_params page at `base`.
    ///
    /// # Safety
    /// `base` must be the address of a readable 4 KiB boot_params page whose `cmd_line_ptr`
    /// is 0 or points to a readable NUL-terminated string, all of which stays unchanged for
    /// the rest of the kernel's life. hvprobe's boot contract guarantees this for `rsi`.
    pub unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: offset lies inside the boot_params page, readable per `new`'s contract;
        // read_unaligned because the zero page packs its fields.
        unsafe { core::ptr::read_unaligned((self.base + offset) as *const T) }
    }

    /// The command line, without its NUL (empty if hvprobe passed none).
    pub fn cmdline(&self) -> &'static [u8] {
        let ptr: u32 = self.read(CMD_LINE_PTR);
        if ptr == 0 {
            return &[];
        }
        let start = ptr as usize as *const u8;
        let mut len = 0;
        // SAFETY: per `new`'s contract the string is readable up to its NUL; CMDLINE_MAX bounds
        // the scan if it is missing.
        while len < CMDLINE_MAX && unsafe { start.add(len).read() } != 0 {
            len += 1;
        }
        // SAFETY: the `len` bytes from `start` were just read, and never change (see `new`).
        unsafe { core::slice::from_raw_parts(start, len) }
    }

    /// The e820 memory map.
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let count = usize::from(self.read::<u8>(E820_ENTRIES)).min(E820_MAX_ENTRIES);
        (0..count).map(move |i| {
            let entry = E820_TABLE + i * E820_ENTRY_SIZE;
            E820Entry {
                addr: self.read(entry),
                size: self.read(entry + 8),
                kind: self.read(entry + 16),
            }
        })
    }
}

/// The value of the last `key=value` parameter named `key` on `cmdline`, if any.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&b| b == b' ')
        .filter_map(|word| {
            let value = word.strip_prefix(key)?;
            value.strip_prefix(b"=")
        })
        .next_back()
}
