//! CTF 1.8 (the Common Trace Format): a directory holding a TSDL `metadata` file and one
//! binary stream file ([`CTF_STREAM`]), read by `babeltrace2` and Trace Compass.
//!
//! - Little-endian, every field byte-aligned (no padding), one stream (id 0) on the clock
//!   `monotonic` (nanoseconds on the hub's clock, the same as every other format's).
//! - The stream is a sequence of packets of about [`PACKET_BYTES`]: a header (CTF magic,
//!   stream id) and a context (first and last timestamp, content and packet size in bits,
//!   and `events_discarded`: the events this subscriber lost so far, which babeltrace2
//!   reports as discarded). Events in a packet must not go back in time: an event stamped
//!   before the previous one (two vCPUs racing to the hub) gets the previous one's time.
//! - Event classes: `probe`, `hbreak`, `watch` (vcpu, source, addr, hit, registers as a
//!   sequence), `access`, `map`, `unmap`, `mark`, `pcidev`, `lost`, `lifecycle`, and
//!   `source`, written once before a source's first event: its id, name, symbol and the
//!   names of its events' register values (`rip,tsc,rdi`), so a hit carries no strings.
//! - Encoding is plain byte appends (no `core::fmt`): this is the capture for high rates.

use super::{Event, EventKind, Lifecycle, SourceId, Sources, Space};

/// The stream file's name in the capture directory.
pub const CTF_STREAM: &str = "stream_0";

/// Packets are closed once they hold this many bytes.
pub const PACKET_BYTES: usize = 256 * 1024;

const MAGIC: u32 = 0xC1FC_1FC1;
/// Header (8 bytes) and context (5 x 8 bytes).
const PACKET_PREFIX: usize = 48;
/// The largest hit record: event header (10), vcpu, source, addr, hit, nregs (25), the
/// registers, the watch byte.
const HIT_MAX: usize = 10 + 25 + 8 * super::MAX_REGS + 1;

/// The TSDL metadata for the stream this module writes.
pub fn metadata() -> String {
    r#"/* CTF 1.8 */

typealias integer { size = 8; align = 8; signed = false; } := uint8_t;
typealias integer { size = 16; align = 8; signed = false; } := uint16_t;
typealias integer { size = 32; align = 8; signed = false; } := uint32_t;
typealias integer { size = 64; align = 8; signed = false; } := uint64_t;
typealias integer { size = 64; align = 8; signed = false; base = 16; } := xint64_t;
typealias integer { size = 32; align = 8; signed = true; } := int32_t;

trace {
    major = 1;
    minor = 8;
    byte_order = le;
    packet.header := struct {
        uint32_t magic;
        uint32_t stream_id;
    };
};

env {
    domain = "hvprobe";
    tracer_name = "hvprobe";
};

clock {
    name = monotonic;
    description = "hvprobe: nanoseconds since the VM started";
    freq = 1000000000;
};

typealias integer {
    size = 64; align = 8; signed = false;
    map = clock.monotonic.value;
} := clock_t;

stream {
    id = 0;
    packet.context := struct {
        clock_t timestamp_begin;
        clock_t timestamp_end;
        uint64_t content_size;
        uint64_t packet_size;
        uint64_t events_discarded;
    };
    event.header := struct {
        uint16_t id;
        clock_t timestamp;
    };
};

event {
    name = "probe";
    id = 0;
    stream_id = 0;
    fields := struct {
        uint32_t vcpu;
        uint32_t source;
        xint64_t addr;
        uint64_t hit;
        uint8_t nregs;
        xint64_t regs[nregs];
    };
};

event {
    name = "hbreak";
    id = 1;
    stream_id = 0;
    fields := struct {
        uint32_t vcpu;
        uint32_t source;
        xint64_t addr;
        uint64_t hit;
        uint8_t nregs;
        xint64_t regs[nregs];
    };
};

event {
    name = "watch";
    id = 2;
    stream_id = 0;
    fields := struct {
        uint32_t vcpu;
        uint32_t source;
        xint64_t addr;
        uint64_t hit;
        uint8_t nregs;
        xint64_t regs[nregs];
        enum : uint8_t { read = 0, write = 1 } access;
    };
};

event {
    name = "access";
    id = 3;
    stream_id = 0;
    fields := struct {
        uint32_t vcpu;
        enum : uint8_t { mmio = 0, pio = 1 } space;
        enum : uint8_t { read = 0, write = 1 } dir;
        uint8_t width;
        xint64_t addr;
        xint64_t value;
        xint64_t rip;
        int32_t map_id;
    };
};

event {
    name = "map";
    id = 4;
    stream_id = 0;
    fields := struct {
        uint32_t id;
        xint64_t phys;
        xint64_t virt;
        xint64_t len;
        xint64_t pc;
    };
};

event {
    name = "unmap";
    id = 5;
    stream_id = 0;
    fields := struct {
        uint32_t id;
        xint64_t pc;
    };
};

event {
    name = "mark";
    id = 6;
    stream_id = 0;
    fields := struct {
        string text;
    };
};

event {
    name = "pcidev";
    id = 7;
    stream_id = 0;
    fields := struct {
        uint8_t bus;
        uint8_t devfn;
        uint16_t vendor;
        uint16_t device;
        uint8_t irq;
        xint64_t bars[7];
        xint64_t sizes[7];
        string driver;
    };
};

event {
    name = "lost";
    id = 8;
    stream_id = 0;
    fields := struct {
        uint32_t source;
        uint64_t count;
    };
};

event {
    name = "source";
    id = 9;
    stream_id = 0;
    fields := struct {
        uint32_t source;
        string name;
        string symbol;
        string regs;
    };
};

event {
    name = "lifecycle";
    id = 10;
    stream_id = 0;
    fields := struct {
        uint32_t vcpu;
        enum : uint8_t { phase = 0, paused = 1, resumed = 2, exit = 3 } what;
        string text;
    };
};
"#
    .to_owned()
}

