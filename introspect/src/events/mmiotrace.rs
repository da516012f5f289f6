//! The kernel's mmiotrace text, version 20070824, byte for byte.
//!
//! Every line below follows a `trace_seq_printf` format in the kernel's
//! `kernel/trace/trace_mmiotrace.c` (quoted next to each function); the field meanings are
//! those of `Documentation/trace/mmiotrace.rst` and `include/linux/mmiotrace.h` (width in
//! bytes, map id an `int`, value and PC `unsigned long`). Timestamps go through the kernel's
//! `ns2usecs()` (nanoseconds rounded to the nearest microsecond) and print as
//! `seconds.microseconds` (`%u.%06lu`).
//!
//! Choices where hvprobe knows more than the kernel did:
//! - **PC**: the guest RIP of the access (or the `pc` of a MAP / UNMAP). The kernel prints 0
//!   for MAP / UNMAP and "PC is zero if it is not recorded", so 0 stands for "unknown".
//! - **PID**: always 0, as the kernel prints it. Tools (envytools' demmio, the documentation's
//!   awk filter) skip the field or expect 0, and a vCPU number there would read as a process
//!   id, so the vCPU and the RIP's symbol go to the JSON lines and Chrome outputs only.
//! - **Map id**: the traced region's id; 0 for an access outside any MAPped region.
//! - **Port I/O** has no mmiotrace record type, so PIO accesses are left out of this output
//!   (counted as `skipped` in the report) and appear in JSON lines and Chrome only. Writing them
//!   as MARK text was rejected: the documented filter `/W 4 /` matches anywhere in a line, so a
//!   MARK reading "PIO W 4 ..." would be picked up as a 32-bit MMIO write.
//! - **MARK text** is one line: embedded line breaks become spaces (the kernel leaves the
//!   trailing newline to the message; we always end the line ourselves).
//! - **PCIDEV driver**: whitespace in a driver name becomes `_`, so the field stays one token.
//! - **Lost events** print as the kernel's `MARK 0.000000 Lost N events.`, whose timestamp is
//!   always zero ("This is later than where events were lost").

use std::fmt::Write as _;

use super::{Access, Event, EventKind, PciDevInfo, Space};

/// The first line of every mmiotrace (`mmio_pipe_open`: `"VERSION 20070824\n"`).
pub const VERSION_LINE: &str = "VERSION 20070824\n";

/// `ns2usecs()` then `do_div(t, USEC_PER_SEC)`, printed with `"%u.%06lu"`.
pub fn timestamp(time_ns: u64) -> String {
    let usecs = time_ns.saturating_add(500) / 1000;
    format!("{}.{:06}", usecs / 1_000_000, usecs % 1_000_000)
}

/// The kernel prints map ids with `%d` from an `int`: same bits, signed.
fn map_id(id: u32) -> i32 {
    i32::from_ne_bytes(id.to_ne_bytes())
}

/// The line (with its `\n`) for `event`, or `None` for an event mmiotrace cannot express
/// (port I/O, probe hits, lifecycle).
pub fn format_record(event: &Event) -> Option<String> {
    let time_ns = event.time_ns;
    match &event.kind {
        EventKind::Access(access) => format_access(event, access),
        EventKind::Map { id, virt, len, pc } => {
            // mmio_print_map, MMIO_PROBE:
            // "MAP %u.%06lu %d 0x%llx 0x%lx 0x%lx 0x%lx %d\n" secs, usec_rem, map_id, phys,
            // virt, len, 0UL (the PC), 0 (the PID)
            let phys = event.addr;
            Some(format!(
                "MAP {} {} {phys:#x} {virt:#x} {len:#x} {pc:#x} 0\n",
                timestamp(time_ns),
                map_id(*id)
            ))
        }
        EventKind::Unmap { id, pc } => {
            // mmio_print_map, MMIO_UNPROBE:
            // "UNMAP %u.%06lu %d 0x%lx %d\n" secs, usec_rem, map_id, 0UL (the PC), 0 (the PID)
            Some(format!(
                "UNMAP {} {} {pc:#x} 0\n",
                timestamp(time_ns),
                map_id(*id)
            ))
        }
        EventKind::Mark(text) => {
            // mmio_print_mark: "MARK %u.%06lu %s" secs, usec_rem, msg (msg ends with '\n')
            let text = text
                .strip_suffix('\n')
                .unwrap_or(text)
                .replace(['\n', '\r'], " ");
            Some(format!("MARK {} {text}\n", timestamp(time_ns)))
        }
        EventKind::Lost { count } => {
            // mmio_read: "MARK 0.000000 Lost %lu events.\n" n
            Some(format!("MARK 0.000000 Lost {count} events.\n"))
        }
        EventKind::PciDev(dev) => Some(format_pcidev(dev)),
        EventKind::Probe
        | EventKind::HwBreak
        | EventKind::Watch { .. }
        | EventKind::Lifecycle(_) => None,
    }
}

/// mmio_print_rw, MMIO_READ / MMIO_WRITE:
/// `"R %d %u.%06lu %d 0x%llx 0x%lx 0x%lx %d\n"` (and `"W ..."`) width, secs, usec_rem,
/// map_id, phys, value, pc, 0 (the PID).
fn format_access(event: &Event, access: &Access) -> Option<String> {
    if access.space != Space::Mmio {
        return None;
    }
    Some(format!(
        "{} {} {} {} {:#x} {:#x} {:#x} 0\n",
        if access.write { 'W' } else { 'R' },
        access.width,
        timestamp(event.time_ns),
        map_id(access.map_id.unwrap_or(0)),
        event.addr,
        access.value,
        access.rip.unwrap_or(0),
    ))
}

/// mmio_print_pcidev: `"PCIDEV %02x%02x %04x%04x %x"` bus, devfn, vendor, device, irq; then
/// seven `" %llx"` of `start | (flags & PCI_REGION_FLAG_MASK)`; then seven `" %llx"` of the
/// sizes (0 for an empty resource); then `" %s\n"` with the driver's name, or `" \n"`.
fn format_pcidev(dev: &PciDevInfo) -> String {
    let mut line = format!(
        "PCIDEV {:02x}{:02x} {:04x}{:04x} {:x}",
        dev.bus, dev.devfn, dev.vendor, dev.device, dev.irq
    );
    for value in dev.bars.iter().chain(dev.sizes.iter()) {
        // Writing to a String cannot fail.
        let _ = write!(line, " {value:x}");
    }
    line.push(' ');
    if let Some(driver) = &dev.driver {
        line.extend(
            driver
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c }),
        );
    }
    line.push('\n');
    line
}
