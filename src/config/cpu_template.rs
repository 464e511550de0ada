//! The CPU template in the configuration: `machine-config.cpu_template` (static, shown only
//! while static) and the `cpu-config` section (a custom template inline or in a file), with
//! Firecracker's rule that the last one set wins.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::arch::x86_64::cpu_template::{CpuTemplate, CustomCpuTemplate, StaticCpuTemplate};

/// Firecracker's rule for the template slot: a request without a template keeps the one set
/// before, "None" clears it, any other replaces it.
pub(super) fn kept_template(
    new: Option<CpuTemplate>,
    old: &Option<CpuTemplate>,
) -> Option<CpuTemplate> {
    match new {
        None => old.clone(),
        Some(CpuTemplate::Static(StaticCpuTemplate::None)) => None,
        some => some,
    }
}

pub(super) fn static_template<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CpuTemplate>, D::Error> {
    Ok(Option::<StaticCpuTemplate>::deserialize(deserializer)?.map(CpuTemplate::Static))
}

pub(super) fn static_template_name<S: serde::Serializer>(
    template: &Option<CpuTemplate>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    template
        .as_ref()
        .and_then(CpuTemplate::static_name)
        .serialize(serializer)
}

pub(super) fn no_static_template(template: &Option<CpuTemplate>) -> bool {
    template
        .as_ref()
        .and_then(CpuTemplate::static_name)
        .is_none()
}

/// Largest `cpu-config` file read.
const MAX_CPU_CONFIG_FILE: u64 = 1 << 20;

/// The `cpu-config` section: an inline template or the path of one (Firecracker's two forms).
pub(super) fn cpu_config_section(
    value: serde_json::Value,
) -> Result<CustomCpuTemplate, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |e: &dyn std::fmt::Display| ConfigError::CpuConfig(e.to_string());
    match value {
        serde_json::Value::String(path) => {
            let mut text = Vec::new();
            // A FIFO or device would block the read or never end: only regular files.
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .and_then(|f| {
                    if f.metadata()?.is_file() {
                        Ok(f)
                    } else {
                        Err(std::io::Error::other("not a regular file"))
                    }
                })
                .and_then(|f| f.take(MAX_CPU_CONFIG_FILE + 1).read_to_end(&mut text))
                .map_err(|e| ConfigError::CpuConfig(format!("cannot read {path}: {e}")))?;
            if text.len() as u64 > MAX_CPU_CONFIG_FILE {
                return Err(ConfigError::CpuConfig(format!(
                    "{path} is larger than {MAX_CPU_CONFIG_FILE} bytes"
                )));
            }
            CustomCpuTemplate::from_json(&text).map_err(|e| bad(&e))
        }
        other => serde_json::from_value(other).map_err(|e| bad(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MachineConfig, MachineConfigUpdate, VmConfig};

    #[test]
    fn cpu_templates_take_the_last_one_set_as_firecracker_does() {
        let m = |json: &str| serde_json::from_str::<MachineConfig>(json).unwrap();
        let t2 = m(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}"#);
        assert_eq!(
            t2.cpu_template,
            Some(CpuTemplate::Static(StaticCpuTemplate::T2))
        );
        // Firecracker's key order: cpu_template after smt.
        assert_eq!(
            serde_json::to_string(&t2).unwrap(),
            r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"cpu_template":"T2","track_dirty_pages":false,"huge_pages":"None"}"#
        );
        // PUT without cpu_template keeps it; "None" clears it.
        let kept = m(r#"{"vcpu_count":2,"mem_size_mib":128}"#).replacing(&t2);
        assert_eq!(kept.cpu_template, t2.cpu_template);
        let cleared =
            m(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"None"}"#).replacing(&t2);
        assert_eq!(cleared.cpu_template, None);
        assert!(serde_json::to_value(&cleared)
            .unwrap()
            .get("cpu_template")
            .is_none());
        // A custom template is not shown in machine-config (Firecracker); PATCH T2S replaces it.
        let custom = MachineConfig {
            cpu_template: Some(CpuTemplate::Custom(Box::default())),
            ..MachineConfig::default()
        };
        assert!(serde_json::to_value(&custom)
            .unwrap()
            .get("cpu_template")
            .is_none());
        let patch: MachineConfigUpdate = serde_json::from_str(r#"{"cpu_template":"T2S"}"#).unwrap();
        assert_eq!(
            patch.apply(&custom).cpu_template,
            Some(CpuTemplate::Static(StaticCpuTemplate::T2S))
        );
        let patch: MachineConfigUpdate = serde_json::from_str(r#"{"smt":true}"#).unwrap();
        assert_eq!(patch.apply(&custom).cpu_template, custom.cpu_template);
        assert!(serde_json::from_str::<MachineConfigUpdate>(r#"{"cpu_template":"V1N1"}"#).is_err());
    }

    #[test]
    fn a_cpu_config_section_overrides_the_machine_configs_template() {
        let with = |section: &str| {
            VmConfig::from_json(&format!(
                r#"{{"boot-source":{{"kernel_image_path":"/k"}},
                    "machine-config":{{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"C3"}},
                    {section}}}"#
            ))
        };
        let template = r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,
            "modifiers":[{"register":"ecx","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0x"}]}]}"#;
        let inline = with(&format!(r#""cpu-config":{template}"#)).unwrap();
        let Some(CpuTemplate::Custom(t)) = &inline.machine_config.cpu_template else {
            panic!("{:?}", inline.machine_config.cpu_template);
        };
        assert_eq!(t.cpuid_modifiers[0].modifiers[0].bitmap.filter, 2);
        // The path form reads the file.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), template).unwrap();
        let path = file.path().to_str().unwrap();
        let from_file = with(&format!(r#""cpu-config":"{path}""#)).unwrap();
        assert_eq!(from_file.machine_config, inline.machine_config);
        // Null leaves the static template.
        let none = with(r#""cpu-config":null"#).unwrap();
        assert_eq!(
            none.machine_config.cpu_template,
            Some(CpuTemplate::Static(StaticCpuTemplate::C3))
        );
        let err = with(r#""cpu-config":{"kvm_capabilities":["171"]}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Invalid cpu-config: kvm_capabilities is not supported"),
            "{err}"
        );
        let err = with(r#""cpu-config":"/dev/zero""#).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = with(r#""cpu-config":"/nonexistent/t.json""#).unwrap_err();
        assert!(
            err.to_string().contains("cannot read /nonexistent/t.json"),
            "{err}"
        );
        std::fs::write(file.path(), vec![b' '; (MAX_CPU_CONFIG_FILE + 1) as usize]).unwrap();
        let err = with(&format!(r#""cpu-config":"{path}""#)).unwrap_err();
        assert!(err.to_string().contains("is larger than"), "{err}");
    }
}
