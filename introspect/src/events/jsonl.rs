//! The JSON lines format: one object per event, addresses and registers as hex strings.
//!
//! ```text
//! {"time_ns":1234567000,"vcpu":0,"kind":"probe","source":"probe start_kernel","addr":"0xffffffff83079e46","symbol":"start_kernel+0x0","hit":1,"regs":{"rdi":"0x1000"}}
//! {"time_ns":1250000000,"vcpu":1,"kind":"watch","write":true,"source":"watch jiffies_64","addr":"0xffffffff82e0a940","hit":3,"regs":{}}
//! {"time_ns":1300000000,"kind":"lost","count":12}
//! ```
//!
//! `write` appears for watchpoints only; `source` and `symbol` are left out when unknown.

use std::io::{self, Write};

use serde::{Serialize, Serializer};

use super::{Event, EventKind, Sources};

/// A `u64` written as a `"0x..."` string.
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// Registers as an object of hex strings, in their order.
struct Regs<'a>(&'a [(&'static str, u64)]);

impl Serialize for Regs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|&(name, value)| (name, Hex(value))))
    }
}

#[derive(Serialize)]
struct Hit<'a> {
    time_ns: u64,
    vcpu: u32,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    write: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    addr: Hex,
    #[serde(skip_serializing_if = "Option::is_none")]
    symbol: Option<&'a str>,
    hit: u64,
    regs: Regs<'a>,
}

#[derive(Serialize)]
struct Lost {
    time_ns: u64,
    kind: &'static str,
    count: u64,
}

/// Writes `event` as one line.
pub(super) fn write_event(out: &mut dyn Write, event: &Event, sources: &Sources) -> io::Result<()> {
    let (kind, write) = match event.kind {
        EventKind::Lost { count } => {
            let lost = Lost {
                time_ns: event.time_ns,
                kind: "lost",
                count,
            };
            serde_json::to_writer(&mut *out, &lost)?;
            return out.write_all(b"\n");
        }
        EventKind::Probe => ("probe", None),
        EventKind::HwBreak => ("hbreak", None),
        EventKind::Watch { write } => ("watch", Some(write)),
    };
    let hit = Hit {
        time_ns: event.time_ns,
        vcpu: event.vcpu,
        kind,
        write,
        source: sources.get(event.source).map(|s| s.name()),
        addr: Hex(event.addr),
        symbol: event.symbol.as_deref(),
        hit: event.hit,
        regs: Regs(&event.regs),
    };
    serde_json::to_writer(&mut *out, &hit)?;
    out.write_all(b"\n")
}