/// Builds packets of events.
#[derive(Debug)]
pub(crate) struct CtfEncoder {
    packet: Vec<u8>,
    first_ts: u64,
    last_ts: u64,
    /// Events lost by the subscription, announced so far (the packets' `events_discarded`).
    discarded: u64,
    /// Sources whose `source` event was written, by index (a bitmap: checked per event).
    described: Vec<bool>,
}

impl Default for CtfEncoder {
    fn default() -> Self {
        Self {
            packet: Vec::with_capacity(PACKET_BYTES + 4096),
            first_ts: 0,
            last_ts: 0,
            discarded: 0,
            described: Vec::new(),
        }
    }
}

fn u8_(b: &mut Vec<u8>, v: u8) {
    b.push(v);
}
fn u16_(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn u32_(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn u64_(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
/// A CTF string: its bytes up to the first NUL, then a NUL.
fn str_(b: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    b.extend_from_slice(&bytes[..end]);
    b.push(0);
}

impl CtfEncoder {
    fn header(&mut self, id: u16, time_ns: u64) {
        if self.packet.is_empty() {
            self.packet.resize(PACKET_PREFIX, 0);
            self.first_ts = time_ns.max(self.last_ts);
        }
        let ts = time_ns.max(self.last_ts);
        self.last_ts = ts;
        u16_(&mut self.packet, id);
        u64_(&mut self.packet, ts);
    }

    /// Appends `event`; a packet that is full goes to `out`. Always true (CTF expresses
    /// every kind).
    pub(crate) fn encode(&mut self, event: &Event, sources: &Sources, out: &mut Vec<u8>) -> bool {
        let t = event.time_ns;
        let index = usize::try_from(event.source.index()).unwrap_or(usize::MAX);
        if event.source != SourceId::NONE
            && event.source != SourceId::QUEUE
            && !self.described.get(index).copied().unwrap_or(false)
        {
            if index >= self.described.len() {
                self.described.resize(index + 1, false);
            }
            self.described[index] = true;
            if let Some(s) = sources.get(event.source) {
                self.header(9, t);
                let p = &mut self.packet;
                u32_(p, event.source.index());
                str_(p, s.name());
                str_(p, event.symbol.as_deref().unwrap_or(""));
                let names: Vec<&str> = event.regs.iter().map(|(n, _)| n).collect();
                str_(p, &names.join(","));
            }
        }
        match &event.kind {
            EventKind::Probe | EventKind::HwBreak | EventKind::Watch { .. } => {
                let id: u16 = match event.kind {
                    EventKind::Probe => 0,
                    EventKind::HwBreak => 1,
                    _ => 2,
                };
                // The hot path (millions per second): the record is put together on the
                // stack and appended once.
                if self.packet.is_empty() {
                    self.packet.resize(PACKET_PREFIX, 0);
                    self.first_ts = t.max(self.last_ts);
                }
                let ts = t.max(self.last_ts);
                self.last_ts = ts;
                let values = event.regs.values();
                let mut rec = [0u8; HIT_MAX];
                rec[0..2].copy_from_slice(&id.to_le_bytes());
                rec[2..10].copy_from_slice(&ts.to_le_bytes());
                rec[10..14].copy_from_slice(&event.vcpu.to_le_bytes());
                rec[14..18].copy_from_slice(&event.source.index().to_le_bytes());
                rec[18..26].copy_from_slice(&event.addr.to_le_bytes());
                rec[26..34].copy_from_slice(&event.hit.to_le_bytes());
                // At most MAX_REGS (8) values.
                let n = values.len().min(super::MAX_REGS);
                rec[34] = u8::try_from(n).unwrap_or(0);
                let mut len = 35;
                for &v in &values[..n] {
                    rec[len..len + 8].copy_from_slice(&v.to_le_bytes());
                    len += 8;
                }
                if let EventKind::Watch { write } = event.kind {
                    rec[len] = u8::from(write);
                    len += 1;
                }
                self.packet.extend_from_slice(&rec[..len]);
            }
            EventKind::Access(a) => {
                self.header(3, t);
                let p = &mut self.packet;
                u32_(p, event.vcpu);
                u8_(p, u8::from(a.space == Space::Pio));
                u8_(p, u8::from(a.write));
                u8_(p, a.width);
                u64_(p, event.addr);
                u64_(p, a.value);
                u64_(p, a.rip.unwrap_or(0));
                let id = a.map_id.map_or(-1, |m| i32::from_ne_bytes(m.to_ne_bytes()));
                p.extend_from_slice(&id.to_le_bytes());
            }
            EventKind::Map { id, virt, len, pc } => {
                self.header(4, t);
                let p = &mut self.packet;
                u32_(p, *id);
                u64_(p, event.addr);
                u64_(p, *virt);
                u64_(p, *len);
                u64_(p, *pc);
            }
            EventKind::Unmap { id, pc } => {
                self.header(5, t);
                u32_(&mut self.packet, *id);
                u64_(&mut self.packet, *pc);
            }
            EventKind::Mark(text) => {
                self.header(6, t);
                str_(&mut self.packet, text);
            }
            EventKind::PciDev(dev) => {
                self.header(7, t);
                let p = &mut self.packet;
                u8_(p, dev.bus);
                u8_(p, dev.devfn);
                u16_(p, dev.vendor);
                u16_(p, dev.device);
                u8_(p, dev.irq);
                for &v in dev.bars.iter().chain(&dev.sizes) {
                    u64_(p, v);
                }
                str_(p, dev.driver.as_deref().unwrap_or(""));
            }
            EventKind::Lost { count } => {
                self.header(8, t);
                u32_(&mut self.packet, event.source.index());
                u64_(&mut self.packet, *count);
                if event.is_queue_lost() {
                    self.discarded += count;
                }
            }
            EventKind::Lifecycle(what) => {
                self.header(10, t);
                let p = &mut self.packet;
                u32_(p, event.vcpu);
                let (w, text) = match what {
                    Lifecycle::Phase(s) => (0, &**s),
                    Lifecycle::Paused => (1, ""),
                    Lifecycle::Resumed => (2, ""),
                    Lifecycle::Exit(s) => (3, &**s),
                };
                u8_(p, w);
                str_(p, text);
            }
        }
        if self.packet.len() >= PACKET_BYTES {
            self.close_packet(out);
        }
        true
    }

    /// Writes the packet being filled (if any) to `out`.
    pub(crate) fn close_packet(&mut self, out: &mut Vec<u8>) {
        if self.packet.is_empty() {
            return;
        }
        let bits = (self.packet.len() as u64) * 8;
        // The prefix is patched in place; the packet goes out by a buffer swap when `out` is
        // empty (the writer empties it once it holds a packet's worth), else by a copy.
        let p = &mut self.packet;
        p[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        p[4..8].copy_from_slice(&0u32.to_le_bytes());
        p[8..16].copy_from_slice(&self.first_ts.to_le_bytes());
        p[16..24].copy_from_slice(&self.last_ts.to_le_bytes());
        p[24..32].copy_from_slice(&bits.to_le_bytes());
        p[32..40].copy_from_slice(&bits.to_le_bytes());
        p[40..48].copy_from_slice(&self.discarded.to_le_bytes());
        if out.is_empty() {
            std::mem::swap(out, &mut self.packet);
            self.packet.reserve(PACKET_BYTES + 4096);
        } else {
            out.extend_from_slice(&self.packet);
        }
        self.packet.clear();
    }
}
