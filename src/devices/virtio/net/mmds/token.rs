//! MMDS V2 session tokens: HMAC-SHA-256 over (interface id, issue time, expiry) under a per-VM
//! random key.
//!
//! A token is `hex(issued_ms) || hex(expiry_ms) || hex(tag)`: 16 + 16 + 64 hex digits. The
//! issue time lets the audit log give a token's age (never the token). Both times count
//! milliseconds from the authority's epoch (a monotonic instant taken when the VM's responders were made),
//! so the wall clock cannot move it. The tag binds the interface id, so a token issued on one
//! interface is refused on another; the key is drawn per VM (and anew for a restored clone),
//! so a token from another VM is refused. Checking is constant-time in the tag and refuses any
//! input longer than a token before doing any work.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest lifetime a guest may ask for (Firecracker's bound).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// Longest lifetime a guest may ask for (Firecracker's and EC2's bound).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21600;
/// The path a `PUT` asks a token of.
pub const PATH_TO_TOKEN: &str = "/latest/api/token";
/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a token string.
pub const TOKEN_LEN: usize = 16 + 16 + 64;

type HmacSha256 = Hmac<Sha256>;

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The requested lifetime is out of bounds (Firecracker's message).
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    /// The key was refused by HMAC (cannot happen: HMAC takes any key length).
    #[error("Failed to key the token MAC")]
    Key,
    /// The host's random source failed.
    #[error("Failed to generate a key: {0}")]
    Random(String),
}

/// A per-VM token key (random; a restored clone draws a new one).
#[derive(Clone)]
pub struct TokenKey([u8; KEY_LEN]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh key from the host's getrandom(2).
    pub fn random() -> Result<Self, TokenError> {
        let mut key = [0u8; KEY_LEN];
        crate::devices::virtio::rng::host_random(&mut key)
            .map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self(key))
    }

    /// A key from given bytes (tests, fuzzing).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

/// What a valid token says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// Time since it was issued.
    pub age: Duration,
    /// Time until it expires.
    pub remaining: Duration,
}

/// Issues and checks the tokens of one interface.
#[derive(Debug, Clone)]
pub struct TokenAuthority {
    key: TokenKey,
    iface_id: String,
    epoch: Instant,
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (hex_nibble(pair[0])? << 4) | hex_nibble(pair[1])?;
    }
    Some(())
}

fn encode_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

impl TokenAuthority {
    /// The authority of interface `iface_id` under the VM's `key`, counting time from `epoch`.
    pub fn new(key: TokenKey, iface_id: &str, epoch: Instant) -> Self {
        Self {
            key,
            iface_id: iface_id.to_string(),
            epoch,
        }
    }

    /// The MAC state over the token's fields (HMAC takes any key length: never `None`).
    fn mac(&self, issued_ms: u64, expiry_ms: u64) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(&self.key.0).ok()?;
        mac.update(b"palisade-mmds-token-v2");
        mac.update(&(self.iface_id.len() as u64).to_le_bytes());
        mac.update(self.iface_id.as_bytes());
        mac.update(&issued_ms.to_le_bytes());
        mac.update(&expiry_ms.to_le_bytes());
        Some(mac)
    }

    fn millis_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A token valid for `ttl_seconds` from `now`.
    pub fn issue(&self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let issued_ms = self.millis_since_epoch(now);
        let expiry_ms = issued_ms
            .saturating_add(Duration::from_secs(u64::from(ttl_seconds)).as_millis() as u64);
        let tag = self
            .mac(issued_ms, expiry_ms)
            .ok_or(TokenError::Key)?
            .finalize()
            .into_bytes();
        let mut token = String::with_capacity(TOKEN_LEN);
        encode_hex(&issued_ms.to_be_bytes(), &mut token);
        encode_hex(&expiry_ms.to_be_bytes(), &mut token);
        encode_hex(&tag, &mut token);
        Ok(token)
    }

    /// Whether `token` was issued by this authority (same key, same interface) and has not
    /// expired at `now`. Returns its age and remaining lifetime when valid.
    pub fn check(&self, token: &str, now: Instant) -> Option<TokenTimes> {
        let bytes = token.trim().as_bytes();
        if bytes.len() != TOKEN_LEN {
            return None;
        }
        let mut issued = [0u8; 8];
        decode_hex(&bytes[..16], &mut issued)?;
        let mut expiry = [0u8; 8];
        decode_hex(&bytes[16..32], &mut expiry)?;
        let mut tag = [0u8; 32];
        decode_hex(&bytes[32..], &mut tag)?;
        let issued_ms = u64::from_be_bytes(issued);
        let expiry_ms = u64::from_be_bytes(expiry);
        self.mac(issued_ms, expiry_ms)?.verify_slice(&tag).ok()?;
        let now_ms = self.millis_since_epoch(now);
        (now_ms < expiry_ms).then(|| TokenTimes {
            age: Duration::from_millis(now_ms.saturating_sub(issued_ms)),
            remaining: Duration::from_millis(expiry_ms - now_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(key: u8, iface: &str, epoch: Instant) -> TokenAuthority {
        TokenAuthority::new(TokenKey::from_bytes([key; KEY_LEN]), iface, epoch)
    }

    #[test]
    fn token_is_valid_until_its_ttl_and_refused_after() {
        let t0 = Instant::now();
        let a = authority(1, "eth0", t0);
        let token = a.issue(2, t0).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(a.check(&token, t0 + Duration::from_millis(1999)).is_some());
        assert!(a.check(&token, t0 + Duration::from_secs(2)).is_none());
    }

    #[test]
    fn token_from_another_key_or_interface_is_refused() {
        let t0 = Instant::now();
        let token = authority(1, "eth0", t0).issue(60, t0).unwrap();
        assert!(authority(2, "eth0", t0).check(&token, t0).is_none());
        assert!(authority(1, "eth1", t0).check(&token, t0).is_none());
    }

    #[test]
    fn forged_expiry_or_garbage_is_refused() {
        let t0 = Instant::now();
        let a = authority(1, "eth0", t0);
        let token = a.issue(1, t0).unwrap();
        // Push the expiry far out, or the issue time back, keeping the tag: it no longer
        // matches.
        let forged = format!("{}7fffffffffffffff{}", &token[..16], &token[32..]);
        assert!(a.check(&forged, t0).is_none());
        let forged = format!("00000000000003e8{}", &token[16..]);
        assert!(a.check(&forged, t0).is_none());
        assert!(a.check("", t0).is_none());
        assert!(a.check(&"z".repeat(TOKEN_LEN), t0).is_none());
        assert!(a.check(&"a".repeat(100_000), t0).is_none());
    }

    #[test]
    fn ttl_bounds_are_firecrackers() {
        let t0 = Instant::now();
        let a = authority(1, "eth0", t0);
        assert_eq!(a.issue(0, t0), Err(TokenError::InvalidTtl(0)));
        assert_eq!(a.issue(21601, t0), Err(TokenError::InvalidTtl(21601)));
        assert!(a.issue(21600, t0).is_ok());
    }

    #[test]
    fn a_valid_token_tells_its_age_and_remaining_lifetime() {
        let t0 = Instant::now();
        let a = authority(1, "eth0", t0);
        let token = a.issue(60, t0 + Duration::from_secs(5)).unwrap();
        let times = a.check(&token, t0 + Duration::from_secs(17)).unwrap();
        assert_eq!(times.age, Duration::from_secs(12));
        assert_eq!(times.remaining, Duration::from_secs(48));
    }
}
