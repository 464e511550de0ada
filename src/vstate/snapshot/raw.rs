//! Exact-size serde form of KVM's plain structs: a byte string that must be exactly
//! `size_of::<T>()` long when read back (kvm-bindings' own serde form pads or truncates
//! silently, which a hostile state file must not get).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A KVM struct carried as its exact bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Raw<T>(pub T);

impl<T: IntoBytes + Immutable> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Exact<T>(std::marker::PhantomData<T>);
        impl<T: FromBytes> serde::de::Visitor<'_> for Exact<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "exactly {} bytes", std::mem::size_of::<T>())
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<T, E> {
                T::read_from_bytes(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        deserializer
            .deserialize_bytes(Exact(std::marker::PhantomData))
            .map(Raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_regs;

    #[test]
    fn kvm_structs_round_trip_and_wrong_lengths_are_refused() {
        let regs = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            rip: 0xffff_ffff_8100_0000,
            ..Default::default()
        };
        let bytes = postcard::to_stdvec(&Raw(regs)).unwrap();
        let back: Raw<kvm_regs> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.0, regs);
        let short = postcard::to_stdvec(&[0u8; 8].as_slice()).unwrap();
        assert!(postcard::from_bytes::<Raw<kvm_regs>>(&short).is_err());
        let long = postcard::to_stdvec(&vec![0u8; std::mem::size_of::<kvm_regs>() + 1]).unwrap();
        assert!(postcard::from_bytes::<Raw<kvm_regs>>(&long).is_err());
    }
}
