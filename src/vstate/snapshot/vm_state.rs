//! The VM's in-kernel device state: the two PICs and the IOAPIC (KVM_GET_IRQCHIP), the PIT
//! (KVM_GET_PIT2) and kvmclock (KVM_GET_CLOCK). Restore (after the vCPUs, as Firecracker
//! does): PIT, clock, PIC master, PIC slave, IOAPIC; each checked first.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::StateError;

/// Where the IOAPIC sits (KVM's fixed address).
const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Mode of a PIT channel the guest never programmed (KVM's reset value).
const PIT_MODE_UNSET: u8 = 0xff;
/// Flags of kvm_pit_state2: HPET_LEGACY, SPEAKER_DATA_ON.
const PIT_FLAGS_KNOWN: u32 = 0x3;
/// Flags KVM_GET_CLOCK may report: TSC_STABLE, REALTIME, HOST_TSC.
const CLOCK_FLAGS_KNOWN: u32 = 0x2 | 0x4 | 0x8;

/// The VM's state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIT channels.
    pub pit: Raw<kvm_pit_state2>,
    /// kvmclock.
    pub clock: Raw<kvm_clock_data>,
    /// Master 8259.
    pub pic_master: Raw<kvm_irqchip>,
    /// Slave 8259.
    pub pic_slave: Raw<kvm_irqchip>,
    /// IOAPIC.
    pub ioapic: Raw<kvm_irqchip>,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.0.clock)
            .finish_non_exhaustive()
    }
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<Raw<kvm_irqchip>, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(|e| StateError::Kvm("read an irqchip (KVM_GET_IRQCHIP)", e))?;
    Ok(Raw(chip))
}

