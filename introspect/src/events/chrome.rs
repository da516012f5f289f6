//! Chrome's Trace Event Format (the JSON object form, `{"traceEvents":[...]}`), for
//! `about:tracing`, Perfetto and other timeline viewers.
//!
//! - pid [`VM_PID`] is the VM (metadata `process_name` "hvprobe VM"); tid is the vCPU (a
//!   `thread_name` "vCPU n" metadata event precedes its first access).
//! - Probe, breakpoint and watchpoint hits are thread-scoped instant events on their vCPU's
//!   track, named after their source (`probe start_kernel`), category `probe` / `hbreak` /
//!   `watch`, with address, symbol, hit count and registers in `args`: hits and the accesses
//!   they cause sit side by side on one timeline.
//! - Accesses are thread-scoped instant events (`"ph":"i","s":"t"`), named like
//!   `MMIO W 4 0xfebf0004` or `PIO R 1 0x3f8`, with category `mmio` / `pio` and the details
//!   (address, value, width, RIP, symbol, map id) in `args`.
//! - Events that belong to no vCPU (MAP, UNMAP, MARK, lost events, PCIDEV, lifecycle) are instant events
//!   on the pseudo-thread [`VMM_TID`], named "hvprobe": MAP / UNMAP process-scoped, MARK and
//!   lost events global so they cut across the whole timeline, PCIDEV at time 0.
//! - `ts` is in microseconds with nanosecond decimals. The closing `]}` is written when the
//!   writer finishes, early or not.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::num::{dec, dec_padded, hex as push_hex, hex_str, json_str};
use super::{Access, Event, EventKind, Lifecycle, Sources, Space};

/// The Chrome `pid` of the VM.
pub const VM_PID: u32 = 1;
/// The Chrome `tid` of events that belong to no vCPU.
pub const VMM_TID: u32 = 1_000_000;

/// Opening of the document and the process name.
pub(crate) fn header() -> String {
    format!(
        "{{\"traceEvents\":[\n{}",
        metadata("process_name", 0, "hvprobe VM")
    )
}

/// Closing of the document.
pub(crate) fn footer() -> &'static str {
    "\n],\"displayTimeUnit\":\"ns\"}\n"
}

fn metadata(name: &str, tid: u32, value: &str) -> String {
    json!({"name": name, "ph": "M", "pid": VM_PID, "tid": tid, "args": {"name": value}}).to_string()
}

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

/// Microseconds with three decimals, as a JSON number.
fn ts(time_ns: u64) -> String {
    format!("{}.{:03}", time_ns / 1000, time_ns % 1000)
}

fn instant(name: &str, cat: &str, scope: &str, time_ns: u64, tid: u32, args: &Value) -> String {
    format!(
        "{{\"name\":{},\"cat\":\"{cat}\",\"ph\":\"i\",\"s\":\"{scope}\",\"ts\":{},\"pid\":{VM_PID},\"tid\":{tid},\"args\":{args}}}",
        Value::from(name),
        ts(time_ns),
    )
}

/// Turns records into events, remembering which threads it has named.
#[derive(Debug, Default)]
pub(crate) struct ChromeEncoder {
    named: BTreeSet<u32>,
}

impl ChromeEncoder {
    /// Appends the events for `event` to `out`, each preceded by `",\n"` (the header
    /// already holds one event). Hits and accesses (the high-rate kinds) are formatted by hand
    /// into `out`; the rare kinds go through `serde_json`.
    pub(crate) fn encode(&mut self, out: &mut Vec<u8>, event: &Event, sources: &Sources) {
        let tid = match &event.kind {
            EventKind::Access(_)
            | EventKind::Probe
            | EventKind::HwBreak
            | EventKind::Watch { .. } => event.vcpu,
            _ => VMM_TID,
        };
        if !self.named.contains(&tid) {
            self.named.insert(tid);
            let name = if tid == VMM_TID {
                "hvprobe".to_owned()
            } else {
                format!("vCPU {tid}")
            };
            out.extend_from_slice(b",\n");
            out.extend_from_slice(metadata("thread_name", tid, &name).as_bytes());
        }
        out.extend_from_slice(b",\n");
        match &event.kind {
            EventKind::Access(access) => access_event(out, event, access),
            EventKind::Probe | EventKind::HwBreak | EventKind::Watch { .. } => {
                hit_event(out, event, sources);
            }
            other => out.extend_from_slice(rare_event(event, other, sources).as_bytes()),
        }
    }
}

