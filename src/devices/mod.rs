//! Emulated devices and the buses that route guest accesses to them.

pub mod boot_timer;
pub mod bus;
pub mod generation_id;
pub mod i8042;
pub mod serial;
pub mod serial_config;
pub mod serial_output;
pub mod virtio;

/// Firecracker's rule for resource ids: alphanumeric and '_', 1 to 64 characters.
pub fn valid_resource_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
