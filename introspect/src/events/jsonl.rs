//! The JSON lines format: one object per event. Addresses, values and registers are hex
//! strings (`"0xfebf0000"`, so 64-bit values survive JavaScript-style readers); times are
//! integer nanoseconds on the hub's clock.
//!
//! ```text
//! {"time_ns":1234567000,"vcpu":0,"kind":"probe","source":"probe start_kernel","addr":"0xffffffff83079e46","symbol":"start_kernel+0x0","hit":1,"regs":{"rdi":"0x1000"}}
//! {"time_ns":1250000000,"vcpu":1,"kind":"watch","write":true,"source":"watch jiffies_64","addr":"0xffffffff82e0a940","hit":3,"regs":{}}
//! {"kind":"write","time_ns":1260000,"vcpu":0,"space":"mmio","addr":"0xfea00004","width":4,"value":"0x1234","rip":"0xffffffffc0001234","symbol":"edu_probe+0x34","map_id":1}
//! {"kind":"map","time_ns":1000000,"id":1,"phys":"0xfea00000","virt":"0x0","len":"0x1000","pc":"0x0"}
//! {"time_ns":1300000000,"kind":"lost","count":12}
//! ```
//!
//! Hits: `write` appears for watchpoints only; `source` and `symbol` are left out when
//! unknown. Accesses: `kind` read or write, `space` mmio or pio, `rip`, `symbol` and `map_id`
//! null when unknown. Other kinds: map, unmap, mark, pcidev, lost (with `source` when an
//! in-guest ring overflowed), lifecycle. Lines are built by hand (no serde per event): the
//! writer keeps up with millions of events per second.

use super::num::{dec, hex_str, json_str};
use super::{Event, EventKind, Lifecycle, Sources, Space};

fn key(line: &mut Vec<u8>, k: &[u8]) {
    line.extend_from_slice(b",\"");
    line.extend_from_slice(k);
    line.extend_from_slice(b"\":");
}

/// Appends `event` as one line.
pub(super) fn encode(line: &mut Vec<u8>, event: &Event, sources: &Sources) {
    let source = sources.get(event.source).map(|s| s.name());
    let hit_kind: &[u8] = match &event.kind {
        EventKind::Probe => b"probe",
        EventKind::HwBreak => b"hbreak",
        EventKind::Watch { .. } => b"watch",
        EventKind::Lost { count } => {
            line.extend_from_slice(b"{\"time_ns\":");
            dec(line, event.time_ns);
            line.extend_from_slice(b",\"kind\":\"lost\",\"count\":");
            dec(line, *count);
            if let Some(name) = source {
                key(line, b"source");
                json_str(line, name);
            }
            line.extend_from_slice(b"}\n");
            return;
        }
        other => return encode_other(line, event, other),
    };
    line.extend_from_slice(b"{\"time_ns\":");
    dec(line, event.time_ns);
    key(line, b"vcpu");
    dec(line, u64::from(event.vcpu));
    line.extend_from_slice(b",\"kind\":\"");
    line.extend_from_slice(hit_kind);
    line.push(b'"');
    if let EventKind::Watch { write } = event.kind {
        key(line, b"write");
        line.extend_from_slice(if write { b"true" } else { b"false" });
    }
    if let Some(name) = source {
        key(line, b"source");
        json_str(line, name);
    }
    key(line, b"addr");
    hex_str(line, event.addr);
    if let Some(symbol) = &event.symbol {
        key(line, b"symbol");
        json_str(line, symbol);
    }
    key(line, b"hit");
    dec(line, event.hit);
    line.extend_from_slice(b",\"regs\":{");
    for (i, (name, value)) in event.regs.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        line.push(b'"');
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b"\":");
        hex_str(line, value);
    }
    line.extend_from_slice(b"}}\n");
}

fn opt_hex(line: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => hex_str(line, v),
        None => line.extend_from_slice(b"null"),
    }
}

