//! Intel MultiProcessor Specification 1.4 tables: find the floating pointer, walk the
//! configuration table, count processor entries.

use crate::phys::{byte_sum, read_u16, read_u32, read_u8};

const FLOATING_SIGNATURE: u32 = u32::from_le_bytes(*b"_MP_");
const CONFIG_SIGNATURE: u32 = u32::from_le_bytes(*b"PCMP");
/// Where the spec says to look: the last KiB of base memory, then the BIOS ROM area.
const SEARCH_AREAS: [(u64, u64); 2] = [(0x9_fc00, 0xa_0000), (0xf_0000, 0x10_0000)];
const FLOATING_LEN: u64 = 16;
const CONFIG_HEADER_LEN: u64 = 44;

const ENTRY_PROCESSOR: u8 = 0;
const PROCESSOR_ENTRY_LEN: u64 = 20;
/// Bus, I/O APIC, I/O interrupt and local interrupt assignment entries.
const OTHER_ENTRY_LEN: u64 = 8;
const CPU_FLAG_ENABLED: u8 = 1;

pub struct Processors {
    pub enabled: u64,
    pub total: u64,
}

pub enum MpError {
    NoFloatingPointer,
    BadConfigTable,
    UnknownEntry,
}

impl MpError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoFloatingPointer => "no-mp-floating-pointer",
            Self::BadConfigTable => "bad-mp-config-table",
            Self::UnknownEntry => "unknown-mp-entry-type",
        }
    }
}

/// Address of a valid (signature and checksum) floating pointer structure.
pub fn find_floating_pointer() -> Option<u64> {
    SEARCH_AREAS.iter().find_map(|&(start, end)| {
        (start..end)
            .step_by(16)
            .find(|&addr| read_u32(addr) == FLOATING_SIGNATURE && byte_sum(addr, FLOATING_LEN) == 0)
    })
}

pub fn processors() -> Result<Processors, MpError> {
    let floating = find_floating_pointer().ok_or(MpError::NoFloatingPointer)?;
    let config = u64::from(read_u32(floating + 4));
    if config == 0 || config >= 1 << 30 || read_u32(config) != CONFIG_SIGNATURE {
        return Err(MpError::BadConfigTable);
    }
    let table_len = u64::from(read_u16(config + 4));
    if table_len < CONFIG_HEADER_LEN || byte_sum(config, table_len) != 0 {
        return Err(MpError::BadConfigTable);
    }
    let count = read_u16(config + 34);
    let end = config + table_len;
    let mut entry = config + CONFIG_HEADER_LEN;
    let mut found = Processors { enabled: 0, total: 0 };
    for _ in 0..count {
        let kind = read_u8(entry);
        let len = match kind {
            ENTRY_PROCESSOR => PROCESSOR_ENTRY_LEN,
            1..=4 => OTHER_ENTRY_LEN,
            _ => return Err(MpError::UnknownEntry),
        };
        if entry + len > end {
            return Err(MpError::BadConfigTable);
        }
        if kind == ENTRY_PROCESSOR {
            found.total += 1;
            if read_u8(entry + 3) & CPU_FLAG_ENABLED != 0 {
                found.enabled += 1;
            }
        }
        entry += len;
    }
    Ok(found)
}
