//! Palisade as a library: the VMM's modules, so that the binary (`main.rs`), the fuzz
//! targets and unit tests share one build of them. Imports go downward only (DESIGN.md):
//! api -> vmm -> config -> devices / vstate / arch -> the ground (metrics, logger, mmds,
//! rate limiter, sandbox).

pub mod api;
pub mod arch;
pub mod audit;
pub mod config;
pub mod devices;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod rate_limiter;
pub mod sandbox;
pub mod seccomp;
pub mod snapshot;
pub mod vmm;
pub mod vstate;

/// "outer: inner: innermost" on one line (shared with the jailer).
pub use palisade_sandbox::error_chain;
