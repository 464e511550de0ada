//! The state file format. Layout (integers little-endian):
//!
//! ```text
//! offset  size  field
//! 0       8     magic "PLSDSNAP"
//! 8       4     format version (1)
//! 12      4     flags: bit 0 keyed (HMAC-SHA-256), bit 1 memory hash present; others zero
//! 16      8     state length S (at most MAX_STATE_LEN)
//! 24      8     memory file size
//! 32      32    memory file SHA-256 (zeros unless flag bit 1)
//! 64      8     reserved, zero
//! 72      S     state: the caller's type in postcard (serde) encoding
//! 72+S    32    tag over bytes [0, 72+S) (auth.rs)
//! ```
//!
//! The file is exactly 104 + S bytes. Decoding refuses, with a typed error and before it
//! allocates anything sized by the file: a short file, a foreign magic, another version,
//! unknown flags, a non-zero reserved field, an oversized or inconsistent length, trailing
//! bytes, a keyed file without the key, an unkeyed file when a key is given (no downgrade), a
//! tag that does not verify, a state that does not decode exactly, and a memory file whose
//! identity differs from the recorded one.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::{self, AuthError, MemoryIdentity, SnapshotKey, TAG_LEN};
use super::replace::Replacement;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"PLSDSNAP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 72;
/// Largest state section accepted (16 MiB: a vCPU's state is a few KiB).
pub const MAX_STATE_LEN: u64 = 16 << 20;
/// Largest state file accepted.
pub const MAX_FILE_LEN: u64 = HEADER_LEN as u64 + MAX_STATE_LEN + TAG_LEN as u64;

const FLAG_KEYED: u32 = 1;
const FLAG_MEMORY_HASH: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_KEYED | FLAG_MEMORY_HASH;

