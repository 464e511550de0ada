//! CPU templates, as Firecracker has them: a static template named by
//! `machine-config.cpu_template` (C3, T2, T2S, T2CL, T2A) or a custom one (`PUT /cpu-config`)
//! changes bits of the guest's CPUID and MSRs at vCPU creation. One slot holds either kind;
//! the last one set wins.

pub mod apply;
pub mod bitmap;
pub mod custom;
mod static_templates;

use serde::{Deserialize, Serialize};

pub use apply::{apply_to_cpuid, apply_to_msrs, ApplyError};
pub use custom::{CpuidRegister, CustomCpuTemplate};

/// Firecracker's static templates (`machine-config.cpu_template`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    /// Intel Skylake / Cascade Lake / Ice Lake, presented as a C3 instance.
    C3,
    /// Intel, presented as a T2 instance.
    T2,
    /// T2 with a fixed IA32_ARCH_CAPABILITIES, for Skylake and Cascade Lake.
    T2S,
    /// No template (clears one set before).
    #[default]
    None,
    /// T2 for Cascade Lake and Ice Lake.
    T2CL,
    /// T2 for AMD Milan.
    T2A,
}

/// A CPU vendor, from CPUID leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD.
    Amd,
    /// Anything else.
    Other,
}

/// Family/model/stepping as CPUID leaf 1 EAX gives them, without the processor type and
/// reserved bits.
const FMS_MASK: u32 = 0x0fff_0fff;
const SKYLAKE: u32 = 0x0005_0654;
const CASCADE_LAKE: u32 = 0x0005_0657;
const ICE_LAKE: u32 = 0x0006_06a6;
const MILAN: u32 = 0x00a0_0f11;

impl StaticCpuTemplate {
    fn vendor(self) -> Vendor {
        match self {
            Self::T2A => Vendor::Amd,
            _ => Vendor::Intel,
        }
    }

    /// The CPU models (leaf 1 EAX) Firecracker allows the template on.
    fn models(self) -> &'static [u32] {
        match self {
            Self::C3 | Self::T2 => &[SKYLAKE, CASCADE_LAKE, ICE_LAKE],
            Self::T2S => &[SKYLAKE, CASCADE_LAKE],
            Self::T2CL => &[CASCADE_LAKE, ICE_LAKE],
            Self::T2A => &[MILAN],
            Self::None => &[],
        }
    }

    /// The template's masks as a custom template (None: no masks).
    pub fn masks(self) -> Option<CustomCpuTemplate> {
        let table = match self {
            Self::C3 => &static_templates::C3,
            Self::T2 => &static_templates::T2,
            Self::T2S => &static_templates::T2S,
            Self::T2CL => &static_templates::T2CL,
            Self::T2A => &static_templates::T2A,
            Self::None => return None,
        };
        Some(table.to_custom())
    }
}

/// The CPU template of a machine: static or custom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuTemplate {
    /// Named by `machine-config.cpu_template`.
    Static(StaticCpuTemplate),
    /// Given by `PUT /cpu-config` or the config file's `cpu-config`.
    Custom(Box<CustomCpuTemplate>),
}

/// The host CPU as templates check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCpu {
    /// Vendor.
    pub vendor: Vendor,
    /// CPUID leaf 1 EAX.
    pub signature: u32,
}

impl HostCpu {
    /// This machine's CPU.
    pub fn probe() -> Self {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let vendor = match (leaf0.ebx, leaf0.edx, leaf0.ecx) {
            // "Genu" "ineI" "ntel"
            (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => Vendor::Intel,
            // "Auth" "enti" "cAMD"
            (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
            _ => Vendor::Other,
        };
        Self {
            vendor,
            signature: std::arch::x86_64::__cpuid(1).eax,
        }
    }
}

/// Why a template cannot be used on this host (Firecracker's messages).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuTemplateError {
    /// A static template of the other vendor.
    #[error(
        "Failed to get CPU template: CPU vendor mismatched between actual CPU and CPU template."
    )]
    VendorMismatch,
    /// A static template on a CPU model it is not made for.
    #[error(
        "Failed to get CPU template: The current CPU model is not permitted to apply the CPU template."
    )]
    CpuModel,
}

