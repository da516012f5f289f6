//! Per-vCPU boot state: CPUID, MSRs, FPU, LAPIC LINT pins and (for the boot vCPU) the
//! registers of Linux's 64-bit boot protocol.

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::VcpuFd;

use super::BootError;
use super::gdt::{BOOT_CS, BOOT_DS, BOOT_TSS, GDT, segment_from_entry};
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START};
use crate::memory::Gpa;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CPUID.1:ECX.CMPXCHG16B.
pub const CPUID_1_ECX_CX16: u32 = 1 << 13;
/// CPUID.1:ECX.POPCNT.
pub const CPUID_1_ECX_POPCNT: u32 = 1 << 23;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID_1_EDX_HTT: u32 = 1 << 28;

/// CPUID features hidden from the guest, with the reason printed on stderr at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidMask {
    /// Bits cleared in CPUID.1:ECX.
    pub leaf1_ecx: u32,
}

/// Adapts the host-supported CPUID for vCPU `index` of `count`: APIC IDs, logical processor
/// count, the hypervisor bit, and any platform mask.
pub fn patch_cpuid(cpuid: &mut CpuId, index: u8, count: u8, mask: CpuidMask) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx = (e.ecx | CPUID_1_ECX_HYPERVISOR) & !mask.leaf1_ecx;
                if count > 1 {
                    e.edx |= CPUID_1_EDX_HTT;
                }
            }
            0xb | 0x1f => e.edx = u32::from(index),
            _ => {}
        }
    }
}

/// IA32_TSC_AUX: what `rdtscp` (and `rdpid`) return in ECX.
pub const MSR_TSC_AUX: u32 = 0xc000_0103;
/// CPUID.8000_0001h:EDX.RDTSCP.
const CPUID_80000001_EDX_RDTSCP: u32 = 1 << 27;

/// True if `cpuid` offers `rdtscp` (and so IA32_TSC_AUX).
pub fn has_rdtscp(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 0x8000_0001 && e.edx & CPUID_80000001_EDX_RDTSCP != 0)
}

/// The MSRs of vCPU `index` beyond [`boot_msrs`]: IA32_TSC_AUX = `index` (as Linux sets it,
/// CPU number in the low 12 bits), if the vCPU has `rdtscp`.
pub fn vcpu_msrs(index: u8, cpuid: &CpuId) -> Vec<kvm_msr_entry> {
    if !has_rdtscp(cpuid) {
        return Vec::new();
    }
    vec![kvm_msr_entry {
        index: MSR_TSC_AUX,
        data: u64::from(index),
        ..Default::default()
    }]
}

/// MSR values every vCPU starts with (as a real firmware would leave them).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(0x174, 0),             // IA32_SYSENTER_CS
        msr(0x175, 0),             // IA32_SYSENTER_ESP
        msr(0x176, 0),             // IA32_SYSENTER_EIP
        msr(0xc000_0081, 0),       // STAR
        msr(0xc000_0083, 0),       // CSTAR
        msr(0xc000_0102, 0),       // KERNEL_GS_BASE
        msr(0xc000_0084, 0),       // SYSCALL_MASK
        msr(0xc000_0082, 0),       // LSTAR
        msr(0x10, 0),              // IA32_TSC
        msr(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ]
}

/// Sets CPUID, MSRs, FPU and LAPIC LINT pins on any vCPU.
pub fn setup_common(vcpu: &VcpuFd, index: u8, cpuid: &CpuId) -> Result<(), BootError> {
    let err = |what: &'static str| {
        move |source| BootError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    vcpu.set_cpuid2(cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let mut entries = boot_msrs();
    entries.extend(vcpu_msrs(index, cpuid));
    let msrs = Msrs::from_entries(&entries).map_err(|_| BootError::Vcpu {
        vcpu: index,
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(BootError::Vcpu {
            vcpu: index,
            what: "KVM_SET_MSRS (an MSR was refused)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, 0x350, 7); // LINT0: ExtINT
    set_lvt_mode(&mut lapic.regs, 0x360, 4); // LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = regs[offset + i].to_ne_bytes()[0];
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = std::os::raw::c_char::from_ne_bytes([*byte]);
    }
}

/// Puts the boot vCPU at `entry` in 64-bit mode with the boot page tables at `cr3`,
/// `rsi` = boot_params.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    entry: Gpa,
    cr3: u64,
    boot_params: Gpa,
) -> Result<(), BootError> {
    let err = |what: &'static str| {
        move |source| BootError::Vcpu {
            vcpu: 0,
            what,
            source,
        }
    };
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let code = segment_from_entry(GDT[usize::from(BOOT_CS / 8)], BOOT_CS);
    let data = segment_from_entry(GDT[usize::from(BOOT_DS / 8)], BOOT_DS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(GDT[usize::from(BOOT_TSS / 8)], BOOT_TSS);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&GDT) - 1).unwrap_or(0);
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw(),
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot_params.raw(),
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    Ok(())
}

/// Stack top of secondary vCPU `index` when test programs start every vCPU at the entry.
pub fn secondary_stack(index: u8) -> u64 {
    0x8_0000 - u64::from(index) * 0x1000
}

/// Starts a secondary vCPU at `entry` like the boot vCPU (test programs only; Linux starts
/// its secondaries itself): runnable, its own stack, `rdi` = its index.
pub fn setup_secondary_at_entry(
    vcpu: &VcpuFd,
    index: u8,
    entry: Gpa,
    cr3: u64,
    boot_params: Gpa,
) -> Result<(), BootError> {
    let err = |what: &'static str| {
        move |source| BootError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    setup_boot_vcpu(vcpu, entry, cr3, boot_params)?;
    let mut regs = vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
    regs.rsp = secondary_stack(index);
    regs.rbp = regs.rsp;
    regs.rdi = u64::from(index);
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    let runnable = kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    };
    vcpu.set_mp_state(runnable).map_err(err("KVM_SET_MP_STATE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_patch_sets_apic_ids_and_masks() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_0800,
                ecx: CPUID_1_ECX_CX16 | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                edx: 0,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(
            &mut c,
            3,
            4,
            CpuidMask {
                leaf1_ecx: CPUID_1_ECX_CX16,
            },
        );
        let s = c.as_slice();
        assert_eq!(s[0].ebx, 0x0304_0800);
        assert_eq!(s[0].ecx & CPUID_1_ECX_CX16, 0);
        assert_ne!(s[0].ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & CPUID_1_EDX_HTT, 0);
        assert_eq!(s[1].edx, 3);
    }

    #[test]
    fn tsc_aux_is_the_vcpu_index_when_rdtscp_exists() {
        let with = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 0x8000_0001,
            edx: CPUID_80000001_EDX_RDTSCP,
            ..Default::default()
        }])
        .unwrap();
        let msrs = vcpu_msrs(3, &with);
        assert_eq!(msrs.len(), 1);
        assert_eq!((msrs[0].index, msrs[0].data), (MSR_TSC_AUX, 3));
        let without = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 0x8000_0001,
            ..Default::default()
        }])
        .unwrap();
        assert!(vcpu_msrs(3, &without).is_empty());
    }

    #[test]
    fn lvt_mode_is_set_without_touching_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x10;
        set_lvt_mode(&mut regs, 0x350, 7);
        assert_eq!(regs[0x350], 0x10);
        assert_eq!(regs[0x351], 0x07);
    }
}
