//! Local APIC set up as Linux expects it: LINT0 in ExtINT mode, LINT1 in NMI mode.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors of LAPIC setup.
#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    /// KVM_GET_LAPIC failed.
    #[error("Cannot read the local APIC state")]
    Get(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("Cannot write the local APIC state")]
    Set(#[source] kvm_ioctls::Error),
}

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = state.regs[offset + i] as u8;
    }
    u32::from_le_bytes(b)
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut state = vcpu.get_lapic().map_err(LapicError::Get)?;
    let lvt0 = read_reg(&state, APIC_LVT0);
    write_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = read_reg(&state, APIC_LVT1);
    write_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_bits_8_to_10_only() {
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        let mut s = kvm_lapic_state::default();
        write_reg(&mut s, APIC_LVT0, 0xdead_beef);
        assert_eq!(read_reg(&s, APIC_LVT0), 0xdead_beef);
    }
}
