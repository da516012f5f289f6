//! JSON lines: one object per record, every field kept (the vCPU and the RIP's symbol that
//! mmiotrace has no column for included). Addresses, values and lengths are hex strings
//! (`"0xfebf0000"`), so 64-bit values survive JavaScript-style readers; times are integer
//! nanoseconds since the sink's creation. `kind` is one of read, write, map, unmap, mark,
//! lost, pcidev; `space` is mmio or pio.

use serde::Serialize;

use super::{Access, PciDevInfo, Space, TraceRecord};

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

#[derive(Serialize)]
struct AccessLine<'a> {
    time_ns: u64,
    vcpu: u32,
    space: &'static str,
    addr: String,
    width: u8,
    value: String,
    rip: Option<String>,
    symbol: Option<&'a str>,
    map_id: Option<u32>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line<'a> {
    Read(AccessLine<'a>),
    Write(AccessLine<'a>),
    Map {
        time_ns: u64,
        id: u32,
        phys: String,
        virt: String,
        len: String,
        pc: String,
    },
    Unmap {
        time_ns: u64,
        id: u32,
        pc: String,
    },
    Mark {
        time_ns: u64,
        text: &'a str,
    },
    Lost {
        time_ns: u64,
        count: u64,
    },
    Pcidev {
        bus: u8,
        devfn: u8,
        vendor: String,
        device: String,
        irq: u8,
        bars: Vec<String>,
        sizes: Vec<String>,
        driver: Option<&'a str>,
    },
}

fn access_line(access: &Access) -> Line<'_> {
    let line = AccessLine {
        time_ns: access.time_ns,
        vcpu: access.vcpu,
        space: match access.space {
            Space::Mmio => "mmio",
            Space::Pio => "pio",
        },
        addr: hex(access.addr),
        width: access.width,
        value: hex(access.value),
        rip: access.rip.map(hex),
        symbol: access.symbol.as_deref(),
        map_id: access.map_id,
    };
    if access.write {
        Line::Write(line)
    } else {
        Line::Read(line)
    }
}

fn pcidev_line(dev: &PciDevInfo) -> Line<'_> {
    Line::Pcidev {
        bus: dev.bus,
        devfn: dev.devfn,
        vendor: format!("{:#06x}", dev.vendor),
        device: format!("{:#06x}", dev.device),
        irq: dev.irq,
        bars: dev.bars.iter().copied().map(hex).collect(),
        sizes: dev.sizes.iter().copied().map(hex).collect(),
        driver: dev.driver.as_deref(),
    }
}

/// The line (with its `\n`) for `record`.
pub fn format_record(record: &TraceRecord) -> String {
    let line = match record {
        TraceRecord::Access(access) => access_line(access),
        TraceRecord::Map {
            time_ns,
            id,
            phys,
            virt,
            len,
            pc,
        } => Line::Map {
            time_ns: *time_ns,
            id: *id,
            phys: hex(*phys),
            virt: hex(*virt),
            len: hex(*len),
            pc: hex(*pc),
        },
        TraceRecord::Unmap { time_ns, id, pc } => Line::Unmap {
            time_ns: *time_ns,
            id: *id,
            pc: hex(*pc),
        },
        TraceRecord::Mark { time_ns, text } => Line::Mark {
            time_ns: *time_ns,
            text,
        },
        TraceRecord::Lost { time_ns, count } => Line::Lost {
            time_ns: *time_ns,
            count: *count,
        },
        TraceRecord::PciDev(dev) => pcidev_line(dev),
    };
    // Serializing plain structs of strings and integers cannot fail.
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}
