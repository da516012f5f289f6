//! scratch
use std::time::Duration;
use vmm::config::{KernelSource, SerialOutput, VmConfig};
use vmm::outcome::Outcome;
use vmm::vm::Vm;

fn scenario(cmdline: &str) -> (Outcome, Vm) {
    let config = VmConfig {
        kernel: KernelSource::Embedded,
        cmdline: Some(cmdline.to_string()),
        cpus: 1,
        serial: SerialOutput::Sink,
        quiet: true,
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config, None).expect("VM builds");
    vm.start().expect("VM starts");
    let outcome = vm.wait(Some(Duration::from_secs(30))).expect("VM runs");
    (outcome, vm)
}

#[test]
fn probe() {
    for c in ["hvtest=tscaux", "hvtest=tscaux hvring=3", "hvtest=ring3"] {
        let t = std::time::Instant::now();
        let (o, vm) = scenario(c);
        eprintln!("{c}: {o:?} {:?}\n{}\nmarks {:?} points {:?} arena {:x?}", t.elapsed(), vm.console().text(), vm.marks(), vm.points(), vm.arena_report());
    }
}
