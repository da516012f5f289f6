//! The `edu` PCI device driven by the test kernel's `edu` scenario, through the library API:
//! the driver's checks, its MARK lines, the BAR's MAP / UNMAP events, the DMA in guest RAM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::devices::edu::{EDU_BAR_SIZE, EDU_BDF, EDU_DEVICE_ID, EDU_IRQ, EDU_VENDOR_ID};
use vmm::devices::pci::PciEvent;
use vmm::layout::EDU_BAR_DEFAULT;
use vmm::memory::Gpa;
use vmm::outcome::Outcome;
use vmm::test_kernel::{EDU_DMA_DST_RAM, EDU_MARKS};
use vmm::vm::Vm;

#[test]
fn edu_driver_passes_every_check_and_maps_then_unmaps_the_bar() {
    let config = VmConfig {
        kernel: KernelSource::Embedded,
        cmdline: Some("hvtest=edu".into()),
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config, None).expect("VM builds");
    let pci = vm.io().pci.clone().expect("the VM has a PCI bus");
    let before = pci.devices();
    assert_eq!(
        before.iter().map(|d| d.name).collect::<Vec<_>>(),
        ["host-bridge", "edu", "hvprobe-kmod"],
        "host bridge, edu and the guest module's device: {before:?}"
    );
    let edu = &before[1];
    assert_eq!(
        (edu.devfn, edu.vendor, edu.device, edu.irq),
        (EDU_BDF.devfn(), EDU_VENDOR_ID, EDU_DEVICE_ID, EDU_IRQ)
    );
    assert_eq!((edu.bars[0], edu.sizes[0]), (0, EDU_BAR_SIZE));

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    pci.set_listener(Box::new(move |e| sink.lock().unwrap().push(e)));
    vm.start().expect("VM starts");
    let outcome = vm.wait(Some(Duration::from_secs(30))).expect("VM runs");
    let console = vm.console().text();
    assert_eq!(
        outcome,
        Outcome::GuestExit { code: 0 },
        "console:\n{console}"
    );
    for line in [
        "scenario edu",
        "edu: pci 00:00.0 8086:1237",
        "edu: pci 00:01.0 1234:11e8",
        "edu: found 1234:11e8 at 00:01.0",
        "edu: BAR0 size = 0x100000, ok",
        "edu: BAR0 = 0xe0000000, ok",
        "edu: interrupt line 11, pin 1",
        "edu: ID = 0x10000ed, ok",
        "edu: liveness of 0x12345678 = 0xedcba987, ok",
        "edu: status = 0x1\nedu: status = 0x0\n",
        "edu: factorial of 5 = 0x78, ok",
        "edu: interrupt status after raise = 0x1, ok",
        "edu: interrupt status after ack = 0x0, ok",
        "edu: DMA command after RAM -> device = 0x0, ok",
        "edu: DMA command after device -> RAM = 0x2, ok",
        "edu: DMA round trip of 16 bytes, ok",
        "edu: done",
    ] {
        assert!(console.contains(line), "no {line:?} in:\n{console}");
    }
    assert!(!console.contains("FAILED"), "{console}");
    // only these three functions answer (the guest module's device at 00:02.0)
    assert_eq!(console.matches("edu: pci ").count(), 3, "{console}");
    assert!(console.contains("edu: pci 00:02.0 1234:4856"), "{console}");
    assert_eq!(vm.marks(), EDU_MARKS);
    assert_eq!(
        *events.lock().unwrap(),
        [
            PciEvent::Map {
                bdf: EDU_BDF,
                bar: 0,
                base: EDU_BAR_DEFAULT,
                len: EDU_BAR_SIZE
            },
            PciEvent::Unmap {
                bdf: EDU_BDF,
                bar: 0,
                base: EDU_BAR_DEFAULT
            },
        ]
    );
    assert_eq!(pci.bar_mapping(EDU_BDF, 0), None);
    assert_eq!(pci.devices()[1].bars[0], 0, "BAR0 set back to 0");
    let mut back = [0u8; 16];
    vm.memory().read(Gpa(EDU_DMA_DST_RAM), &mut back).unwrap();
    assert_eq!(&back, b"hvprobe edu DMA!");
    let mut probe = [0u8; 4];
    assert!(
        !vm.io().mmio.read(EDU_BAR_DEFAULT, &mut probe),
        "nothing left at the BAR's old address"
    );
}
