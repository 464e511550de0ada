//! Firecracker's register bitmaps: `"0b"` then one character per bit, most significant first:
//! `0` clears the bit, `1` sets it, `x` keeps what KVM reports; `_` separates groups. A
//! shorter string leaves the missing high bits as `x` (as Firecracker does); a longer one is
//! refused.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which bits a register modifier sets (`filter`) and to what (`value`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegisterBitmap<const BITS: u32> {
    /// Bits the modifier sets (1) or keeps (0).
    pub filter: u64,
    /// The values of the bits in `filter` (zero outside it).
    pub value: u64,
}

/// A 32-bit CPUID register bitmap.
pub type Bitmap32 = RegisterBitmap<32>;
/// A 64-bit MSR bitmap.
pub type Bitmap64 = RegisterBitmap<64>;

impl<const BITS: u32> RegisterBitmap<BITS> {
    /// Parses `text`; at compile time for the static templates (a bad table does not build).
    pub const fn parse(text: &str) -> Result<Self, BitmapError> {
        let bytes = text.as_bytes();
        let start = if bytes.len() >= 2 && bytes[0] == b'0' && bytes[1] == b'b' {
            2
        } else {
            0
        };
        let (mut filter, mut value, mut bit) = (0u64, 0u64, 0u32);
        let mut i = bytes.len();
        while i > start {
            i -= 1;
            let c = bytes[i];
            if c == b'_' {
                continue;
            }
            if bit == BITS {
                return Err(BitmapError::TooLong);
            }
            match c {
                b'x' => {}
                b'0' => filter |= 1 << bit,
                b'1' => {
                    filter |= 1 << bit;
                    value |= 1 << bit;
                }
                other => return Err(BitmapError::UnknownCharacter(other)),
            }
            bit += 1;
        }
        Ok(Self { filter, value })
    }

    /// `register` with the bits in `filter` replaced by `value`.
    pub fn apply(&self, register: u64) -> u64 {
        (register & !self.filter) | self.value
    }

    /// Firecracker's text form: `"0b"` and one character per bit.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(BITS as usize + 2);
        s.push_str("0b");
        for bit in (0..BITS).rev() {
            let mask = 1u64 << bit;
            s.push(match (self.filter & mask != 0, self.value & mask != 0) {
                (false, _) => 'x',
                (true, false) => '0',
                (true, true) => '1',
            });
        }
        s
    }
}

/// Why a bitmap string is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// More bit characters than the register has.
    #[error("string is too long")]
    TooLong,
    /// A character other than 0, 1, x and _ (Firecracker's message names its byte value).
    #[error("unknown character: {0}")]
    UnknownCharacter(u8),
}

impl<const BITS: u32> Serialize for RegisterBitmap<BITS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de, const BITS: u32> Deserialize<'de> for RegisterBitmap<BITS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(|e| {
            D::Error::custom(format!(
                "Failed to parse string [{}] as a bitmap - {e}",
                shorten(&text)
            ))
        })
    }
}

/// `text`, cut to a length fit for an error message (a client may send megabytes).
pub(super) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_one_set_and_x_keeps() {
        let b = Bitmap32::parse("0b10x0").unwrap();
        assert_eq!((b.filter, b.value), (0b1101, 0b1000));
        // Bit 3 set, bit 2 cleared, bit 1 kept, bit 0 cleared; higher bits kept.
        assert_eq!(b.apply(0xffff_0007), 0xffff_000a);
        assert_eq!(b.apply(0), 0b1000);
    }

    #[test]
    fn underscores_separate_groups_and_prefix_is_optional() {
        assert_eq!(
            Bitmap32::parse("0b1_0").unwrap(),
            Bitmap32::parse("10").unwrap()
        );
    }

    #[test]
    fn full_width_round_trips() {
        let text = format!("0b{}", "1x0".repeat(21) + "1");
        let b = Bitmap64::parse(&text).unwrap();
        assert_eq!(b.to_text(), text);
        let text = "0bxxxx000000000011xx00011011110010";
        assert_eq!(Bitmap32::parse(text).unwrap().to_text(), text);
    }

    #[test]
    fn too_long_and_unknown_characters_are_refused() {
        let long = format!("0b{}", "0".repeat(33));
        assert_eq!(Bitmap32::parse(&long), Err(BitmapError::TooLong));
        assert!(Bitmap64::parse(&long).is_ok());
        assert_eq!(
            Bitmap32::parse("0b1y"),
            Err(BitmapError::UnknownCharacter(b'y'))
        );
        let err = serde_json::from_str::<Bitmap32>(&format!("\"{long}\"")).unwrap_err();
        assert!(err.to_string().contains("string is too long"), "{err}");
    }

    #[test]
    fn error_messages_do_not_echo_megabytes() {
        let huge = format!("\"0b{}\"", "2".repeat(1 << 20));
        let err = serde_json::from_str::<Bitmap32>(&huge).unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}
