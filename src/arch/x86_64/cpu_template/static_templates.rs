//! Firecracker's static CPU templates as data: the masks C3, T2, T2S, T2CL (Intel) and T2A
//! (AMD) apply, written as Firecracker's bitmaps. Each table is parsed at compile time.

use super::bitmap::{Bitmap32, Bitmap64};
use super::custom::{
    CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, CustomCpuTemplate, MsrModifier,
};
use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// One leaf of a static template.
pub struct StaticLeaf {
    leaf: u32,
    subleaf: u32,
    flags: u32,
    registers: &'static [(CpuidRegister, Bitmap32)],
}

/// A static template's CPUID and MSR changes.
pub struct StaticTable {
    /// CPUID leaves.
    pub cpuid: &'static [StaticLeaf],
    /// MSRs.
    pub msrs: &'static [(u32, Bitmap64)],
}

impl StaticTable {
    /// The table as a custom template (what is applied at vCPU creation).
    pub fn to_custom(&self) -> CustomCpuTemplate {
        CustomCpuTemplate {
            cpuid_modifiers: self
                .cpuid
                .iter()
                .map(|l| CpuidLeafModifier {
                    leaf: l.leaf,
                    subleaf: l.subleaf,
                    flags: l.flags,
                    modifiers: l
                        .registers
                        .iter()
                        .map(|&(register, bitmap)| CpuidRegisterModifier { register, bitmap })
                        .collect(),
                })
                .collect(),
            msr_modifiers: self
                .msrs
                .iter()
                .map(|&(addr, bitmap)| MsrModifier { addr, bitmap })
                .collect(),
            ..Default::default()
        }
    }
}

const fn b32(text: &str) -> Bitmap32 {
    match Bitmap32::parse(text) {
        Ok(b) => b,
        Err(_) => panic!("invalid 32-bit bitmap in a static template"),
    }
}

const fn b64(text: &str) -> Bitmap64 {
    match Bitmap64::parse(text) {
        Ok(b) => b,
        Err(_) => panic!("invalid 64-bit bitmap in a static template"),
    }
}

const fn leaf(
    leaf: u32,
    subleaf: u32,
    flags: u32,
    registers: &'static [(CpuidRegister, Bitmap32)],
) -> StaticLeaf {
    StaticLeaf {
        leaf,
        subleaf,
        flags,
        registers,
    }
}

// The leaves every T2 family template shares: family/model/stepping of a Skylake-era part,
// and the features it hides in leaves 1, 7, 0xD and 0x8000_0008.
const T2_LEAF1: StaticLeaf = leaf(
    0x1,
    0x0,
    0,
    &[
        (Eax, b32("0bxxxx000000000011xx00011011110010")),
        (Ecx, b32("0bxxxxxxxxxxxxx0xx00xx00x0000000xx")),
        (Edx, b32("0b000x0xxxx00xx0xxxxx1xxxx1xxxxxxx")),
    ],
);
const T2_LEAF7: StaticLeaf = leaf(
    0x7,
    0x0,
    1,
    &[
        (Ebx, b32("0b00000000000x000000x00x1xxxx0x0xx")),
        (Ecx, b32("0bx0xxxxxxx0xxxxx0x0x00000x0x0000x")),
        (Edx, b32("0bxxxxxxxxxxxxxxxxxxxxxxx0xxx000xx")),
    ],
);
const XSAVE_LEAF_D0: StaticLeaf = leaf(
    0xd,
    0x0,
    1,
    &[(Eax, b32("0bxxxxxxxxxxxxxxxxxxxxxx0x00000xxx"))],
);
const XSAVE_LEAF_D1: StaticLeaf = leaf(
    0xd,
    0x1,
    1,
    &[(Eax, b32("0bxxxxxxxxxxxxxxxxxxxxxxxxxxxx000x"))],
);
const T2_LEAF_80000008: StaticLeaf = leaf(
    0x8000_0008,
    0x0,
    0,
    &[(Ebx, b32("0bxxxxxxxxxxxxxxxxxxxxxx0xxxxxxxxx"))],
);

