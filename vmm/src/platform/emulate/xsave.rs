//! The vCPU's x87/SSE state through KVM_GET_XSAVE / KVM_SET_XSAVE.
//!
//! KVM_GET_FPU / KVM_SET_FPU do not carry MXCSR (KVM copies every `kvm_fpu` field but that
//! one: measured here, a KVM_SET_FPU'd MXCSR reads back as 0 and the guest never sees it), so
//! a real vCPU's state goes through the XSAVE buffer instead, whose first 512 bytes are the
//! FXSAVE image with MXCSR in it. Writes also mark x87 and SSE in use in the XSAVE header:
//! a component KVM believes is in its initial state would be reset on the next guest entry.

use kvm_bindings::{kvm_fpu, kvm_xsave};

use super::fxsave::{IMAGE_LEN, WRITTEN_LEN, decode, image};

/// XSTATE_BV bits for x87 (0) and SSE (1), at byte 512 of the buffer.
const XSTATE_X87_SSE: u32 = 0b11;
/// The u32 index of XSTATE_BV's low half in `kvm_xsave::region`.
const XSTATE_BV_LOW: usize = 512 / 4;

/// The FXSAVE image at the start of an XSAVE buffer.
fn legacy(x: &kvm_xsave) -> [u8; IMAGE_LEN] {
    let mut b = [0u8; IMAGE_LEN];
    for (chunk, word) in b.chunks_exact_mut(4).zip(x.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    b
}

/// The x87/SSE state in an XSAVE buffer (KVM's standard, non-compacted layout).
pub fn fpu_from_xsave(x: &kvm_xsave) -> kvm_fpu {
    let mut fpu = kvm_fpu::default();
    decode(&mut fpu, &legacy(x), true, true);
    fpu
}

/// Writes `fpu` into the XSAVE buffer's FXSAVE image (MXCSR_MASK and bytes 416..512 kept)
/// and marks x87 and SSE state present in XSTATE_BV.
pub fn fpu_into_xsave(fpu: &kvm_fpu, x: &mut kvm_xsave) {
    let mut b = legacy(x);
    let mask: [u8; 4] = [b[28], b[29], b[30], b[31]];
    b[..WRITTEN_LEN].copy_from_slice(&image(fpu, true, true));
    b[28..32].copy_from_slice(&mask);
    for (word, chunk) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    x.region[XSTATE_BV_LOW] |= XSTATE_X87_SSE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_mask_and_marks_state_present() {
        let mut x = kvm_xsave::default();
        x.region[7] = 0xffbf; // MXCSR_MASK as the host reported it
        x.region[120] = 0xdead_beef; // byte 480: software-available area
        let mut fpu = kvm_fpu {
            fcw: 0x27f,
            fsw: 0x3800,
            ftwx: 0x80,
            last_ip: 0x1234_5678_9abc,
            mxcsr: 0x3f80,
            ..Default::default()
        };
        fpu.xmm[3] = [7; 16];
        fpu.fpr[1][..10].copy_from_slice(&[9; 10]);
        fpu_into_xsave(&fpu, &mut x);
        assert_eq!(x.region[6], 0x3f80, "MXCSR at byte 24");
        assert_eq!(x.region[7], 0xffbf, "MXCSR_MASK kept");
        assert_eq!(x.region[120], 0xdead_beef);
        assert_eq!(x.region[XSTATE_BV_LOW] & 3, 3);
        let back = fpu_from_xsave(&x);
        assert_eq!(back.mxcsr, 0x3f80);
        assert_eq!((back.fcw, back.fsw, back.ftwx), (0x27f, 0x3800, 0x80));
        assert_eq!(back.last_ip, 0x1234_5678_9abc);
        assert_eq!(back.xmm, fpu.xmm);
        assert_eq!(back.fpr, fpu.fpr);
    }
}
