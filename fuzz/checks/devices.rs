// What the `devices` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/devices.rs and vmm/tests/fuzz_corpora.rs).

use std::sync::{Arc, Mutex, OnceLock, Weak};

use vmm::devices::bus::Bus;
use vmm::devices::edu::{EDU_BAR_SIZE, EDU_BDF, EDU_ID, EduDevice};
use vmm::devices::pci::{Bdf, MmioSpace, PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_PORTS_LEN, PciBus};
use vmm::memory::GuestMem;

/// Guest RAM for edu's transfers, shared by every run (the smallest a VM has).
fn mem() -> &'static GuestMem {
    static MEM: OnceLock<GuestMem> = OnceLock::new();
    MEM.get_or_init(|| GuestMem::new(vmm::layout::MIN_MEM_SIZE).expect("guest RAM"))
}

fn value(bus: &PciBus, bdf: Bdf, off: u8) -> u32 {
    let mut b = [0u8; 4];
    bus.config_read(bdf, off, &mut b);
    u32::from_le_bytes(b)
}

/// Runs the input as a guest's port and MMIO accesses to the PCI configuration ports and the
/// edu device, as a VM wires them, and checks the buses after each. Returns whether edu's
/// BAR ended up mapped. Each access is one byte (bit 0 write, bits 1-2 size 1/2/4/8, bit 3
/// MMIO), then the address (ports: one byte, an offset from 0xcf8; MMIO: 4 bytes,
/// little-endian), then the data of a write.
pub fn check(data: &[u8]) -> bool {
    let mmio = Arc::new(Bus::new());
    let weak: Weak<dyn MmioSpace> = Arc::downgrade(&mmio) as Weak<dyn MmioSpace>;
    let pci = Arc::new(PciBus::new(weak));
    let edu = Arc::new(Mutex::new(EduDevice::new(mem().clone(), None)));
    EduDevice::attach(edu, &pci).expect("edu goes on an empty bus");
    let pio = Bus::new();
    pio.insert(
        u64::from(PCI_CONFIG_ADDRESS_PORT),
        PCI_CONFIG_PORTS_LEN,
        pci.config_io(),
    )
    .expect("the config ports on an empty bus");
    let host = Bdf::new(0, 0);
    let ids = (value(&pci, host, 0), value(&pci, EDU_BDF, 0));
    let mut rest = data;
    let mut ops = 0;
    while let Some((&op, tail)) = rest.split_first() {
        ops += 1;
        if ops > 512 {
            break;
        }
        let write = op & 1 != 0;
        let size = 1usize << ((op >> 1) & 3);
        let is_mmio = op & 8 != 0;
        let alen = if is_mmio { 4 } else { 1 };
        let Some(a) = tail.get(..alen) else {
            break;
        };
        let addr = if is_mmio {
            u64::from(u32::from_le_bytes([a[0], a[1], a[2], a[3]]))
        } else {
            u64::from(PCI_CONFIG_ADDRESS_PORT) + u64::from(a[0] % 8)
        };
        rest = &tail[alen..];
        let bus = if is_mmio { &*mmio } else { &pio };
        if write {
            let Some(d) = rest.get(..size) else {
                break;
            };
            rest = &rest[size..];
            let _ = bus.write(addr, d);
        } else {
            let mut d = [0u8; 8];
            let claimed = bus.read(addr, &mut d[..size]);
            if is_mmio && claimed {
                // Only edu's BAR is on the MMIO bus.
                let base = pci
                    .bar_mapping(EDU_BDF, 0)
                    .expect("a claimed MMIO read is edu's");
                assert!((base..base + EDU_BAR_SIZE).contains(&addr), "{addr:#x}");
            }
        }
        // Read-only identification stays, and a mapped BAR is aligned, in the 32-bit space,
        // and answers with edu's ID.
        assert_eq!((value(&pci, host, 0), value(&pci, EDU_BDF, 0)), ids);
        if let Some(base) = pci.bar_mapping(EDU_BDF, 0) {
            assert!(
                base % EDU_BAR_SIZE == 0 && base + EDU_BAR_SIZE <= 1 << 32,
                "{base:#x}"
            );
            let mut id = [0u8; 4];
            assert!(
                mmio.read(base, &mut id),
                "edu's BAR at {base:#x} does not answer"
            );
            assert_eq!(u32::from_le_bytes(id), EDU_ID);
        }
    }
    pci.bar_mapping(EDU_BDF, 0).is_some()
}
