//! The 8250 UART at COM1 (vm-superio's `Serial`), its interrupt through an irqfd, and the
//! console sink: the configured output plus a bounded in-memory copy tests and tools read.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{BusDevice, DeviceAction, put_le};

/// COM1 port base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ line.
pub const COM1_IRQ: u32 = 4;
/// Bytes of console output kept in memory (the oldest half is dropped beyond this).
pub const CONSOLE_CAPTURE_LIMIT: usize = 4 << 20;

/// Raises the UART's interrupt by signalling an eventfd registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Everything the guest printed (bounded), shared between the UART and readers.
#[derive(Clone, Default)]
pub struct ConsoleCapture(Arc<Mutex<Vec<u8>>>);

impl ConsoleCapture {
    /// The captured text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Whether the captured text contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes())
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > CONSOLE_CAPTURE_LIMIT {
            let drop = buf.len() - CONSOLE_CAPTURE_LIMIT / 2;
            buf.drain(..drop);
        }
    }
}

/// The UART's output: the configured writer (stdout, a file, or nothing) and the capture.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    capture: ConsoleCapture,
}

impl ConsoleSink {
    /// A sink writing to `out` (if any) and to `capture`.
    pub fn new(out: Option<Box<dyn Write + Send>>, capture: ConsoleCapture) -> Self {
        ConsoleSink { out, capture }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.capture.push(buf);
        if let Some(out) = self.out.as_mut() {
            // A console that went away (closed pipe, full disk) must not stop the guest.
            if out.write_all(buf).is_err() {
                self.out = None;
            } else if buf.contains(&b'\n') {
                let _ = out.flush();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
        Ok(())
    }
}

/// COM1 on the port bus.
pub struct SerialDevice(Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>);

impl SerialDevice {
    /// A UART raising `irq` and printing into `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        SerialDevice(Serial::new(IrqTrigger(irq), sink))
    }

    /// Flushes the console output.
    pub fn flush(&mut self) {
        let _ = self.0.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        put_le(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            // An interrupt that cannot be raised is not the guest's fault; output still flows.
            let _ = self.0.write(o, v);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded_and_keeps_the_tail() {
        let c = ConsoleCapture::default();
        let mut sink = ConsoleSink::new(None, c.clone());
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..5 {
            sink.write_all(&chunk).unwrap();
        }
        sink.write_all(b"tail").unwrap();
        let t = c.text();
        assert!(t.len() <= CONSOLE_CAPTURE_LIMIT);
        assert!(t.ends_with("tail"));
        assert!(c.contains("atail"));
    }

    #[test]
    fn uart_transmits_to_the_sink() {
        let c = ConsoleCapture::default();
        let mut s = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ConsoleSink::new(None, c.clone()),
        );
        for b in b"ok\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(c.text(), "ok\n");
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
