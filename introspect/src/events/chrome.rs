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
use std::fmt::Write as _;

use serde_json::{Value, json};

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
    /// The events for `event`, each preceded by `",\n"` (the header already holds one event).
    pub(crate) fn encode(&mut self, event: &Event, sources: &Sources) -> String {
        let time_ns = event.time_ns;
        let (tid, text) = match &event.kind {
            EventKind::Access(access) => (event.vcpu, access_event(event, access)),
            EventKind::Probe | EventKind::HwBreak | EventKind::Watch { .. } => {
                (event.vcpu, hit_event(event, sources))
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
        let mut out = String::new();
        if self.named.insert(tid) {
            let name = if tid == VMM_TID {
                "hvprobe".to_owned()
            } else {
                format!("vCPU {tid}")
            };
            let _ = write!(out, ",\n{}", metadata("thread_name", tid, &name));
        }
        let _ = write!(out, ",\n{text}");
        out
    }
}

fn hit_event(event: &Event, sources: &Sources) -> String {
    let cat = match event.kind {
        EventKind::HwBreak => "hbreak",
        EventKind::Watch { .. } => "watch",
        _ => "probe",
    };
    let name = sources
        .get(event.source)
        .map(|s| s.name().to_owned())
        .or_else(|| event.symbol.as_deref().map(str::to_owned))
        .unwrap_or_else(|| format!("{cat} {:#x}", event.addr));
    let regs: serde_json::Map<String, Value> = event
        .regs
        .iter()
        .map(|(n, v)| (n.to_owned(), Value::from(hex(v))))
        .collect();
    let mut args = json!({
        "addr": hex(event.addr), "symbol": event.symbol.as_deref(), "hit": event.hit,
        "regs": regs,
    });
    if let EventKind::Watch { write } = event.kind {
        args["write"] = Value::from(write);
    }
    instant(&name, cat, "t", event.time_ns, event.vcpu, &args)
}

fn access_event(event: &Event, access: &Access) -> String {
    let (space, cat) = match access.space {
        Space::Mmio => ("MMIO", "mmio"),
        Space::Pio => ("PIO", "pio"),
    };
    let rw = if access.write { 'W' } else { 'R' };
    let name = format!("{space} {rw} {} {:#x}", access.width, event.addr);
    let args = json!({
        "addr": hex(event.addr), "value": hex(access.value), "width": access.width,
        "rip": access.rip.map(hex), "symbol": event.symbol.as_deref(), "map_id": access.map_id,
    });
    instant(&name, cat, "t", event.time_ns, event.vcpu, &args)
}
