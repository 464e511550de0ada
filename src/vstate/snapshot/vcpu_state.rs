//! One vCPU's state. Capture follows KVM's ordering rules (as Firecracker documents them):
//! MP state first (KVM_GET_MP_STATE may accept pending LAPIC events and change other state),
//! vCPU events last. Restore, on a fresh vCPU of a VM whose other vCPUs are not running:
//! TSC frequency (when it differs by more than 250 ppm), CPUID, MP state, registers, special
//! registers (they carry the APIC base), XSAVE, XCRs, debug registers, LAPIC (after SREGS),
//! MSRs (after LAPIC, so TSC_DEADLINE arms; TSC_DEADLINE after TSC), vCPU events last (SET_REGS
//! clears pending exceptions that events restore), then KVM_KVMCLOCK_CTRL tells the guest it
//! was paused. Every value is validated first (`validate`), so a refused state touches nothing.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, CpuId, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::{msrs, Host, StateError, LEGACY_XSAVE_WORDS};

/// RFLAGS bits that must be zero (reserved), and bit 1 that must be one.
const RFLAGS_RESERVED: u64 = !0x003f_7fd5 & !0x2;
const RFLAGS_FIXED1: u64 = 0x2;
/// EFER bits KVM may hold: SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE, AUTOIBRS.
const EFER_KNOWN: u64 = 1
    | (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 21);
/// APIC base bits that are not the address: BSP (8), x2APIC (10), enable (11).
const APIC_BASE_FLAGS: u64 = (1 << 8) | (1 << 10) | (1 << 11);
/// Highest physical address bit any x86-64 CPU has.
const MAX_PHYS_BITS: u32 = 52;
/// KVM_MP_STATE_RUNNABLE .. KVM_MP_STATE_SIPI_RECEIVED: the states of an x86 vCPU.
const MP_STATE_MAX: u32 = 4;
/// Flags of kvm_vcpu_events KVM knows: NMI_PENDING, SIPI_VECTOR, SHADOW, SMM, PAYLOAD,
/// TRIPLE_FAULT.
const EVENTS_FLAGS_KNOWN: u32 = 0x3f;
/// TSC frequencies within 250 ppm are the same clock calibrated twice.
const TSC_TOLERANCE_PPM: u64 = 250;
/// Highest TSC frequency accepted (kHz): 10 GHz.
const MAX_TSC_KHZ: u32 = 10_000_000;
/// Offset and shift of the APIC ID in the LAPIC register page.
const APIC_ID_OFFSET: usize = 0x20;

