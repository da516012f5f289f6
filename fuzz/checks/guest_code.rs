// What the `guest_code` fuzz target checks, shared with the test that replays its corpus
// (`include!`d by fuzz/fuzz_targets/guest_code.rs and disasm/tests/fuzz_corpora.rs).

use disasm::{
    JUMP_LEN, boundaries, can_optimize, can_probe, check_fixups, decode, ex_table_insns, relocate,
};

/// Where the input's function is taken to start.
pub const FUNC: u64 = 0xffff_ffff_8100_0000;

/// Checks a probe and its jump optimization in a function of guest code. The input: byte 0
/// the probe's offset in the function, bytes 1-4 where the displaced instructions are to go,
/// relative to the probe (i32, little-endian), then the function's code (also read as an
/// exception table). Returns whether the probe could be optimized.
pub fn check(data: &[u8]) -> bool {
    if data.len() < 5 {
        return false;
    }
    let off = usize::from(data[0]);
    let delta = i32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let code = &data[5..];
    let addr = FUNC + off as u64;
    let _ = boundaries(code, FUNC, addr);
    match can_probe(code, FUNC, addr) {
        Ok(insn) => {
            assert_eq!(insn.ip, addr);
            assert!((1..=15).contains(&insn.len) && off + insn.len <= code.len());
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    let fixups = ex_table_insns(code, FUNC);
    assert_eq!(fixups.len(), code.len() / 12);
    assert!(fixups.windows(2).all(|w| w[0] <= w[1]));
    let info = match can_optimize(code, FUNC, addr) {
        Ok(info) => info,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            let _ = e.category();
            return false;
        }
    };
    // The displaced instructions run back to back from the probe, cover the jump, and lie
    // in the function.
    assert_eq!(info.addr, addr);
    assert!(
        info.len >= JUMP_LEN && off + info.len <= code.len(),
        "{info:?}"
    );
    let mut ip = addr;
    for insn in &info.displaced {
        assert_eq!(insn.ip, ip);
        ip = insn.next_ip();
    }
    assert_eq!(ip, addr + info.len as u64);
    let _ = check_fixups(&info, &fixups);
    // Relocated, each instruction has its place and the new code decodes whole.
    let to = addr.wrapping_add_signed(i64::from(delta));
    match relocate(&code[off..off + info.len], addr, to) {
        Ok(r) => {
            assert_eq!(r.map.len(), info.displaced.len());
            for (m, insn) in r.map.iter().zip(&info.displaced) {
                assert_eq!(m.0, insn.ip);
            }
            assert!(r.map.windows(2).all(|w| w[0].1 < w[1].1));
            let mut at = 0;
            while at < r.code.len() {
                let insn = decode(&r.code[at..], to.wrapping_add(at as u64))
                    .unwrap_or_else(|e| panic!("relocated code at +{at:#x} does not decode: {e}"));
                at += insn.len;
            }
            assert_eq!(at, r.code.len());
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    true
}
