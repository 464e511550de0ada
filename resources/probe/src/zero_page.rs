//! The Linux zero page (struct boot_params) the VMM hands over in RSI, copied into a
//! `BootInfo` at start so that later scenarios (the memory test) may overwrite guest RAM.

use crate::e820::{E820Entry, E820Map, MAX_ENTRIES};
use crate::phys::{read_u32, read_u64, read_u8};

const EXT_CMD_LINE_PTR: u64 = 0x0c8;
const E820_ENTRIES: u64 = 0x1e8;
const CMD_LINE_PTR: u64 = 0x228;
const CMDLINE_SIZE: u64 = 0x238;
const E820_TABLE: u64 = 0x2d0;
const E820_ENTRY_SIZE: u64 = 20;

/// Longest command line kept; longer ones are cut.
pub const CMDLINE_MAX: usize = 4096;
/// The part of RAM boot.rs maps; a command line elsewhere is ignored.
const MAPPED_LIMIT: u64 = 1 << 30;

pub struct BootInfo {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    pub e820: E820Map,
}

impl BootInfo {
    pub fn read(zero_page: u64) -> Self {
        let mut info = Self { cmdline: [0; CMDLINE_MAX], cmdline_len: 0, e820: E820Map::new() };
        let ptr = u64::from(read_u32(zero_page + CMD_LINE_PTR))
            | u64::from(read_u32(zero_page + EXT_CMD_LINE_PTR)) << 32;
        let size = u64::from(read_u32(zero_page + CMDLINE_SIZE));
        let limit = if size == 0 { CMDLINE_MAX as u64 } else { size.min(CMDLINE_MAX as u64) };
        if ptr != 0 && ptr + limit <= MAPPED_LIMIT {
            while (info.cmdline_len as u64) < limit {
                let byte = read_u8(ptr + info.cmdline_len as u64);
                if byte == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = byte;
                info.cmdline_len += 1;
            }
        }
        let count = usize::from(read_u8(zero_page + E820_ENTRIES)).min(MAX_ENTRIES);
        for i in 0..count as u64 {
            let entry = zero_page + E820_TABLE + i * E820_ENTRY_SIZE;
            info.e820.push(E820Entry {
                addr: read_u64(entry),
                size: read_u64(entry + 8),
                kind: read_u32(entry + 16),
            });
        }
        info
    }

    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }
}
