//! The custom CPU template parser (`PUT /cpu-config`, the config file's `cpu-config`): any
//! bytes give a template or an error, never a panic or an unbounded allocation; a template
//! that parses serialises back to the same template, and applying it to a CPUID list that has
//! its leaves changes only the bits it names and is idempotent.

#![no_main]

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use libfuzzer_sys::fuzz_target;
use palisade::arch::x86_64::cpu_template::{apply_to_cpuid, CustomCpuTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(template) = CustomCpuTemplate::from_json(data) else {
        return;
    };
    let text = serde_json::to_vec(&template).unwrap();
    let again = CustomCpuTemplate::from_json(&text)
        .unwrap_or_else(|e| panic!("a template does not parse back: {e}"));
    assert_eq!(again, template);

    let mut keys: Vec<(u32, u32)> = template
        .cpuid_modifiers
        .iter()
        .map(|l| (l.leaf, l.subleaf))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for fill in [0u32, u32::MAX] {
        let entries: Vec<kvm_cpuid_entry2> = keys
            .iter()
            .map(|&(function, index)| kvm_cpuid_entry2 {
                function,
                index,
                eax: fill,
                ebx: fill,
                ecx: fill,
                edx: fill,
                ..Default::default()
            })
            .collect();
        let Ok(mut cpuid) = CpuId::from_entries(&entries) else {
            return; // More leaves than a CPUID list holds: KVM would refuse the template.
        };
        apply_to_cpuid(&mut cpuid, &template).unwrap();
        let once = cpuid.clone();
        apply_to_cpuid(&mut cpuid, &template).unwrap();
        assert_eq!(once.as_slice(), cpuid.as_slice(), "not idempotent");
        for e in cpuid.as_slice() {
            let mut named = [0u64; 4];
            for l in &template.cpuid_modifiers {
                if (l.leaf, l.subleaf) == (e.function, e.index) {
                    for m in &l.modifiers {
                        named[m.register as usize] |= m.bitmap.filter;
                    }
                }
            }
            for (value, named) in [e.eax, e.ebx, e.ecx, e.edx].into_iter().zip(named) {
                let named = named as u32;
                assert_eq!(value & !named, fill & !named, "a bit it does not name changed");
            }
        }
    }
});
