//! `fxsave`/`fxsave64` and `fxrstor`/`fxrstor64`: the 512-byte FXSAVE image to and from
//! KVM's `kvm_fpu`.
//!
//! Image layout (SDM vol. 1, 10.5.1): FCW at 0, FSW at 2, abridged FTW at 4, FOP at 6, FPU
//! IP at 8 and data pointer at 16 (64-bit forms: 8 bytes each; the plain forms: 32-bit offset
//! then a 16-bit selector, stored as 0 as on CPUs that deprecate FCS/FDS), MXCSR at 24,
//! MXCSR_MASK at 28, ST0-ST7 at 32 (16 bytes each), XMM0-XMM15 at 160. Bytes 416..512 are
//! reserved or software's: `fxsave` leaves them alone.

use kvm_bindings::kvm_fpu;

use super::access::Kind;
use super::mxcsr::MXCSR_MASK;
use super::operands::{Ctx, Stop};
use super::{CR0_EM, CR0_TS, Exception};

/// The size of the memory operand.
pub const IMAGE_LEN: usize = 512;
/// The part of the image `fxsave` writes.
pub const WRITTEN_LEN: usize = 416;
/// EFER.FFXSR: AMD's fast FXSAVE/FXRSTOR, which skips XMM registers at CPL 0 in 64-bit mode.
const EFER_FFXSR: u64 = 1 << 14;

/// The checks both directions share: #NM with CR0.TS or CR0.EM, #GP(0) unless the operand
/// is 16-byte aligned. Returns the operand's address.
fn prepare(c: &Ctx<'_>) -> Result<u64, Stop> {
    if c.sregs.cr0 & (CR0_TS | CR0_EM) != 0 {
        return Err(Stop::Fault(Exception::DeviceNotAvailable));
    }
    let addr = c.mem_address(0)?;
    if addr % 16 != 0 {
        return Err(Stop::Fault(Exception::GeneralProtection));
    }
    Ok(addr)
}

/// Whether XMM registers take part (not with fast FXSAVE/FXRSTOR at CPL 0).
fn with_xmm(c: &Ctx<'_>) -> bool {
    !(c.sregs.efer & EFER_FFXSR != 0 && c.cpl == 0)
}

/// Whether this is the REX.W form (64-bit FPU IP and data pointer).
fn is64(c: &Ctx<'_>) -> bool {
    matches!(
        c.insn.mnemonic(),
        iced_x86::Mnemonic::Fxsave64 | iced_x86::Mnemonic::Fxrstor64
    )
}

/// The image `fxsave` writes for `fpu` (the first 416 bytes; the rest is not written).
pub fn image(fpu: &kvm_fpu, is64: bool, xmm: bool) -> [u8; WRITTEN_LEN] {
    let mut b = [0u8; WRITTEN_LEN];
    b[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    b[4] = fpu.ftwx;
    b[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    if is64 {
        b[8..16].copy_from_slice(&fpu.last_ip.to_le_bytes());
        b[16..24].copy_from_slice(&fpu.last_dp.to_le_bytes());
    } else {
        b[8..12].copy_from_slice(&fpu.last_ip.to_le_bytes()[..4]);
        b[16..20].copy_from_slice(&fpu.last_dp.to_le_bytes()[..4]);
    }
    b[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        // Each slot holds an 80-bit register; bytes 10..16 are reserved (zero).
        b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&st[..10]);
    }
    if xmm {
        for (i, x) in fpu.xmm.iter().enumerate() {
            b[160 + 16 * i..176 + 16 * i].copy_from_slice(x);
        }
    }
    b
}

/// Loads an image into `fpu`, as `fxrstor` does; `None` if MXCSR has reserved bits set.
pub fn load(fpu: &mut kvm_fpu, b: &[u8; IMAGE_LEN], is64: bool, xmm: bool) -> Option<()> {
    let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return None;
    }
    decode(fpu, b, is64, xmm);
    Some(())
}

/// Copies an FXSAVE image's fields into `fpu`, unchecked (the first 416 bytes matter).
pub fn decode(fpu: &mut kvm_fpu, b: &[u8; IMAGE_LEN], is64: bool, xmm: bool) {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    fpu.fcw = u16_at(0);
    fpu.fsw = u16_at(2);
    fpu.ftwx = b[4];
    fpu.last_opcode = u16_at(6) & 0x7ff;
    if is64 {
        fpu.last_ip = u64_at(8);
        fpu.last_dp = u64_at(16);
    } else {
        fpu.last_ip = u64::from(u32_at(8));
        fpu.last_dp = u64::from(u32_at(16));
    }
    fpu.mxcsr = u32_at(24);
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        *st = [0; 16];
        st[..10].copy_from_slice(&b[32 + 16 * i..32 + 16 * i + 10]);
    }
    if xmm {
        for (i, x) in fpu.xmm.iter_mut().enumerate() {
            x.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
        }
    }
}

/// `fxsave m512` / `fxsave64 m512`.
pub fn fxsave(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let addr = prepare(c)?;
    let fpu = c.cpu.fpu()?;
    let img = image(&fpu, is64(c), with_xmm(c));
    c.guest.write(addr, IMAGE_LEN, &img)?;
    Ok(())
}

/// `fxrstor m512` / `fxrstor64 m512`: #GP(0) if the image's MXCSR sets reserved bits.
pub fn fxrstor(c: &mut Ctx<'_>) -> Result<(), Stop> {
    let addr = prepare(c)?;
    let mut b = [0u8; IMAGE_LEN];
    c.guest.read(addr, &mut b, Kind::Read)?;
    let mut fpu = c.cpu.fpu()?;
    load(&mut fpu, &b, is64(c), with_xmm(c)).ok_or(Stop::Fault(Exception::GeneralProtection))?;
    c.cpu.set_fpu(&fpu)?;
    Ok(())
}