impl VmState {
    /// Captures the VM's state (vCPUs paused).
    pub fn capture(fd: &VmFd) -> Result<Self, StateError> {
        let pit = fd
            .get_pit2()
            .map_err(|e| StateError::Kvm("read the PIT (KVM_GET_PIT2)", e))?;
        let clock = fd
            .get_clock()
            .map_err(|e| StateError::Kvm("read kvmclock (KVM_GET_CLOCK)", e))?;
        Ok(Self {
            pit: Raw(pit),
            clock: Raw(clock),
            pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Checks every value as if a hostile guest wrote it.
    pub fn validate(&self) -> Result<(), StateError> {
        let pit = &self.pit.0;
        if pit.flags & !PIT_FLAGS_KNOWN != 0 {
            return Err(StateError::Invalid("PIT flags"));
        }
        for ch in &pit.channels {
            let sane = ch.count <= 0x1_0000
                && (ch.mode <= 5 || ch.mode == PIT_MODE_UNSET)
                && ch.rw_mode <= 3
                && ch.read_state <= 4
                && ch.write_state <= 4
                && ch.status_latched <= 1
                && ch.count_latched <= 4
                && ch.bcd <= 1
                && ch.gate <= 1;
            if !sane {
                return Err(StateError::Invalid("PIT channel"));
            }
        }
        if self.clock.0.flags & !CLOCK_FLAGS_KNOWN != 0 {
            return Err(StateError::Invalid("kvmclock flags"));
        }
        let chips = [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC),
        ];
        for (chip, id) in chips {
            if chip.0.chip_id != id || chip.0.pad != 0 {
                return Err(StateError::Invalid("irqchip id"));
            }
        }
        // SAFETY: reading the IOAPIC member of a plain-integer union; every bit pattern is
        // a valid value of it.
        let ioapic = unsafe { self.ioapic.0.chip.ioapic };
        if ioapic.base_address != IOAPIC_BASE {
            return Err(StateError::Invalid("IOAPIC base address"));
        }
        Ok(())
    }

    /// Validates, then restores the state into `fd`. With `clock_realtime` the clock is set
    /// from the saved wall time (KVM_CLOCK_REALTIME), so time spent saved counts as elapsed;
    /// the state must hold it.
    pub fn restore(&self, fd: &VmFd, clock_realtime: bool) -> Result<(), StateError> {
        self.validate()?;
        fd.set_pit2(&self.pit.0)
            .map_err(|e| StateError::Kvm("set the PIT (KVM_SET_PIT2)", e))?;
        let mut clock = self.clock.0;
        clock.flags = if clock_realtime {
            if clock.flags & KVM_CLOCK_REALTIME == 0 {
                return Err(StateError::Invalid("kvmclock (no realtime value saved)"));
            }
            KVM_CLOCK_REALTIME
        } else {
            0
        };
        fd.set_clock(&clock)
            .map_err(|e| StateError::Kvm("set kvmclock (KVM_SET_CLOCK)", e))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            fd.set_irqchip(&chip.0)
                .map_err(|e| StateError::Kvm("set an irqchip (KVM_SET_IRQCHIP)", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::snapshot::test_kvm::vm_or_skip;
    use kvm_bindings::{kvm_ioapic_state, kvm_pic_state};

    type Corruption = (&'static str, fn(&mut VmState));

    fn pic(chip: &Raw<kvm_irqchip>) -> kvm_pic_state {
        // SAFETY: the PIC member of a plain-integer union; any bits are a valid value.
        unsafe { chip.0.chip.pic }
    }

    fn ioapic(chip: &Raw<kvm_irqchip>) -> kvm_ioapic_state {
        // SAFETY: the IOAPIC member of a plain-integer union; any bits are a valid value.
        unsafe { chip.0.chip.ioapic }
    }

    fn redirection(chip: &Raw<kvm_irqchip>, pin: usize) -> u64 {
        // SAFETY: the raw bits of a plain-integer union.
        unsafe { ioapic(chip).redirtbl[pin].bits }
    }

    #[test]
    fn vm_state_survives_a_restore_into_a_fresh_vm() {
        let Some(vm1) = vm_or_skip("vm_state_survives_a_restore_into_a_fresh_vm") else {
            return;
        };
        let fd1 = vm1.fd();
        let mut state = VmState::capture(fd1).unwrap();
        state.pic_master.0.chip.pic.imr = 0xfb;
        state.pic_slave.0.chip.pic.imr = 0xbf;
        let mut io = ioapic(&state.ioapic);
        io.redirtbl[3].bits = 0x0001_0000_0000_0031;
        state.ioapic.0.chip.ioapic = io;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            fd1.set_irqchip(&chip.0).unwrap();
        }
        let clock = kvm_clock_data {
            clock: 123_456_789_000,
            ..Default::default()
        };
        fd1.set_clock(&clock).unwrap();
        let saved = VmState::capture(fd1).unwrap();
        let bytes = postcard::to_stdvec(&saved).unwrap();
        let loaded: VmState = postcard::from_bytes(&bytes).unwrap();

        let vm2 = vm_or_skip("fresh vm").unwrap();
        loaded.restore(vm2.fd(), false).unwrap();
        let back = VmState::capture(vm2.fd()).unwrap();
        assert_eq!(pic(&back.pic_master).imr, 0xfb);
        assert_eq!(pic(&back.pic_slave).imr, 0xbf);
        assert_eq!(redirection(&back.ioapic, 3), 0x0001_0000_0000_0031);
        assert!(back.clock.0.clock >= 123_456_789_000);
        assert!(back.clock.0.clock < 123_456_789_000 + 10_000_000_000);
        assert_eq!(back.pit.0.channels[0].mode, saved.pit.0.channels[0].mode);
        assert_eq!(back.pit.0.channels[0].count, saved.pit.0.channels[0].count);
    }

    #[test]
    fn corrupted_vm_state_is_refused_before_kvm_sees_it() {
        let Some(vm) = vm_or_skip("corrupted_vm_state_is_refused_before_kvm_sees_it") else {
            return;
        };
        let good = VmState::capture(vm.fd()).unwrap();
        let cases: [Corruption; 6] = [
            ("PIT channel", |s| s.pit.0.channels[1].mode = 7),
            ("PIT channel", |s| s.pit.0.channels[0].count = 0x2_0000),
            ("PIT flags", |s| s.pit.0.flags = 0x80),
            ("irqchip id", |s| {
                std::mem::swap(&mut s.pic_master, &mut s.ioapic)
            }),
            ("IOAPIC base address", |s| {
                s.ioapic.0.chip.ioapic.base_address = 0xfee0_0000
            }),
            ("kvmclock flags", |s| s.clock.0.flags = 1 << 20),
        ];
        let target = vm_or_skip("fresh vm").unwrap();
        let before = VmState::capture(target.fd()).unwrap();
        for (what, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            match bad.restore(target.fd(), false) {
                Err(StateError::Invalid(w)) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        let after = VmState::capture(target.fd()).unwrap();
        assert_eq!(pic(&after.pic_master), pic(&before.pic_master));
        assert_eq!(ioapic(&after.ioapic).id, ioapic(&before.ioapic).id);
    }

    #[test]
    fn realtime_clock_is_refused_when_the_state_has_none() {
        let Some(vm) = vm_or_skip("realtime_clock_is_refused_when_the_state_has_none") else {
            return;
        };
        let mut state = VmState::capture(vm.fd()).unwrap();
        state.clock.0.flags &= !KVM_CLOCK_REALTIME;
        assert!(matches!(
            state.restore(vm.fd(), true),
            Err(StateError::Invalid(_))
        ));
    }
}
