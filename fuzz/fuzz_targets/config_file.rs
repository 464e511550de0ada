//! The Firecracker-format config file parser: any bytes give a config or an error, never a
//! panic; a config that parses survives everything the VMM does with it before booting (its
//! Landlock rules, `GET /vm/config`), and that document parses again to the same one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::config::{VmConfig, VmResources};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = VmConfig::from_json(text) else {
        return;
    };
    let _ = config.machine_config.validate(1024);
    let resources = VmResources::from(config);
    let _ = resources.landlock_rules();
    let full = resources.to_full_config();
    let text = serde_json::to_string(&full).unwrap_or_default();
    let again = VmConfig::from_json(&text)
        .unwrap_or_else(|e| panic!("GET /vm/config does not parse back: {e}\n{text}"));
    assert_eq!(VmResources::from(again).to_full_config(), full);
});