impl CpuTemplate {
    /// The masks to apply on `host`, or None when there is nothing to apply. Firecracker's
    /// checks: a static template needs its vendor and one of its CPU models.
    pub fn resolve(&self, host: HostCpu) -> Result<Option<CustomCpuTemplate>, CpuTemplateError> {
        match self {
            Self::Custom(template) => Ok(Some((**template).clone())),
            Self::Static(StaticCpuTemplate::None) => Ok(None),
            Self::Static(t) => {
                if host.vendor != t.vendor() {
                    return Err(CpuTemplateError::VendorMismatch);
                }
                if !t.models().contains(&(host.signature & FMS_MASK)) {
                    return Err(CpuTemplateError::CpuModel);
                }
                Ok(t.masks())
            }
        }
    }

    /// The static template, as `GET /machine-config` shows it (None for a custom one).
    pub fn static_name(&self) -> Option<StaticCpuTemplate> {
        match self {
            Self::Static(t) => Some(*t),
            Self::Custom(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASCADE: HostCpu = HostCpu {
        vendor: Vendor::Intel,
        signature: CASCADE_LAKE,
    };

    #[test]
    fn static_templates_follow_vendor_and_model() {
        let t2 = CpuTemplate::Static(StaticCpuTemplate::T2);
        assert!(t2.resolve(CASCADE).unwrap().is_some());
        let amd = HostCpu {
            vendor: Vendor::Amd,
            signature: MILAN,
        };
        assert_eq!(t2.resolve(amd), Err(CpuTemplateError::VendorMismatch));
        let t2a = CpuTemplate::Static(StaticCpuTemplate::T2A);
        assert_eq!(t2a.resolve(CASCADE), Err(CpuTemplateError::VendorMismatch));
        assert!(t2a.resolve(amd).unwrap().is_some());
        // This host's kind: Rocket Lake (family 6, model 0xa7) is none of the models.
        let rocket = HostCpu {
            vendor: Vendor::Intel,
            signature: 0x000a_0671,
        };
        assert_eq!(t2.resolve(rocket), Err(CpuTemplateError::CpuModel));
        let t2s = CpuTemplate::Static(StaticCpuTemplate::T2S);
        let ice = HostCpu {
            vendor: Vendor::Intel,
            signature: ICE_LAKE | 0xf000_3000,
        };
        assert_eq!(t2s.resolve(ice), Err(CpuTemplateError::CpuModel));
        assert!(t2.resolve(ice).unwrap().is_some());
        assert_eq!(
            CpuTemplate::Static(StaticCpuTemplate::None).resolve(rocket),
            Ok(None)
        );
    }

    #[test]
    fn custom_templates_apply_on_any_host() {
        let t = CpuTemplate::Custom(Box::default());
        let other = HostCpu {
            vendor: Vendor::Other,
            signature: 0,
        };
        assert_eq!(t.resolve(other), Ok(Some(CustomCpuTemplate::default())));
    }

    #[test]
    fn static_tables_match_firecracker_json() {
        // Spot checks against Firecracker's tests/data/custom_cpu_templates/*.json.
        let t2 = StaticCpuTemplate::T2.masks().unwrap();
        let text = serde_json::to_string(&t2).unwrap();
        assert!(text.contains(r#"{"leaf":"0x80000008","subleaf":"0x0","flags":0,"modifiers":[{"register":"ebx","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxx0xxxxxxxxx"}]}"#), "{text}");
        let c3 = StaticCpuTemplate::C3.masks().unwrap();
        assert_eq!(c3.cpuid_modifiers.len(), 5);
        assert!(c3.msr_modifiers.is_empty());
        let t2s = StaticCpuTemplate::T2S.masks().unwrap();
        assert_eq!(t2s.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t2s.msr_modifiers[0].bitmap.value, 0x0c0a_0c4c);
        assert_eq!(t2s.cpuid_modifiers, t2.cpuid_modifiers);
        let t2cl = StaticCpuTemplate::T2CL.masks().unwrap();
        assert_eq!(
            t2cl.msr_modifiers[0].bitmap.to_text(),
            "0b00000000000000000000000000000000000xxx0x0000x0x0xxx0000xxxxxxxxx"
        );
        // Each table parses back through the custom template parser.
        for t in [
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2S,
            StaticCpuTemplate::T2CL,
            StaticCpuTemplate::T2A,
        ] {
            let masks = t.masks().unwrap();
            let text = serde_json::to_vec(&masks).unwrap();
            assert_eq!(CustomCpuTemplate::from_json(&text).unwrap(), masks);
        }
    }

    #[test]
    fn static_names_are_firecrackers() {
        let names: Vec<StaticCpuTemplate> =
            serde_json::from_str(r#"["C3","T2","T2S","None","T2CL","T2A"]"#).unwrap();
        assert_eq!(names.len(), 6);
        assert!(serde_json::from_str::<StaticCpuTemplate>(r#""V1N1""#).is_err());
    }
}