/// The state of one vCPU.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// Index of the vCPU (its APIC ID).
    pub index: u8,
    /// CPUID leaves.
    pub cpuid: Vec<Raw<kvm_cpuid_entry2>>,
    /// MP state.
    pub mp_state: Raw<kvm_mp_state>,
    /// General registers.
    pub regs: Raw<kvm_regs>,
    /// Special registers.
    pub sregs: Raw<kvm_sregs>,
    /// The XSAVE area (x87, SSE, AVX, ... state), as 32-bit words.
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: Raw<kvm_xcrs>,
    /// Debug registers.
    pub debug_regs: Raw<kvm_debugregs>,
    /// Local APIC.
    pub lapic: Raw<kvm_lapic_state>,
    /// (index, value) of the MSRs the guest uses.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs, SMM.
    pub events: Raw<kvm_vcpu_events>,
    /// TSC frequency in kHz, when KVM tells it.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &self.regs.0.rip)
            .field("msrs", &self.msrs.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

impl VcpuState {
    /// Captures vCPU `index` (paused: not in KVM_RUN).
    pub fn capture(fd: &VcpuFd, index: u8, host: &Host) -> Result<Self, StateError> {
        let mp_state = fd
            .get_mp_state()
            .map_err(|e| StateError::Kvm("read the MP state", e))?;
        let regs = fd
            .get_regs()
            .map_err(|e| StateError::Kvm("read the registers", e))?;
        let sregs = fd
            .get_sregs()
            .map_err(|e| StateError::Kvm("read the special registers", e))?;
        let xsave = read_xsave(fd, host)?;
        let xcrs = fd
            .get_xcrs()
            .map_err(|e| StateError::Kvm("read the XCRs", e))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(|e| StateError::Kvm("read the debug registers", e))?;
        let lapic = fd
            .get_lapic()
            .map_err(|e| StateError::Kvm("read the LAPIC", e))?;
        let tsc_khz = fd.get_tsc_khz().ok().filter(|&k| k != 0);
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| StateError::Kvm("read the CPUID", e))?;
        // KVM_GET_CPUID2 leaves zeroed entries past the real ones.
        let cpuid = cpuid
            .as_slice()
            .iter()
            .filter(|e| !(e.function == 0 && e.index == 0 && e.flags == 0 && e.eax == 0))
            .map(|e| Raw(*e))
            .collect();
        let msrs = msrs::read(fd, &host.msrs)?;
        let events = fd
            .get_vcpu_events()
            .map_err(|e| StateError::Kvm("read the vCPU events", e))?;
        Ok(Self {
            index,
            cpuid,
            mp_state: Raw(mp_state),
            regs: Raw(regs),
            sregs: Raw(sregs),
            xsave,
            xcrs: Raw(xcrs),
            debug_regs: Raw(debug_regs),
            lapic: Raw(lapic),
            msrs,
            events: Raw(events),
            tsc_khz,
        })
    }

    /// Checks every value against `host` and the architecture, as if a hostile guest wrote
    /// it, for vCPU `index`.
    pub fn validate(&self, index: u8, host: &Host) -> Result<(), StateError> {
        if self.index != index {
            return Err(StateError::WrongVcpu {
                found: self.index,
                expected: index,
            });
        }
        if self.cpuid.is_empty() || self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(StateError::TooMany {
                what: "CPUID leaves",
                found: self.cpuid.len(),
                max: KVM_MAX_CPUID_ENTRIES,
            });
        }
        for e in &self.cpuid {
            let leaf = (e.0.function, e.0.index);
            let known = host.cpuid_leaves.binary_search(&leaf).is_ok()
                || host.cpuid_leaves.binary_search(&(leaf.0, 0)).is_ok();
            if !known {
                return Err(StateError::UnknownCpuid {
                    function: leaf.0,
                    index: leaf.1,
                });
            }
        }
        msrs::validate(&self.msrs, &host.msrs)?;
        if self.xsave.len() != host.xsave_words {
            return Err(StateError::XsaveSize {
                found: self.xsave.len(),
                expected: host.xsave_words,
            });
        }
        if self.mp_state.0.mp_state > MP_STATE_MAX {
            return Err(StateError::Invalid("MP state"));
        }
        let regs = &self.regs.0;
        if regs.rflags & RFLAGS_RESERVED != 0 || regs.rflags & RFLAGS_FIXED1 == 0 {
            return Err(StateError::Invalid("RFLAGS"));
        }
        validate_sregs(&self.sregs.0)?;
        let xcrs = &self.xcrs.0;
        if xcrs.nr_xcrs as usize > xcrs.xcrs.len() || xcrs.flags != 0 {
            return Err(StateError::Invalid("XCR list"));
        }
        let dr = &self.debug_regs.0;
        if dr.flags != 0 || dr.dr6 >> 32 != 0 || dr.dr7 >> 32 != 0 {
            return Err(StateError::Invalid("debug registers"));
        }
        let apic_id = read_lapic_u32(&self.lapic.0, APIC_ID_OFFSET) >> 24;
        if apic_id != u32::from(index) {
            return Err(StateError::Invalid("LAPIC ID"));
        }
        validate_events(&self.events.0)?;
        if let Some(khz) = self.tsc_khz {
            if khz == 0 || khz > MAX_TSC_KHZ {
                return Err(StateError::Invalid("TSC frequency"));
            }
        }
        Ok(())
    }

    /// Validates, then restores the state into `fd` (a fresh vCPU `index`; no vCPU of the VM
    /// runs). On an error the vCPU must be discarded: it is partly set.
    pub fn restore(&self, fd: &VcpuFd, index: u8, host: &Host) -> Result<(), StateError> {
        self.validate(index, host)?;
        if let Some(khz) = self.tsc_khz {
            restore_tsc_khz(fd, khz)?;
        }
        let entries: Vec<kvm_cpuid_entry2> = self.cpuid.iter().map(|e| e.0).collect();
        let cpuid = CpuId::from_entries(&entries).map_err(StateError::Fam)?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| StateError::Kvm("set the CPUID", e))?;
        fd.set_mp_state(self.mp_state.0)
            .map_err(|e| StateError::Kvm("set the MP state", e))?;
        fd.set_regs(&self.regs.0)
            .map_err(|e| StateError::Kvm("set the registers", e))?;
        fd.set_sregs(&self.sregs.0)
            .map_err(|e| StateError::Kvm("set the special registers", e))?;
        write_xsave(fd, &self.xsave)?;
        fd.set_xcrs(&self.xcrs.0)
            .map_err(|e| StateError::Kvm("set the XCRs", e))?;
        fd.set_debug_regs(&self.debug_regs.0)
            .map_err(|e| StateError::Kvm("set the debug registers", e))?;
        fd.set_lapic(&self.lapic.0)
            .map_err(|e| StateError::Kvm("set the LAPIC", e))?;
        msrs::write(fd, &self.msrs)?;
        fd.set_vcpu_events(&self.events.0)
            .map_err(|e| StateError::Kvm("set the vCPU events", e))?;
        // Tells a kvmclock guest it was paused (no soft-lockup reports); EINVAL when the guest
        // has not enabled kvmclock, which is fine.
        if let Err(e) = fd.kvmclock_ctrl() {
            log::debug!("KVM_KVMCLOCK_CTRL: {e}");
        }
        Ok(())
    }
}

