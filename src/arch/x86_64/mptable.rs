//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its vCPUs,
//! the IOAPIC and how ISA interrupts are wired.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START};

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Family 6 stepping signature, as real MP tables carry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 1;
const CPU_FEATURE_APIC: u32 = 0x200;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INT: u8 = 3;
const ENTRY_LOCAL_INT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// IOAPIC pins wired to ISA IRQs of the same number.
const IOAPIC_PINS: u8 = 24;
/// Space the table may use: from the EBDA start to the end of base memory.
const MPTABLE_MAX_SIZE: usize = 0x400;
/// Most vCPUs the table can describe.
pub const MAX_CPUS: u8 = 32;

/// Errors of MP table setup.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The vCPU count is zero or over [`MAX_CPUS`].
    #[error("An MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// The table would overflow the EBDA.
    #[error("The MP table of {0} bytes does not fit the EBDA")]
    TooLarge(usize),
    /// Writing it to guest memory failed.
    #[error("Cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer structure followed by the configuration table for a table
/// placed at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IO_INT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let config_len = 44 + entries.len();
    let mut config = Vec::with_capacity(config_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&(config_len as u16).to_le_bytes());
    config.extend_from_slice(&[MPC_SPEC, 0]);
    config.extend_from_slice(b"PALISADE");
    config.extend_from_slice(b"microVM     ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&[0u8; 4]); // extended table length, checksum, reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut table = Vec::with_capacity(16 + config_len);
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&((base + 16) as u32).to_le_bytes());
    table.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table);
    table.extend_from_slice(&config);
    if table.len() > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooLarge(table.len()));
    }
    Ok(table)
}

/// Writes the MP table for `num_cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let table = build(EBDA_START, num_cpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_valid_and_pointer_is_right() {
        let t = build(EBDA_START, 4).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(sum(&t[16..16 + len]), 0);
        assert_eq!(
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64,
            EBDA_START + 16
        );
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_bsp_first() {
        let t = build(EBDA_START, 3).unwrap();
        let entries = &t[16 + 44..];
        let cpus: Vec<_> = entries.chunks(20).take(3).collect();
        assert!(cpus.iter().all(|e| e[0] == ENTRY_PROCESSOR));
        assert_eq!(cpus[0][3], CPU_FLAG_ENABLED | CPU_FLAG_BSP);
        assert_eq!(cpus[2][1], 2);
        assert_eq!(entries[60], ENTRY_BUS);
    }

    #[test]
    fn the_largest_machine_fits_and_zero_cpus_are_refused() {
        assert!(build(EBDA_START, MAX_CPUS).is_ok());
        assert!(matches!(
            build(EBDA_START, 0),
            Err(MptableError::CpuCount(0))
        ));
        assert!(build(EBDA_START, MAX_CPUS + 1).is_err());
    }
}
