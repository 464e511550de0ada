//! The MMDS (microVM metadata service), Firecracker-compatible: the JSON data store the
//! orchestrator fills through `PUT|PATCH /mmds` (and `--metadata`), and the configuration of
//! `PUT /mmds/config` (version, interfaces, address). The guest-facing HTTP service that
//! serves this store inside the virtio-net device builds on these two.

pub mod config;
pub mod store;

pub use config::{
    MmdsConfig, MmdsConfigError, MmdsVersion, DEFAULT_HOP_LIMIT, DEFAULT_IPV4_ADDRESS,
    DEFAULT_RATE_LIMIT,
};
pub use store::{MmdsStore, StoreError, DEFAULT_SIZE_LIMIT, MAX_DEPTH};
