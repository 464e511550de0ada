//! Firecracker's custom CPU template (`PUT /cpu-config`, the config file's `cpu-config`):
//! `cpuid_modifiers` and `msr_modifiers` as Firecracker writes them. Every list is capped, so
//! a client cannot make the VMM allocate without limit, and every number needs its `0x` or
//! `0b` prefix (Firecracker's rule). Unlike Firecracker, an MSR modifier must name an MSR of
//! guest state (`msr::is_templatable`): the set a restored state file may set.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::bitmap::{shorten, Bitmap32, Bitmap64};
use crate::arch::x86_64::msr;

/// Most CPUID leaves a template may change (the kernel's KVM_MAX_CPUID_ENTRIES; a template
/// can only change leaves KVM lists, so a real one is far below it).
pub const MAX_CPUID_MODIFIERS: usize = 256;
/// Most register modifiers on one leaf.
pub const MAX_REGISTER_MODIFIERS: usize = 16;
/// Most MSRs a template may change.
pub const MAX_MSR_MODIFIERS: usize = 256;

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl Serialize for CpuidRegister {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            Self::Eax => "eax",
            Self::Ebx => "ebx",
            Self::Ecx => "ecx",
            Self::Edx => "edx",
        })
    }
}

impl<'de> Deserialize<'de> for CpuidRegister {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        match name.as_ref() {
            "eax" => Ok(Self::Eax),
            "ebx" => Ok(Self::Ebx),
            "ecx" => Ok(Self::Ecx),
            "edx" => Ok(Self::Edx),
            _ => Err(D::Error::custom(
                "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]",
            )),
        }
    }
}

/// One register of one CPUID leaf.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register.
    pub register: CpuidRegister,
    /// What to set in it.
    pub bitmap: Bitmap32,
}

/// The modifiers of one CPUID leaf and sub-leaf.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// Leaf (EAX input).
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub leaf: u32,
    /// Sub-leaf (ECX input).
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub subleaf: u32,
    /// KVM's flags for the entry (1: the sub-leaf is significant).
    pub flags: u32,
    /// The registers to change.
    #[serde(deserialize_with = "bounded::<_, MAX_REGISTER_MODIFIERS, _>")]
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// The modifier of one MSR.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// MSR index: one that holds guest state ([`msr::is_templatable`]).
    #[serde(deserialize_with = "templatable_msr", serialize_with = "hex")]
    pub addr: u32,
    /// What to set in it.
    pub bitmap: Bitmap64,
}

/// A custom CPU template, as Firecracker's x86_64 JSON has it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    /// KVM capabilities to add or remove: Palisade refuses a non-empty list.
    #[serde(
        default,
        deserialize_with = "no_kvm_capabilities",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kvm_capabilities: Vec<String>,
    /// CPUID changes.
    #[serde(default, deserialize_with = "bounded::<_, MAX_CPUID_MODIFIERS, _>")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR changes.
    #[serde(default, deserialize_with = "bounded::<_, MAX_MSR_MODIFIERS, _>")]
    pub msr_modifiers: Vec<MsrModifier>,
    /// aarch64 only: refused by name.
    #[serde(default, deserialize_with = "aarch64_only", skip_serializing)]
    pub(super) vcpu_features: (),
    /// aarch64 only: refused by name.
    #[serde(default, deserialize_with = "aarch64_only", skip_serializing)]
    pub(super) reg_modifiers: (),
}

impl CustomCpuTemplate {
    /// Parses a template from JSON (a `PUT /cpu-config` body or a `cpu-config` file).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn hex<S: Serializer>(n: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{n:#x}"))
}

/// Firecracker's numbers: a string with a `0x` (hex) or `0b` (binary) prefix.
fn number_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    let parsed = if let Some(s) = text.strip_prefix("0b") {
        u32::from_str_radix(s, 2)
    } else if let Some(s) = text.strip_prefix("0x") {
        u32::from_str_radix(s, 16)
    } else {
        return Err(D::Error::custom(format!(
            "No supported number system prefix found in value [{}]. Make sure to prefix the \
             number with '0x' for hexadecimal numbers or '0b' for binary numbers.",
            shorten(&text)
        )));
    };
    parsed.map_err(|e| {
        D::Error::custom(format!(
            "Failed to parse string [{}] as a number for CPU template - {e}",
            shorten(&text)
        ))
    })
}

