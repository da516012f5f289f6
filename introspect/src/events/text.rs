//! The human text format: one dmesg-style line per event.
//!
//! ```text
//! [   1.234567] vcpu0 probe start_kernel+0x0 (0xffffffff83079e46) hit 1 rdi=0x1000 rsi=0x0
//! [   1.250000] vcpu1 watch write jiffies_64+0x0 (0xffffffff82e0a940) hit 3 rip=0xffffffff8100
//! [   1.260000] vcpu0 mmio W 4 0xfea00004 = 0x12345678 rip=0xffffffffc0001234 edu_probe+0x34
//! [   1.270000] map 1 0xfea00000 len 0x100000 pc 0x0
//! [   1.300000] lost 12 events
//! ```
//!
//! A line is built in a byte buffer with hand-written number formatting ([`super::num`]).

use super::num::{dec, dec_padded, hex};
use super::{Event, EventKind, Lifecycle, Space};

/// Appends `event` as one line.
pub(super) fn encode(line: &mut Vec<u8>, event: &Event) {
    line.push(b'[');
    dec_padded(line, event.time_ns / 1_000_000_000, 4, b' ');
    line.push(b'.');
    dec_padded(line, event.time_ns % 1_000_000_000 / 1_000, 6, b'0');
    line.extend_from_slice(b"] ");
    let kind: &[u8] = match &event.kind {
        EventKind::Probe => b"probe",
        EventKind::HwBreak => b"hbreak",
        EventKind::Watch { write: true } => b"watch write",
        EventKind::Watch { write: false } => b"watch read",
        EventKind::Lost { count } => {
            line.extend_from_slice(b"lost ");
            dec(line, *count);
            line.extend_from_slice(b" events\n");
            return;
        }
        EventKind::Access(a) => {
            line.extend_from_slice(b"vcpu");
            dec(line, u64::from(event.vcpu));
            line.extend_from_slice(match (a.space, a.write) {
                (Space::Mmio, false) => b" mmio R ",
                (Space::Mmio, true) => b" mmio W ",
                (Space::Pio, false) => b" pio R ",
                (Space::Pio, true) => b" pio W ",
            });
            dec(line, u64::from(a.width));
            line.push(b' ');
            hex(line, event.addr);
            line.extend_from_slice(b" = ");
            hex(line, a.value);
            if let Some(rip) = a.rip {
                line.extend_from_slice(b" rip=");
                hex(line, rip);
            }
            if let Some(symbol) = &event.symbol {
                line.push(b' ');
                line.extend_from_slice(symbol.as_bytes());
            }
            line.push(b'\n');
            return;
        }
        EventKind::Map { id, virt, len, pc } => {
            line.extend_from_slice(b"map ");
            dec(line, u64::from(*id));
            line.push(b' ');
            hex(line, event.addr);
            line.extend_from_slice(b" len ");
            hex(line, *len);
            if *virt != 0 {
                line.extend_from_slice(b" virt ");
                hex(line, *virt);
            }
            line.extend_from_slice(b" pc ");
            hex(line, *pc);
            line.push(b'\n');
            return;
        }
        EventKind::Unmap { id, pc } => {
            line.extend_from_slice(b"unmap ");
            dec(line, u64::from(*id));
            line.extend_from_slice(b" pc ");
            hex(line, *pc);
            line.push(b'\n');
            return;
        }
        EventKind::Mark(text) => {
            line.extend_from_slice(b"mark ");
            push_one_line(line, text);
            line.push(b'\n');
            return;
        }
        EventKind::PciDev(dev) => {
            let s = format!(
                "pcidev {:02x}:{:02x}.{} {:04x}:{:04x} {}\n",
                dev.bus,
                dev.devfn >> 3,
                dev.devfn & 7,
                dev.vendor,
                dev.device,
                dev.driver.as_deref().unwrap_or("-")
            );
            line.extend_from_slice(s.as_bytes());
            return;
        }
        EventKind::Lifecycle(what) => {
            line.extend_from_slice(b"vm ");
            match what {
                Lifecycle::Phase(p) => push_one_line(line, p),
                Lifecycle::Paused => line.extend_from_slice(b"paused"),
                Lifecycle::Resumed => line.extend_from_slice(b"resumed"),
                Lifecycle::Exit(how) => {
                    line.extend_from_slice(b"exit ");
                    push_one_line(line, how);
                }
            }
            line.push(b'\n');
            return;
        }
    };
    line.extend_from_slice(b"vcpu");
    dec(line, u64::from(event.vcpu));
    line.push(b' ');
    line.extend_from_slice(kind);
    line.push(b' ');
    match &event.symbol {
        Some(symbol) => {
            line.extend_from_slice(symbol.as_bytes());
            line.extend_from_slice(b" (");
            hex(line, event.addr);
            line.push(b')');
        }
        None => hex(line, event.addr),
    }
    line.extend_from_slice(b" hit ");
    dec(line, event.hit);
    for (name, value) in event.regs.iter() {
        line.push(b' ');
        line.extend_from_slice(name.as_bytes());
        line.push(b'=');
        hex(line, value);
    }
    line.push(b'\n');
}

/// Appends `text` with line breaks as spaces.
fn push_one_line(line: &mut Vec<u8>, text: &str) {
    line.extend(
        text.bytes()
            .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
}
