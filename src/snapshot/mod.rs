//! Snapshot state files, the ground layer of snapshots (issue 14): the on-disk format of a
//! state file (`format`: magic, version, length-checked sections, a compact serde encoding)
//! and its authentication (`auth`: HMAC-SHA-256 with the orchestrator's key over the header,
//! the state and the memory file's identity; without a key a plain SHA-256 that proves
//! integrity only, never origin). A state file is hostile input: every field is checked before
//! anything is allocated or restored.

pub mod auth;
pub mod format;
pub mod replace;

pub use auth::{AuthError, MemoryIdentity, SnapshotKey};
pub use format::{Authenticated, FormatError, Header, StateFile};
pub use replace::{commit_pair, Replacement};