/// An MSR index a template may change (see [`msr::is_templatable`]).
fn templatable_msr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let addr = number_u32(deserializer)?;
    if msr::is_templatable(addr) {
        Ok(addr)
    } else {
        Err(D::Error::custom(format!(
            "MSR {addr:#x} cannot be changed by a CPU template: only MSRs of guest state \
             (architectural, syscall, MTRR/PAT, machine-check, ARCH_CAPABILITIES, ...), not \
             PMU, VMX capability, Hyper-V or vendor MSRs"
        )))
    }
}

fn no_kvm_capabilities<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let list: Vec<String> = bounded::<_, 1, _>(deserializer).map_err(|_| {
        D::Error::custom("kvm_capabilities is not supported by Palisade: give an empty list")
    })?;
    if list.is_empty() {
        Ok(list)
    } else {
        Err(D::Error::custom(
            "kvm_capabilities is not supported by Palisade: give an empty list",
        ))
    }
}

fn aarch64_only<'de, D: Deserializer<'de>>(_deserializer: D) -> Result<(), D::Error> {
    Err(D::Error::custom(
        "vcpu_features and reg_modifiers are aarch64 template fields; this host is x86_64",
    ))
}

/// A JSON array of at most `MAX` elements, refused at element `MAX + 1` before it is read.
fn bounded<'de, T, const MAX: usize, D>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX} entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(A::Error::custom(format!(
                        "too many entries: at most {MAX} are accepted"
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CustomCpuTemplate, String> {
        CustomCpuTemplate::from_json(text.as_bytes()).map_err(|e| e.to_string())
    }

    const SAMPLE: &str = r#"{
      "cpuid_modifiers": [
        {"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
          {"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1x"},
          {"register": "edx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]},
        {"leaf": "0b111", "subleaf": "0x0", "flags": 1, "modifiers": []}
      ],
      "msr_modifiers": [
        {"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000000000001100"}
      ]
    }"#;

    #[test]
    fn firecracker_json_parses() {
        let t = parse(SAMPLE).unwrap();
        assert_eq!(t.cpuid_modifiers.len(), 2);
        let l1 = &t.cpuid_modifiers[0];
        assert_eq!((l1.leaf, l1.subleaf, l1.flags), (1, 0, 0));
        assert_eq!(l1.modifiers[0].register, CpuidRegister::Ecx);
        assert_eq!(l1.modifiers[0].bitmap.filter, 0b10);
        assert_eq!(l1.modifiers[1].bitmap.filter, 1 << 31);
        assert_eq!(l1.modifiers[1].bitmap.value, 0);
        assert_eq!(t.cpuid_modifiers[1].leaf, 7);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t.msr_modifiers[0].bitmap.value, 0b1100);
        assert_eq!(t.msr_modifiers[0].bitmap.filter, u64::MAX);
    }

    #[test]
    fn empty_object_is_the_empty_template() {
        assert_eq!(parse("{}").unwrap(), CustomCpuTemplate::default());
        assert_eq!(
            parse(r#"{"kvm_capabilities": []}"#).unwrap(),
            CustomCpuTemplate::default()
        );
    }

    #[test]
    fn serialisation_round_trips_in_firecracker_form() {
        let t = parse(SAMPLE).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains(r#""leaf":"0x1""#), "{text}");
        assert!(text.contains(r#""register":"ecx""#), "{text}");
        assert_eq!(parse(&text).unwrap(), t);
    }

    #[test]
    fn hostile_templates_get_clear_errors() {
        let cases = [
            (
                r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{"register":"esp","bitmap":"0b1"}]}]}"#,
                "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]",
            ),
            (
                r#"{"cpuid_modifiers":[{"leaf":"1","subleaf":"0x0","flags":0,"modifiers":[]}]}"#,
                "No supported number system prefix found in value [1]",
            ),
            (
                r#"{"cpuid_modifiers":[{"leaf":1,"subleaf":"0x0","flags":0,"modifiers":[]}]}"#,
                "invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"cpuid_modifiers":[{"leaf":"0x1ffffffff","subleaf":"0x0","flags":0,"modifiers":[]}]}"#,
                "Failed to parse string [0x1ffffffff] as a number for CPU template",
            ),
            (
                r#"{"msr_modifiers":[{"addr":"0x10a","bitmap":"0b2"}]}"#,
                "Failed to parse string [0b2] as a bitmap - unknown character: 50",
            ),
            (
                r#"{"kvm_capabilities":["!56"]}"#,
                "kvm_capabilities is not supported by Palisade",
            ),
            (r#"{"reg_modifiers":[]}"#, "aarch64 template fields"),
            (r#"{"vcpu_features":[]}"#, "aarch64 template fields"),
            (r#"{"cpuid":[]}"#, "unknown field `cpuid`"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let long = format!(
            r#"{{"cpuid_modifiers":[{{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{{"register":"eax","bitmap":"0b{}"}}]}}]}}"#,
            "0".repeat(33)
        );
        assert!(parse(&long).unwrap_err().contains("string is too long"));
    }

    #[test]
    fn only_msrs_of_guest_state_can_be_templated() {
        let msr = |addr: &str| {
            parse(&format!(
                r#"{{"msr_modifiers":[{{"addr":"{addr}","bitmap":"0b0"}}]}}"#
            ))
        };
        // What Firecracker's templates and guests' own state use (a dumped template names
        // the kvmclock and x2APIC MSRs too).
        for ok in [
            "0x10a",
            "0x1a0",
            "0x48",
            "0xc0000080",
            "0xc0000102",
            "0x277",
            "0x10",
            "0x4b564d01",
            "0x830",
        ] {
            assert!(msr(ok).is_ok(), "{ok}: {:?}", msr(ok));
        }
        // MSRs no state file may set either, which a client must not reach through KVM's
        // host-initiated write path: PMU (PERF_CAPABILITIES, PERF_GLOBAL_CTRL, PMC0, EVNTSEL0),
        // VMX capabilities, IA32_MCG_CTL, Hyper-V, the old kvmclock MSR, AMD's PMU.
        for bad in [
            "0x345",
            "0x38f",
            "0xc1",
            "0x186",
            "0x480",
            "0x48d",
            "0x17b",
            "0x40000000",
            "0x12",
            "0xc0010200",
        ] {
            let err = msr(bad).unwrap_err();
            assert!(
                err.contains("cannot be changed by a CPU template"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn lists_are_capped_before_they_grow() {
        let leaf = r#"{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[]}"#;
        let ok = format!(
            r#"{{"cpuid_modifiers":[{}]}}"#,
            vec![leaf; MAX_CPUID_MODIFIERS].join(",")
        );
        assert_eq!(
            parse(&ok).unwrap().cpuid_modifiers.len(),
            MAX_CPUID_MODIFIERS
        );
        let over = format!(
            r#"{{"cpuid_modifiers":[{}]}}"#,
            vec![leaf; MAX_CPUID_MODIFIERS + 1].join(",")
        );
        assert!(parse(&over)
            .unwrap_err()
            .contains("too many entries: at most 256"));
        let msr = r#"{"addr":"0x10","bitmap":"0b1"}"#;
        let over = format!(
            r#"{{"msr_modifiers":[{}]}}"#,
            vec![msr; MAX_MSR_MODIFIERS + 1].join(",")
        );
        assert!(parse(&over).unwrap_err().contains("too many entries"));
        let reg = r#"{"register":"eax","bitmap":"0b1"}"#;
        let over = format!(
            r#"{{"cpuid_modifiers":[{{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{}]}}]}}"#,
            vec![reg; MAX_REGISTER_MODIFIERS + 1].join(",")
        );
        assert!(parse(&over)
            .unwrap_err()
            .contains("too many entries: at most 16"));
    }
}