fn validate_sregs(s: &kvm_sregs) -> Result<(), StateError> {
    if s.efer & !EFER_KNOWN != 0 {
        return Err(StateError::Invalid("EFER"));
    }
    let base = s.apic_base;
    if base & 0xfff & !APIC_BASE_FLAGS != 0 || base >> MAX_PHYS_BITS != 0 {
        return Err(StateError::Invalid("APIC base"));
    }
    if s.cr8 > 0xf {
        return Err(StateError::Invalid("CR8"));
    }
    // A pending external interrupt is one bit at most.
    if s.interrupt_bitmap
        .iter()
        .map(|w| w.count_ones())
        .sum::<u32>()
        > 1
    {
        return Err(StateError::Invalid("pending interrupt bitmap"));
    }
    Ok(())
}

fn validate_events(e: &kvm_vcpu_events) -> Result<(), StateError> {
    if e.flags & !EVENTS_FLAGS_KNOWN != 0 {
        return Err(StateError::Invalid("vCPU event flags"));
    }
    let ex = &e.exception;
    if ex.injected > 1 || ex.pending > 1 || ex.has_error_code > 1 || ex.nr >= 32 {
        return Err(StateError::Invalid("pending exception"));
    }
    if e.interrupt.injected > 1 || e.nmi.injected > 1 || e.nmi.pending > 1 || e.nmi.masked > 1 {
        return Err(StateError::Invalid("pending interrupt or NMI"));
    }
    Ok(())
}

fn read_lapic_u32(l: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = l.regs[offset + i] as u8;
    }
    u32::from_le_bytes(b)
}

/// Scales this vCPU's TSC to `khz` unless it already runs within 250 ppm of it.
fn restore_tsc_khz(fd: &VcpuFd, khz: u32) -> Result<(), StateError> {
    let current = fd
        .get_tsc_khz()
        .map_err(|e| StateError::Kvm("read the TSC frequency", e))?;
    let diff = u64::from(current.abs_diff(khz));
    if diff * 1_000_000 <= u64::from(khz) * TSC_TOLERANCE_PPM {
        return Ok(());
    }
    fd.set_tsc_khz(khz)
        .map_err(|e| StateError::Kvm("scale the TSC frequency (KVM_SET_TSC_KHZ)", e))
}

fn read_xsave(fd: &VcpuFd, host: &Host) -> Result<Vec<u32>, StateError> {
    if host.xsave_words == LEGACY_XSAVE_WORDS {
        let x = fd
            .get_xsave()
            .map_err(|e| StateError::Kvm("read the XSAVE area", e))?;
        return Ok(x.region.to_vec());
    }
    let extra = host.xsave_words - LEGACY_XSAVE_WORDS;
    let mut x = Xsave::new(extra).map_err(StateError::Fam)?;
    // SAFETY: `x` holds the legacy area plus `extra` words, which is the size KVM answered
    // for KVM_CAP_XSAVE2, the most KVM_GET_XSAVE2 writes.
    unsafe { fd.get_xsave2(&mut x) }
        .map_err(|e| StateError::Kvm("read the XSAVE area (KVM_GET_XSAVE2)", e))?;
    let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(x.as_slice());
    Ok(words)
}

fn write_xsave(fd: &VcpuFd, words: &[u32]) -> Result<(), StateError> {
    let (region, extra) =
        words
            .split_at_checked(LEGACY_XSAVE_WORDS)
            .ok_or(StateError::XsaveSize {
                found: words.len(),
                expected: LEGACY_XSAVE_WORDS,
            })?;
    let mut x = Xsave::new(extra.len()).map_err(StateError::Fam)?;
    // SAFETY: writing the plain-integer fields of a struct we own.
    unsafe { x.as_mut_fam_struct() }
        .xsave
        .region
        .copy_from_slice(region);
    x.as_mut_slice().copy_from_slice(extra);
    // SAFETY: `x` is as large as the host's XSAVE area (validate checked the length against
    // KVM_CAP_XSAVE2), so KVM reads only memory of `x`.
    unsafe { fd.set_xsave2(&x) }.map_err(|e| StateError::Kvm("set the XSAVE area", e))
}

#[cfg(test)]
mod tests;
