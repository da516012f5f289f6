//! boot_params (the "zero page"), its e820 map, and the kernel command line.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout::{
    BOOT_PARAMS_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_HOLE_END,
    MMIO_HOLE_START,
};
use crate::memory::{Gpa, GuestMem};

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADFLAG_LOADED_HIGH: u8 = 0x01;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;

/// What goes into boot_params besides the memory map.
#[derive(Clone, Debug, Default)]
pub struct BootParamsInput {
    /// The bzImage's own setup header, when the kernel came from one.
    pub setup_header: Option<setup_header>,
    /// Initrd location and size.
    pub initrd: Option<(Gpa, u64)>,
    /// Length of the command line written at [`CMDLINE_START`], NUL included.
    pub cmdline_len: usize,
}

/// The e820 map for a guest with `mem_size` bytes of RAM: low memory up to the EBDA,
/// reserved EBDA and BIOS area, RAM from 1 MiB up to the MMIO hole, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    let low_top = mem_size.min(MMIO_HOLE_START);
    map.push((HIMEM_START, low_top - HIMEM_START, E820_RAM));
    if mem_size > MMIO_HOLE_START {
        map.push((MMIO_HOLE_END, mem_size - MMIO_HOLE_START, E820_RAM));
    }
    map
}

/// Writes the command line (NUL-terminated) at [`CMDLINE_START`]; returns its length with NUL.
pub fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<usize, BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len,
            max: CMDLINE_MAX_SIZE,
        });
    }
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write(Gpa(CMDLINE_START), &bytes)
        .map_err(BootError::mem("command line"))?;
    Ok(len)
}

/// Builds boot_params and writes it at [`BOOT_PARAMS_START`].
pub fn write_boot_params(mem: &GuestMem, input: &BootParamsInput) -> Result<Gpa, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
    }
    let hdr = &mut params.hdr;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    hdr.loadflags |= LOADFLAG_LOADED_HIGH | LOADFLAG_CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or(0);
    hdr.cmdline_size = u32::try_from(input.cmdline_len).unwrap_or(0);
    if let Some((addr, size)) = input.initrd {
        hdr.ramdisk_image = u32::try_from(addr.raw()).unwrap_or(0);
        hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }
    let map = e820_map(mem.size());
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or(0);
    mem.inner()
        .write_obj(params, GuestAddress(BOOT_PARAMS_START))
        .map_err(|_| BootError::Memory {
            what: "boot_params",
            source: crate::memory::MemoryError::OutOfRange {
                addr: Gpa(BOOT_PARAMS_START),
                len: std::mem::size_of::<boot_params>(),
            },
        })?;
    Ok(Gpa(BOOT_PARAMS_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_skips_the_hole() {
        let m = e820_map(256 << 20);
        assert_eq!(
            m.last(),
            Some(&(HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM))
        );
        let big = e820_map(5 << 30);
        assert_eq!(big.last(), Some(&(MMIO_HOLE_END, 2 << 30, E820_RAM)));
        let ram: u64 = big.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert!(ram < 5 << 30 && ram > (5 << 30) - (1 << 20));
    }

    #[test]
    fn boot_params_fields_land_at_protocol_offsets() {
        let mem = GuestMem::new(64 << 20).unwrap();
        let len = write_cmdline(&mem, "console=ttyS0").unwrap();
        assert_eq!(len, 14);
        let input = BootParamsInput {
            cmdline_len: len,
            initrd: Some((Gpa(0x300_0000), 0x1234)),
            ..Default::default()
        };
        let bp = write_boot_params(&mem, &input).unwrap();
        let mut page = [0u8; 4096];
        mem.read(bp, &mut page).unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(u64::from(u32_at(0x228)), CMDLINE_START);
        assert_eq!(u32_at(0x218), 0x300_0000);
        assert_eq!(u32_at(0x21c), 0x1234);
        assert_eq!(page[0x1e8], 3);
        assert_eq!(page[0x210], KERNEL_LOADER_OTHER);
        let mut cmd = [0u8; 14];
        mem.read(Gpa(CMDLINE_START), &mut cmd).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn cmdline_limits() {
        let mem = GuestMem::new(16 << 20).unwrap();
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&mem, &long),
            Err(BootError::CmdlineTooLong {
                len: 2049,
                max: 2048
            })
        ));
        assert!(matches!(
            write_cmdline(&mem, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
        assert!(write_cmdline(&mem, &"x".repeat(CMDLINE_MAX_SIZE - 1)).is_ok());
    }
}