/// Why a state file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Shorter than its header or than its header says.
    #[error("The snapshot state file is truncated ({found} bytes, at least {needed} needed)")]
    Truncated {
        /// Bytes present.
        found: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// Not a Palisade state file.
    #[error("Not a Palisade snapshot state file (bad magic)")]
    ForeignFile,
    /// Written by another format version.
    #[error("Snapshot state format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The file's version.
        found: u32,
    },
    /// Unknown flags or a non-zero reserved field.
    #[error("The snapshot state header is malformed ({0})")]
    BadHeader(&'static str),
    /// The state section or the file is larger than any this build writes.
    #[error("The snapshot state is too large ({0} bytes)")]
    TooLarge(u64),
    /// Bytes after the tag.
    #[error("The snapshot state file has {0} bytes after its end")]
    TrailingBytes(u64),
    /// The file is keyed but no key was given.
    #[error("The snapshot state file is authenticated with a key, and none was given")]
    KeyRequired,
    /// A key was given but the file has only an integrity check.
    #[error("A snapshot key was given but the state file is not authenticated with one")]
    NotAuthenticated,
    /// The tag does not verify: tampered, corrupted, or made with another key.
    #[error("The snapshot state file fails its authentication check (tampered, or another key)")]
    BadTag,
    /// The authenticated state does not decode as the expected type.
    #[error("The snapshot state does not decode")]
    Malformed(#[source] postcard::Error),
    /// The state section decodes but leaves bytes unread.
    #[error("The snapshot state has {0} undecoded bytes")]
    UndecodedBytes(usize),
    /// The state cannot be encoded.
    #[error("Cannot encode the snapshot state")]
    Encode(#[source] postcard::Error),
    /// The memory file is not the one the state was saved with.
    #[error("The memory file does not match the state file ({0})")]
    MemoryMismatch(&'static str),
    /// The memory file's identity cannot be read.
    #[error("Cannot check the memory file")]
    Memory(#[source] AuthError),
    /// Reading or writing the state file failed.
    #[error("Cannot {0} the snapshot state file")]
    Io(&'static str, #[source] std::io::Error),
}

/// A well-formed header, not yet authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version.
    pub version: u32,
    /// Whether the tag is an HMAC (a key is needed to open the file).
    pub keyed: bool,
    /// Length of the state section.
    pub state_len: usize,
    /// The recorded identity of the memory file.
    pub memory: MemoryIdentity,
}

/// A state file whose header and tag have been checked: its state bytes are authentic (or,
/// without a key, intact).
#[derive(Debug)]
pub struct Authenticated<'a> {
    /// The format version.
    pub version: u32,
    /// Whether the tag is an HMAC with the caller's key.
    pub keyed: bool,
    /// The recorded identity of the memory file.
    pub memory: MemoryIdentity,
    state: &'a [u8],
}

impl Authenticated<'_> {
    /// Decodes the state as `T`, every byte consumed.
    pub fn state<T: DeserializeOwned>(&self) -> Result<T, FormatError> {
        let (value, rest) =
            postcard::take_from_bytes::<T>(self.state).map_err(FormatError::Malformed)?;
        if !rest.is_empty() {
            return Err(FormatError::UndecodedBytes(rest.len()));
        }
        Ok(value)
    }

    /// Checks that `file` is the memory file this state was saved with: the same size, and
    /// the same SHA-256 when one was recorded (then the file is read once, in chunks).
    pub fn check_memory_file(&self, file: &File) -> Result<(), FormatError> {
        let actual = MemoryIdentity::of_file(file, self.memory.sha256.is_some())
            .map_err(FormatError::Memory)?;
        self.check_memory(&actual)
    }

    /// Checks a memory identity the caller established against the recorded one.
    pub fn check_memory(&self, actual: &MemoryIdentity) -> Result<(), FormatError> {
        if actual.size != self.memory.size {
            return Err(FormatError::MemoryMismatch("size differs"));
        }
        match (self.memory.sha256, actual.sha256) {
            (Some(want), Some(got)) if want != got => {
                Err(FormatError::MemoryMismatch("contents differ"))
            }
            (Some(_), None) => Err(FormatError::MemoryMismatch("contents not hashed")),
            _ => Ok(()),
        }
    }
}

/// Encoding and decoding of whole state files.
pub struct StateFile;

impl StateFile {
    /// Encodes `state` into a state file for a memory file of identity `memory`, tagged with
    /// `key` (HMAC-SHA-256) or, without a key, with a plain SHA-256 (integrity only).
    pub fn encode<T: Serialize>(
        state: &T,
        key: Option<&SnapshotKey>,
        memory: &MemoryIdentity,
    ) -> Result<Vec<u8>, FormatError> {
        let body = postcard::to_stdvec(state).map_err(FormatError::Encode)?;
        if body.len() as u64 > MAX_STATE_LEN {
            return Err(FormatError::TooLarge(body.len() as u64));
        }
        let mut flags = 0;
        if key.is_some() {
            flags |= FLAG_KEYED;
        }
        if memory.sha256.is_some() {
            flags |= FLAG_MEMORY_HASH;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&memory.size.to_le_bytes());
        out.extend_from_slice(&memory.sha256.unwrap_or([0; TAG_LEN]));
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&body);
        let tag = auth::tag(key, &[&out]);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Parses and checks the header of `bytes` (magic, version, flags, reserved field,
    /// lengths against the file's size) without checking the tag: what it returns is NOT
    /// authenticated, only well-formed (for `--describe-snapshot`). Nothing sized by the file
    /// is allocated.
    pub fn header(bytes: &[u8]) -> Result<Header, FormatError> {
        let found = bytes.len() as u64;
        let header = bytes.get(..HEADER_LEN).ok_or(FormatError::Truncated {
            found,
            needed: (HEADER_LEN + TAG_LEN) as u64,
        })?;
        if header[0..8] != MAGIC {
            return Err(FormatError::ForeignFile);
        }
        let version = le_u32(&header[8..12]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        let flags = le_u32(&header[12..16]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::BadHeader("unknown flags"));
        }
        let state_len = le_u64(&header[16..24]);
        let mem_size = le_u64(&header[24..32]);
        let mut mem_hash = [0u8; TAG_LEN];
        mem_hash.copy_from_slice(&header[32..64]);
        if le_u64(&header[64..72]) != 0 {
            return Err(FormatError::BadHeader("reserved field is not zero"));
        }
        if flags & FLAG_MEMORY_HASH == 0 && mem_hash != [0; TAG_LEN] {
            return Err(FormatError::BadHeader("memory hash without its flag"));
        }
        if state_len > MAX_STATE_LEN {
            return Err(FormatError::TooLarge(state_len));
        }
        // Cannot overflow: state_len <= MAX_STATE_LEN.
        let total = HEADER_LEN as u64 + state_len + TAG_LEN as u64;
        if found < total {
            return Err(FormatError::Truncated {
                found,
                needed: total,
            });
        }
        if found > total {
            return Err(FormatError::TrailingBytes(found - total));
        }
        Ok(Header {
            version,
            keyed: flags & FLAG_KEYED != 0,
            state_len: state_len as usize,
            memory: MemoryIdentity {
                size: mem_size,
                sha256: (flags & FLAG_MEMORY_HASH != 0).then_some(mem_hash),
            },
        })
    }

    /// Decodes the state section of `bytes` after checking the header only: NOT
    /// authenticated (for `--describe-snapshot`, which has no key). Bounded as a load is:
    /// the section is at most [`MAX_STATE_LEN`] bytes and must decode exactly.
    pub fn unverified_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
        let header = Self::header(bytes)?;
        let state =
            bytes
                .get(HEADER_LEN..HEADER_LEN + header.state_len)
                .ok_or(FormatError::Truncated {
                    found: bytes.len() as u64,
                    needed: (HEADER_LEN + header.state_len) as u64,
                })?;
        let (value, rest) =
            postcard::take_from_bytes::<T>(state).map_err(FormatError::Malformed)?;
        if !rest.is_empty() {
            return Err(FormatError::UndecodedBytes(rest.len()));
        }
        Ok(value)
    }

    /// Checks the header and the tag of `bytes` with `key` (see the module doc for each
    /// refusal). Nothing sized by the file is allocated.
    pub fn open<'a>(
        bytes: &'a [u8],
        key: Option<&SnapshotKey>,
    ) -> Result<Authenticated<'a>, FormatError> {
        let header = Self::header(bytes)?;
        match (header.keyed, key.is_some()) {
            (true, false) => return Err(FormatError::KeyRequired),
            (false, true) => return Err(FormatError::NotAuthenticated),
            _ => {}
        }
        let (signed, tag) = bytes.split_at(HEADER_LEN + header.state_len);
        if !auth::verify(key, &[signed], tag) {
            return Err(FormatError::BadTag);
        }
        Ok(Authenticated {
            version: header.version,
            keyed: header.keyed,
            memory: header.memory,
            state: &signed[HEADER_LEN..],
        })
    }

    /// Opens `bytes` with `key`, checks `memory` against the recorded memory identity, and
    /// decodes the state.
    pub fn decode<T: DeserializeOwned>(
        bytes: &[u8],
        key: Option<&SnapshotKey>,
        memory: &File,
    ) -> Result<T, FormatError> {
        let file = Self::open(bytes, key)?;
        file.check_memory_file(memory)?;
        file.state()
    }

    /// Reads the state file at `path`: a regular file (symlinks not followed) of at most
    /// [`MAX_FILE_LEN`] bytes, checked before reading.
    pub fn read(path: &Path) -> Result<Vec<u8>, FormatError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| FormatError::Io("open", e))?;
        let meta = file.metadata().map_err(|e| FormatError::Io("stat", e))?;
        if !meta.is_file() {
            return Err(FormatError::BadHeader("not a regular file"));
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(FormatError::TooLarge(meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FormatError::Io("read", e))?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(FormatError::TooLarge(bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// Writes `bytes` into a new file that replaces `path` when committed (created 0600
    /// beside it; a link at `path` is replaced, never followed; see [`Replacement`]).
    pub fn prepare(path: &Path, bytes: &[u8]) -> Result<Replacement, FormatError> {
        let mut new = Replacement::create(path).map_err(|e| FormatError::Io("create", e))?;
        new.file()
            .write_all(bytes)
            .map_err(|e| FormatError::Io("write", e))?;
        Ok(new)
    }

    /// Writes `bytes` as the state file at `path`, replacing what was there whole.
    pub fn write(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
        Self::prepare(path, bytes)?
            .commit()
            .map_err(|e| FormatError::Io("replace", e))
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests;
