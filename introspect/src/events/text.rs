//! The human text format: one dmesg-style line per event.
//!
//! ```text
//! [   1.234567] vcpu0 probe start_kernel+0x0 (0xffffffff83079e46) hit 1 rdi=0x1000 rsi=0x0
//! [   1.250000] vcpu1 watch write jiffies_64+0x0 (0xffffffff82e0a940) hit 3 rip=0xffffffff8100
//! [   1.300000] lost 12 events
//! ```

use std::io::{self, Write};

use super::{Event, EventKind};

/// Writes `event` as one line.
pub(super) fn write_event(out: &mut dyn Write, event: &Event) -> io::Result<()> {
    let secs = event.time_ns / 1_000_000_000;
    let micros = event.time_ns % 1_000_000_000 / 1_000;
    write!(out, "[{secs:>4}.{micros:06}] ")?;
    let kind = match event.kind {
        EventKind::Lost { count } => return writeln!(out, "lost {count} events"),
        EventKind::Probe => "probe",
        EventKind::HwBreak => "hbreak",
        EventKind::Watch { write: true } => "watch write",
        EventKind::Watch { write: false } => "watch read",
    };
    write!(out, "vcpu{} {kind} ", event.vcpu)?;
    match &event.symbol {
        Some(symbol) => write!(out, "{symbol} ({:#x})", event.addr)?,
        None => write!(out, "{:#x}", event.addr)?,
    }
    write!(out, " hit {}", event.hit)?;
    for (name, value) in &event.regs {
        write!(out, " {name}={value:#x}")?;
    }
    writeln!(out)
}
