//! Feeds arbitrary code to what hvprobe decides from a guest kernel's code bytes (`disasm`):
//! instruction boundaries, whether a probe may go at an address, whether it may become a jump
//! (the window, jumps into it, the function's end), the exception table's entries, and the
//! relocation of the displaced instructions. The code comes from the kernel image or guest
//! memory, so it is the guest's. Nothing may panic; what is accepted is consistent (the
//! displaced instructions run back to back from the probe; relocated code decodes whole and
//! maps each instruction).
//!
//! Corpus seeds and past finds: `fuzz/regressions/guest_code/` (replayed by
//! disasm/tests/fuzz_corpora.rs). Run: `bash scripts/fuzz-all.sh guest_code 600`.
#![no_main]

include!("../checks/guest_code.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
});
