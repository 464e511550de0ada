//! `cpus`: the enabled processors of the MP table match the logical processor count of CPUID
//! leaf 0xB (subleaf 1, core level). CPUID leaf 1 EBX[23:16] is shown when they differ.

use crate::cpuid::cpuid;
use crate::mptable;
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "cpus";

pub fn run(_boot: &BootInfo) {
    let max_leaf = cpuid(0, 0).eax;
    let leaf_0xb = if max_leaf >= 0xb { u64::from(cpuid(0xb, 1).ebx & 0xffff) } else { 0 };
    let leaf_1 = u64::from((cpuid(1, 0).ebx >> 16) & 0xff);
    match mptable::processors() {
        Ok(cpus) if cpus.enabled == leaf_0xb => {
            ResultLine::ok(NAME.as_bytes()).dec("count", cpus.enabled).end();
        }
        Ok(cpus) => ResultLine::fail(NAME.as_bytes())
            .dec("mptable", cpus.enabled)
            .dec("cpuid_0xb", leaf_0xb)
            .dec("cpuid_1", leaf_1)
            .hex("cpuid_max", u64::from(max_leaf))
            .end(),
        Err(error) => ResultLine::fail(NAME.as_bytes())
            .text(error.as_str())
            .dec("cpuid_0xb", leaf_0xb)
            .dec("cpuid_1", leaf_1)
            .end(),
    }
}
