//! Segment descriptors for the GDT loaded at guest entry.

use kvm_bindings::kvm_segment;

/// Encodes a segment descriptor from its flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn bits(entry: u64, shift: u32, mask: u64) -> u8 {
    ((entry >> shift) & mask) as u8
}

/// Turns a descriptor into the `kvm_segment` that KVM loads for selector `index * 8`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = bits(entry, 55, 1);
    let raw_limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bits(entry, 47, 1);
    kvm_segment {
        base: ((entry & 0xff00_0000_0000_0000) >> 32)
            | ((entry & 0x0000_00ff_0000_0000) >> 16)
            | ((entry & 0x0000_0000_ffff_0000) >> 16),
        limit,
        selector: u16::from(index) * 8,
        type_: bits(entry, 40, 0xf),
        present,
        dpl: bits(entry, 45, 3),
        db: bits(entry, 54, 1),
        s: bits(entry, 44, 1),
        l: bits(entry, 53, 1),
        g,
        avl: bits(entry, 52, 1),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// GDT for the 64-bit Linux boot protocol: null, 64-bit code, data, TSS.
pub const GDT_64BIT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for the PVH boot protocol (32-bit protected mode, flat): null, code, data, TSS.
pub const GDT_PVH: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment_decodes() {
        let seg = kvm_segment_from_gdt(GDT_64BIT[1], 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn null_segment_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(GDT_64BIT[0], 0).unusable, 1);
    }

    #[test]
    fn pvh_code_segment_is_32_bit_flat() {
        let seg = kvm_segment_from_gdt(GDT_PVH[1], 1);
        assert_eq!((seg.db, seg.l, seg.g), (1, 0, 1));
        assert_eq!(seg.limit, 0xffff_ffff);
    }
}
