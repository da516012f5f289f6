//! hvprobe's VMM: boots Linux kernels (ELF vmlinux and bzImage, decompressed on the host) and
//! test guests on `/dev/kvm`, one thread per vCPU, with the devices a Linux boot and the test
//! guests need. The introspection layer builds on [`vcpu`]'s pause-all / resume-all and on the
//! debug-exit payload the exit dispatcher keeps.
//!
//! See ARCHITECTURE.md at the top of the repository for the boot path and the vCPU loop.

pub mod boot;
pub mod cli;
pub mod config;
pub mod devices;
pub mod instrument;
pub mod kernel_symbols;
pub mod kvm_probe;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod memslots;
pub mod outcome;
pub mod phases;
pub mod platform;
pub mod probe_check;
pub mod session;
pub mod target;
pub mod test_kernel;
pub mod tracer;
pub mod vcpu;
pub mod verbs;
pub mod vm;
