//! Authentication of state files. With a key (given by the orchestrator) the tag is
//! HMAC-SHA-256 over the domain label, the header (which holds the memory file's identity) and
//! the state: only a holder of the key can make a file that restores. Without a key the tag is
//! a plain SHA-256 of the same bytes: it catches corruption and truncation (integrity only);
//! anyone who can write the file can forge it. The memory file's identity is its size and,
//! when asked for, the SHA-256 of its contents.

use std::fs::File;
use std::os::unix::fs::FileExt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of a tag (HMAC-SHA-256 or SHA-256) and of a memory hash.
pub const TAG_LEN: usize = 32;
/// Shortest key accepted (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;
/// Domain label mixed into every tag, so a tag of another format never verifies here.
const DOMAIN: &[u8] = b"palisade snapshot state v1\0";
/// Bytes hashed per read of a memory file.
const HASH_CHUNK: usize = 1 << 20;

/// Errors of keys and memory identities.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key is too short or too long.
    #[error("A snapshot key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes long, not {0}")]
    KeyLength(usize),
    /// The key file cannot be read.
    #[error("Cannot read the snapshot key file")]
    KeyFile(#[source] std::io::Error),
    /// The memory file cannot be examined.
    #[error("Cannot read the memory file to establish its identity")]
    MemoryFile(#[source] std::io::Error),
}

/// The orchestrator's secret key. Never printed; wiped when dropped.
pub struct SnapshotKey(Vec<u8>);

impl SnapshotKey {
    /// A key of `bytes` ([`MIN_KEY_LEN`] to [`MAX_KEY_LEN`] bytes).
    pub fn new(bytes: &[u8]) -> Result<Self, AuthError> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(AuthError::KeyLength(bytes.len()));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The key held in the file at `path` (raw bytes; one trailing newline is dropped). The
    /// read is bounded, so a huge or endless file cannot exhaust memory.
    pub fn from_file(path: &std::path::Path) -> Result<Self, AuthError> {
        use std::io::Read;
        let file = File::open(path).map_err(AuthError::KeyFile)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_LEN as u64 + 2)
            .read_to_end(&mut bytes)
            .map_err(AuthError::KeyFile)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let key = Self::new(&bytes);
        bytes.fill(0);
        key
    }
}

impl Drop for SnapshotKey {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotKey(<{} bytes>)", self.0.len())
    }
}

/// The tag of `parts` (concatenated): HMAC-SHA-256 with `key`, else SHA-256.
pub fn tag(key: Option<&SnapshotKey>, parts: &[&[u8]]) -> [u8; TAG_LEN] {
    match key {
        Some(key) => {
            let mut mac = new_mac(key);
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut hash = Sha256::new();
            hash.update(DOMAIN);
            for part in parts {
                hash.update(part);
            }
            hash.finalize().into()
        }
    }
}

/// Whether `expected` is the tag of `parts` (constant time with a key).
pub fn verify(key: Option<&SnapshotKey>, parts: &[&[u8]], expected: &[u8]) -> bool {
    match key {
        Some(key) => {
            let mut mac = new_mac(key);
            for part in parts {
                mac.update(part);
            }
            mac.verify_slice(expected).is_ok()
        }
        None => tag(None, parts).as_slice() == expected,
    }
}

fn new_mac(key: &SnapshotKey) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `SnapshotKey::new` bounds it anyway.
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable_hmac());
    mac.update(DOMAIN);
    mac
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `new_from_slice` of HMAC never fails (any key length is valid); an empty key keeps this
    // total without a panic path.
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default())
}

/// What a state file says about its memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryIdentity {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents, when asked for.
    pub sha256: Option<[u8; TAG_LEN]>,
}

impl MemoryIdentity {
    /// The identity of `file`: its size, and the SHA-256 of its contents when `hash` is set
    /// (read in 1 MiB chunks; the file is never held in memory whole).
    pub fn of_file(file: &File, hash: bool) -> Result<Self, AuthError> {
        let size = file.metadata().map_err(AuthError::MemoryFile)?.len();
        let sha256 = if hash {
            Some(hash_file(file, size)?)
        } else {
            None
        };
        Ok(Self { size, sha256 })
    }
}

fn hash_file(file: &File, size: u64) -> Result<[u8; TAG_LEN], AuthError> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(HASH_CHUNK as u64) as usize;
        let chunk = &mut buf[..want];
        file.read_exact_at(chunk, offset)
            .map_err(AuthError::MemoryFile)?;
        hash.update(&*chunk);
        offset += want as u64;
    }
    Ok(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keys_shorter_than_128_bits_or_over_1_kib_are_refused() {
        assert!(matches!(
            SnapshotKey::new(&[1; 15]),
            Err(AuthError::KeyLength(15))
        ));
        assert!(matches!(
            SnapshotKey::new(&[1; 1025]),
            Err(AuthError::KeyLength(1025))
        ));
        assert!(SnapshotKey::new(&[1; 16]).is_ok());
    }

    #[test]
    fn key_file_drops_one_trailing_newline_and_bounds_its_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789abcdef\n").unwrap();
        let key = SnapshotKey::from_file(&path).unwrap();
        assert_eq!(key.0, b"0123456789abcdef");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        assert!(matches!(
            SnapshotKey::from_file(&path),
            Err(AuthError::KeyLength(1026))
        ));
    }

    #[test]
    fn key_never_appears_in_debug_output() {
        let key = SnapshotKey::new(b"super secret key bytes").unwrap();
        assert_eq!(format!("{key:?}"), "SnapshotKey(<22 bytes>)");
    }

    #[test]
    fn keyed_tags_depend_on_the_key_and_unkeyed_tags_on_the_bytes_only() {
        let a = SnapshotKey::new(&[1; 32]).unwrap();
        let b = SnapshotKey::new(&[2; 32]).unwrap();
        let parts: &[&[u8]] = &[b"head", b"state"];
        let ta = tag(Some(&a), parts);
        assert!(verify(Some(&a), parts, &ta));
        assert!(!verify(Some(&b), parts, &ta));
        assert!(!verify(None, parts, &ta));
        let plain = tag(None, parts);
        assert!(verify(None, parts, &plain));
        assert!(!verify(None, &[b"head", b"statf"], &plain));
    }

    #[test]
    fn memory_identity_hashes_the_contents_only_when_asked() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![0x5a; 3 * HASH_CHUNK + 17]).unwrap();
        let plain = MemoryIdentity::of_file(&f, false).unwrap();
        assert_eq!(plain.size, 3 * HASH_CHUNK as u64 + 17);
        assert_eq!(plain.sha256, None);
        let hashed = MemoryIdentity::of_file(&f, true).unwrap();
        let expect: [u8; 32] = Sha256::digest(vec![0x5a; 3 * HASH_CHUNK + 17]).into();
        assert_eq!(hashed.sha256, Some(expect));
    }
}
