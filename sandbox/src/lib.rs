//! What the VMM (layer 2) and the jailer (layer 1) both need to sandbox themselves, written
//! once: the one-line error chain both print, the table of Landlock ABIs with the line that
//! says which one is enforced on which kernel, and the seccomp target architecture.

mod error_chain;
pub mod landlock_abi;
pub mod seccomp_target;

pub use error_chain::error_chain;
