//! The human text format: one dmesg-style line per event.
//!
//! ```text
//! [   1.234567] vcpu0 probe start_kernel+0x0 (0xffffffff83079e46) hit 1 rdi=0x1000 rsi=0x0
//! [   1.250000] vcpu1 watch write jiffies_64+0x0 (0xffffffff82e0a940) hit 3 rip=0xffffffff8100
//! [   1.300000] lost 12 events
//! ```
//!
//! A line is built in a byte buffer with hand-written number formatting and written once:
//! the writer thread formats every event (in-guest probe hits arrive by the million), and
//! `core::fmt` cost about three times as many instructions per line (callgrind).

use std::io::{self, Write};

use super::{Event, EventKind};

/// Appends `v` in decimal.
fn dec(buf: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `v` in decimal, padded on the left with `pad` to `width` characters.
fn dec_padded(buf: &mut Vec<u8>, v: u64, width: usize, pad: u8) {
    let start = buf.len();
    dec(buf, v);
    let len = buf.len() - start;
    if len < width {
        buf.splice(start..start, std::iter::repeat_n(pad, width - len));
    }
}

/// Appends `v` as `{:#x}`: `0x`, lowercase, no leading zeros.
fn hex(buf: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.extend_from_slice(b"0x");
    let nibbles = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for k in (0..nibbles).rev() {
        buf.push(DIGITS[usize::try_from((v >> (4 * k)) & 0xf).unwrap_or(0)]);
    }
}

/// Writes `event` as one line.
pub(super) fn write_event(out: &mut dyn Write, event: &Event) -> io::Result<()> {
    let mut line = Vec::with_capacity(192);
    line.push(b'[');
    dec_padded(&mut line, event.time_ns / 1_000_000_000, 4, b' ');
    line.push(b'.');
    dec_padded(&mut line, event.time_ns % 1_000_000_000 / 1_000, 6, b'0');
    line.extend_from_slice(b"] ");
    let kind: &[u8] = match event.kind {
        EventKind::Lost { count } => {
            line.extend_from_slice(b"lost ");
            dec(&mut line, count);
            line.extend_from_slice(b" events\n");
            return out.write_all(&line);
        }
        EventKind::Probe => b"probe",
        EventKind::HwBreak => b"hbreak",
        EventKind::Watch { write: true } => b"watch write",
        EventKind::Watch { write: false } => b"watch read",
    };
    line.extend_from_slice(b"vcpu");
    dec(&mut line, u64::from(event.vcpu));
    line.push(b' ');
    line.extend_from_slice(kind);
    line.push(b' ');
    match &event.symbol {
        Some(symbol) => {
            line.extend_from_slice(symbol.as_bytes());
            line.extend_from_slice(b" (");
            hex(&mut line, event.addr);
            line.push(b')');
        }
        None => hex(&mut line, event.addr),
    }
    line.extend_from_slice(b" hit ");
    dec(&mut line, event.hit);
    for (name, value) in &event.regs {
        line.push(b' ');
        line.extend_from_slice(name.as_bytes());
        line.push(b'=');
        hex(&mut line, *value);
    }
    line.push(b'\n');
    out.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_as_core_fmt_does() {
        for v in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            1_234_567,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            dec(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
            let mut b = Vec::new();
            hex(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:#x}"));
            let mut b = Vec::new();
            dec_padded(&mut b, v, 6, b'0');
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:06}"));
            let mut b = Vec::new();
            dec_padded(&mut b, v, 4, b' ');
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:>4}"));
        }
    }
}
