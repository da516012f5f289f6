//! The Intel MultiProcessor table (spec 1.4): its floating pointer in the last KiB of base
//! memory (where Linux scans for it), the configuration table in the reserved BIOS area at
//! [`MP_TABLE_START`] (room for 254 CPUs). Without ACPI, this is how
//! Linux learns the CPUs (so it can start the secondaries through the LAPIC), the ISA bus and
//! the IOAPIC with its 16 ISA interrupts.

use super::BootError;
use crate::layout::{APIC_START, EBDA_START, IOAPIC_START, MP_TABLE_START};
use crate::memory::{Gpa, GuestMem};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const ISA_IRQS: u8 = 16;

/// Builds the 16-byte floating pointer and the configuration table that will live at
/// guest address `table_addr`.
pub fn build(table_addr: u64, cpus: u8) -> Result<([u8; 16], Vec<u8>), BootError> {
    if cpus == 0 || cpus > 254 {
        return Err(BootError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = 1 | if cpu == 0 { 2 } else { 0 }; // enabled, BSP
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&u32::try_from(IOAPIC_START).unwrap_or(0).to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // INT, conforming polarity/trigger, from ISA bus irq to the same IOAPIC pin
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT (the 8259 PIC), LINT1 = NMI, on every LAPIC
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    let len = u16::try_from(44 + entries.len()).map_err(|_| BootError::TooManyCpus(cpus))?;
    table.extend_from_slice(&len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HVPROBE ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&u32::try_from(APIC_START).unwrap_or(0).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = [0u8; 16];
    mpf[..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&u32::try_from(table_addr).unwrap_or(0).to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = 4; // spec revision 1.4
    mpf[10] = checksum(&mpf);
    Ok((mpf, table))
}

/// Writes the floating pointer at the EBDA and the table for `cpus` vCPUs at
/// [`MP_TABLE_START`].
pub fn write(mem: &GuestMem, cpus: u8) -> Result<(), BootError> {
    let (mpf, table) = build(MP_TABLE_START, cpus)?;
    mem.write(Gpa(EBDA_START), &mpf)
        .map_err(BootError::mem("MP floating pointer"))?;
    mem.write(Gpa(MP_TABLE_START), &table)
        .map_err(BootError::mem("MP table"))
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 8, 254] {
            let (mpf, t) = build(MP_TABLE_START, cpus).unwrap();
            assert_eq!(&mpf[..4], b"_MP_");
            assert_eq!(sum(&mpf), 0, "floating pointer checksum");
            assert_eq!(
                u32::from_le_bytes(mpf[4..8].try_into().unwrap()),
                u32::try_from(MP_TABLE_START).unwrap()
            );
            let len = usize::from(u16::from_le_bytes([t[4], t[5]]));
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(len, t.len());
            assert_eq!(sum(&t), 0, "table checksum");
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(usize::from(count), usize::from(cpus) + 2 + 16 + 2);
        }
        assert!(build(MP_TABLE_START, 0).is_err());
        assert!(build(MP_TABLE_START, 255).is_err());
    }

    #[test]
    fn fits_in_the_bios_area() {
        let (_, t) = build(MP_TABLE_START, 254).unwrap();
        assert!(MP_TABLE_START + t.len() as u64 <= crate::layout::HIMEM_START);
    }
}
