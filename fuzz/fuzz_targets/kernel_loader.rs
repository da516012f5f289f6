//! Feeds arbitrary bytes to the kernel loaders: format detection, bzImage parsing, payload
//! decompression (all seven formats) and ELF loading into a small guest, plus the initrd
//! placement. Each input is tried as is and wrapped in a valid bzImage header, so the fuzzer
//! reaches the decompressors without first having to discover "HdrS".
//!
//! Corpus seeds and past finds: `fuzz/regressions/kernel_loader/` (replayed by vmm's unit
//! tests). Run: `cargo +nightly fuzz run kernel_loader fuzz/regressions/kernel_loader`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::loader::{decompress_bzimage, load_initrd, load_kernel};
use vmm::memory::{Gpa, GuestMem};

/// Guest RAM shared by every run (32 MiB: enough for small synthetic kernels at 16 MiB).
fn mem() -> &'static GuestMem {
    static MEM: OnceLock<GuestMem> = OnceLock::new();
    MEM.get_or_init(|| GuestMem::new(32 << 20).expect("32 MiB of guest RAM"))
}

/// A bzImage header (boot protocol 2.15, setup_sects 3) whose payload is `payload`.
fn wrap_in_bzimage(payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 0x900];
    img[0x1f1] = 3;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    img[0x24c..0x250].copy_from_slice(&len.to_le_bytes());
    img.extend_from_slice(payload);
    img
}

fuzz_target!(|data: &[u8]| {
    let mem = mem();
    if let Ok(k) = load_kernel(mem, data) {
        assert!(k.load_start <= k.entry && k.entry < k.load_end);
        assert!(k.load_end.raw() <= mem.size());
    }
    let _ = decompress_bzimage(data);
    let _ = load_kernel(mem, &wrap_in_bzimage(data));
    let kernel_end = data.first().map_or(0, |&b| u64::from(b) << 17);
    if let Ok((at, size)) = load_initrd(mem, data, Gpa(kernel_end), u64::MAX) {
        assert!(at.raw() >= kernel_end && at.raw() + size <= mem.size() && at.raw() % 4096 == 0);
    }
});