/// C3.
pub const C3: StaticTable = StaticTable {
    cpuid: &[
        leaf(
            0x1,
            0x0,
            0,
            &[
                (Eax, b32("0bxxxx000000000011xx00011011100100")),
                (Ecx, b32("0bxxxxxxxxx0xxxxxx00x000x0xx0000xx")),
                (Edx, b32("0b0x0x0xxxx00xx0xxxxx1xxxx1xxxxxxx")),
            ],
        ),
        leaf(
            0x7,
            0x0,
            1,
            &[
                (Ebx, b32("0b000000000x0x000000x000x0xx0000xx")),
                (Ecx, b32("0bx0xxxxxxx0xxxxx0x0xx0xxxxxx0000x")),
                (Edx, b32("0bxxxxxxxxxxxxxxxxxxxxxxxxxxxx00xx")),
            ],
        ),
        XSAVE_LEAF_D0,
        XSAVE_LEAF_D1,
        leaf(
            0x8000_0001,
            0x0,
            0,
            &[
                (Ecx, b32("0bxxxxxxxxxxxxxxxxxxxxxxx0xx0xxxxx")),
                (Edx, b32("0bxxxxx0xxxxxxxxxxxxxxxxxxxxxxxxxx")),
            ],
        ),
    ],
    msrs: &[],
};

/// T2.
pub const T2: StaticTable = StaticTable {
    cpuid: &[
        T2_LEAF1,
        T2_LEAF7,
        XSAVE_LEAF_D0,
        XSAVE_LEAF_D1,
        leaf(
            0x8000_0001,
            0x0,
            0,
            &[
                (Ecx, b32("0bxx0xxxxxxxxxxxxxxxxxxxx0xxxxxxxx")),
                (Edx, b32("0bxxxxx0xxxxxxxxxxxxxxxxxxxxxxxxxx")),
            ],
        ),
        T2_LEAF_80000008,
    ],
    msrs: &[],
};

/// T2S: T2 plus a fixed IA32_ARCH_CAPABILITIES.
pub const T2S: StaticTable = StaticTable {
    cpuid: T2.cpuid,
    msrs: &[(
        0x10a,
        b64("0b0000000000000000000000000000000000001100000010100000110001001100"),
    )],
};

/// T2CL: T2 with more extended features hidden and IA32_ARCH_CAPABILITIES masked.
pub const T2CL: StaticTable = StaticTable {
    cpuid: &[
        T2_LEAF1,
        T2_LEAF7,
        XSAVE_LEAF_D0,
        XSAVE_LEAF_D1,
        leaf(
            0x8000_0001,
            0x0,
            0,
            &[
                (Ecx, b32("0bxx0xxxxxxxxxxxxxxxxxxxx000xxxxxx")),
                (Edx, b32("0bxxxxx00000xxxxxxxxxxxxxxxxxxxxxx")),
            ],
        ),
        T2_LEAF_80000008,
    ],
    msrs: &[(
        0x10a,
        b64("0b00000000000000000000000000000000000xxx0x0000x0x0xxx0000xxxxxxxxx"),
    )],
};

/// T2A: the T2 feature set on AMD.
pub const T2A: StaticTable = StaticTable {
    cpuid: &[
        T2_LEAF1,
        T2_LEAF7,
        XSAVE_LEAF_D0,
        XSAVE_LEAF_D1,
        leaf(
            0x8000_0001,
            0x0,
            0,
            &[
                (Ecx, b32("0bxx0xxxxxxxxxxxxxxxxxxxx000xxx0xx")),
                (Edx, b32("0bxxxxx00xx0xxxxxxxxxxxxxxxxxxxxxx")),
            ],
        ),
        leaf(
            0x8000_0008,
            0x0,
            0,
            &[(Ebx, b32("0bxxxxxxxxxxx111xxxxxxxx0xxxxxx1x0"))],
        ),
    ],
    msrs: &[],
};