fn head(line: &mut Vec<u8>, kind: &[u8], time_ns: u64) {
    line.extend_from_slice(b"{\"kind\":\"");
    line.extend_from_slice(kind);
    line.extend_from_slice(b"\",\"time_ns\":");
    dec(line, time_ns);
}

fn encode_other(line: &mut Vec<u8>, event: &Event, kind: &EventKind) {
    match kind {
        EventKind::Access(a) => {
            head(
                line,
                if a.write { b"write" } else { b"read" },
                event.time_ns,
            );
            key(line, b"vcpu");
            dec(line, u64::from(event.vcpu));
            line.extend_from_slice(match a.space {
                Space::Mmio => b",\"space\":\"mmio\"",
                Space::Pio => b",\"space\":\"pio\"",
            });
            key(line, b"addr");
            hex_str(line, event.addr);
            key(line, b"width");
            dec(line, u64::from(a.width));
            key(line, b"value");
            hex_str(line, a.value);
            key(line, b"rip");
            opt_hex(line, a.rip);
            key(line, b"symbol");
            match &event.symbol {
                Some(s) => json_str(line, s),
                None => line.extend_from_slice(b"null"),
            }
            key(line, b"map_id");
            match a.map_id {
                Some(id) => dec(line, u64::from(id)),
                None => line.extend_from_slice(b"null"),
            }
        }
        EventKind::Map { id, virt, len, pc } => {
            head(line, b"map", event.time_ns);
            key(line, b"id");
            dec(line, u64::from(*id));
            key(line, b"phys");
            hex_str(line, event.addr);
            key(line, b"virt");
            hex_str(line, *virt);
            key(line, b"len");
            hex_str(line, *len);
            key(line, b"pc");
            hex_str(line, *pc);
        }
        EventKind::Unmap { id, pc } => {
            head(line, b"unmap", event.time_ns);
            key(line, b"id");
            dec(line, u64::from(*id));
            key(line, b"pc");
            hex_str(line, *pc);
        }
        EventKind::Mark(text) => {
            head(line, b"mark", event.time_ns);
            key(line, b"text");
            json_str(line, text);
        }
        EventKind::PciDev(dev) => {
            line.extend_from_slice(b"{\"kind\":\"pcidev\",\"bus\":");
            dec(line, u64::from(dev.bus));
            key(line, b"devfn");
            dec(line, u64::from(dev.devfn));
            key(line, b"vendor");
            json_str(line, &format!("{:#06x}", dev.vendor));
            key(line, b"device");
            json_str(line, &format!("{:#06x}", dev.device));
            key(line, b"irq");
            dec(line, u64::from(dev.irq));
            for (name, values) in [(&b"bars"[..], &dev.bars), (b"sizes", &dev.sizes)] {
                key(line, name);
                line.push(b'[');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        line.push(b',');
                    }
                    hex_str(line, *v);
                }
                line.push(b']');
            }
            key(line, b"driver");
            match &dev.driver {
                Some(d) => json_str(line, d),
                None => line.extend_from_slice(b"null"),
            }
        }
        EventKind::Lifecycle(what) => {
            head(line, b"lifecycle", event.time_ns);
            key(line, b"vcpu");
            dec(line, u64::from(event.vcpu));
            let (name, text): (&[u8], Option<&str>) = match what {
                Lifecycle::Phase(p) => (b"phase", Some(p)),
                Lifecycle::Paused => (b"paused", None),
                Lifecycle::Resumed => (b"resumed", None),
                Lifecycle::Exit(how) => (b"exit", Some(how)),
            };
            line.extend_from_slice(b",\"what\":\"");
            line.extend_from_slice(name);
            line.push(b'"');
            if let Some(text) = text {
                key(line, b"text");
                json_str(line, text);
            }
        }
        EventKind::Probe
        | EventKind::HwBreak
        | EventKind::Watch { .. }
        | EventKind::Lost { .. } => {
            unreachable!("hits and lost records are encoded by the caller")
        }
    }
    line.extend_from_slice(b"}\n");
}