/// A kind that is not a hit or an access, as serde_json makes it.
fn rare_event(event: &Event, kind: &EventKind, sources: &Sources) -> String {
    let time_ns = event.time_ns;
    let (_, text) = match kind {
        EventKind::Access(_) | EventKind::Probe | EventKind::HwBreak | EventKind::Watch { .. } => {
            unreachable!("hits and accesses are formatted by hand")
        }
        EventKind::Map { id, virt, len, pc } => {
            let args = json!({"id": id, "phys": hex(event.addr), "virt": hex(*virt),
                                  "len": hex(*len), "pc": hex(*pc)});
            (
                VMM_TID,
                instant(&format!("MAP {id}"), "map", "p", time_ns, VMM_TID, &args),
            )
        }
        EventKind::Unmap { id, pc } => {
            let args = json!({"id": id, "pc": hex(*pc)});
            (
                VMM_TID,
                instant(
                    &format!("UNMAP {id}"),
                    "unmap",
                    "p",
                    time_ns,
                    VMM_TID,
                    &args,
                ),
            )
        }
        EventKind::Mark(text) => {
            let args = json!({"text": &**text});
            (VMM_TID, instant(text, "mark", "g", time_ns, VMM_TID, &args))
        }
        EventKind::Lost { count } => {
            let source = sources.get(event.source).map(|s| s.name());
            let args = json!({"count": count, "source": source});
            let name = format!("Lost {count} events");
            (
                VMM_TID,
                instant(&name, "lost", "g", time_ns, VMM_TID, &args),
            )
        }
        EventKind::Lifecycle(what) => {
            let name = match what {
                Lifecycle::Phase(p) => format!("VM {p}"),
                Lifecycle::Paused => "VM paused".to_owned(),
                Lifecycle::Resumed => "VM resumed".to_owned(),
                Lifecycle::Exit(how) => format!("VM exit: {how}"),
            };
            let args = json!({});
            (
                VMM_TID,
                instant(&name, "lifecycle", "g", time_ns, VMM_TID, &args),
            )
        }
        EventKind::PciDev(dev) => {
            let args = json!({
                "bus": dev.bus, "devfn": dev.devfn,
                "vendor": format!("{:#06x}", dev.vendor),
                "device": format!("{:#06x}", dev.device), "irq": dev.irq,
                "bars": dev.bars.iter().copied().map(hex).collect::<Vec<_>>(),
                "sizes": dev.sizes.iter().copied().map(hex).collect::<Vec<_>>(),
                "driver": dev.driver,
            });
            let name = format!(
                "PCIDEV {:02x}:{:02x}.{} {:04x}:{:04x}",
                dev.bus,
                dev.devfn >> 3,
                dev.devfn & 7,
                dev.vendor,
                dev.device
            );
            (VMM_TID, instant(&name, "pcidev", "p", 0, VMM_TID, &args))
        }
    };
    text
}

/// `{"name":NAME,"cat":"CAT","ph":"i","s":"t","ts":TS,"pid":1,"tid":TID,"args":{` by hand.
fn instant_head(out: &mut Vec<u8>, name: &[u8], cat: &[u8], time_ns: u64, tid: u32) {
    out.extend_from_slice(b"{\"name\":");
    out.extend_from_slice(name);
    out.extend_from_slice(b",\"cat\":\"");
    out.extend_from_slice(cat);
    out.extend_from_slice(b"\",\"ph\":\"i\",\"s\":\"t\",\"ts\":");
    dec(out, time_ns / 1000);
    out.push(b'.');
    dec_padded(out, time_ns % 1000, 3, b'0');
    out.extend_from_slice(b",\"pid\":");
    dec(out, u64::from(VM_PID));
    out.extend_from_slice(b",\"tid\":");
    dec(out, u64::from(tid));
    out.extend_from_slice(b",\"args\":{");
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn hit_event(out: &mut Vec<u8>, event: &Event, sources: &Sources) {
    let cat: &[u8] = match event.kind {
        EventKind::HwBreak => b"hbreak",
        EventKind::Watch { .. } => b"watch",
        _ => b"probe",
    };
    // The name, as a JSON string: the source's, else the symbol, else "CAT 0xADDR".
    let mut name = Vec::with_capacity(64);
    match sources
        .get(event.source)
        .map(|s| s.name())
        .or(event.symbol.as_deref())
    {
        Some(n) => json_str(&mut name, n),
        None => {
            name.push(b'"');
            name.extend_from_slice(cat);
            name.push(b' ');
            push_hex(&mut name, event.addr);
            name.push(b'"');
        }
    }
    instant_head(out, &name, cat, event.time_ns, event.vcpu);
    out.extend_from_slice(b"\"addr\":");
    hex_str(out, event.addr);
    out.extend_from_slice(b",\"symbol\":");
    opt_str(out, event.symbol.as_deref());
    out.extend_from_slice(b",\"hit\":");
    dec(out, event.hit);
    out.extend_from_slice(b",\"regs\":{");
    for (i, (n, v)) in event.regs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Register names are plain identifiers: no escaping needed.
        out.push(b'"');
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b"\":");
        hex_str(out, v);
    }
    out.push(b'}');
    if let EventKind::Watch { write } = event.kind {
        out.extend_from_slice(if write {
            b",\"write\":true"
        } else {
            b",\"write\":false"
        });
    }
    out.extend_from_slice(b"}}");
}

fn access_event(out: &mut Vec<u8>, event: &Event, access: &Access) {
    let (space, cat): (&[u8], &[u8]) = match access.space {
        Space::Mmio => (b"MMIO", b"mmio"),
        Space::Pio => (b"PIO", b"pio"),
    };
    let mut name = Vec::with_capacity(40);
    name.push(b'"');
    name.extend_from_slice(space);
    name.extend_from_slice(if access.write { b" W " } else { b" R " });
    dec(&mut name, u64::from(access.width));
    name.push(b' ');
    push_hex(&mut name, event.addr);
    name.push(b'"');
    instant_head(out, &name, cat, event.time_ns, event.vcpu);
    out.extend_from_slice(b"\"addr\":");
    hex_str(out, event.addr);
    out.extend_from_slice(b",\"value\":");
    hex_str(out, access.value);
    out.extend_from_slice(b",\"width\":");
    dec(out, u64::from(access.width));
    out.extend_from_slice(b",\"rip\":");
    match access.rip {
        Some(r) => hex_str(out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"symbol\":");
    opt_str(out, event.symbol.as_deref());
    out.extend_from_slice(b",\"map_id\":");
    match access.map_id {
        Some(id) => dec(out, u64::from(id)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
}
