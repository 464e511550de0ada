//! The state a snapshot carries beyond vCPUs, the VM, memory and transports (issue 14: clones
//! know they are clones; the last device state): the i8042 controller, the rate limiters'
//! remaining budgets (drives, entropy, vsock) and the guest's generation (ID and restore
//! counter). Each is checked as hostile input against the configurations of the same state
//! file, without KVM, before anything is built.
//!
//! Metrics are not in a snapshot: Palisade's counters report what happened since the previous
//! flush (Firecracker's `SharedIncMetric`), and the VM that was saved reports its own; a clone
//! is a new process whose metrics count what it does from its load on, as with Firecracker.

use serde::{Deserialize, Serialize};

use crate::devices::generation_id::GenerationError;
use crate::devices::i8042::I8042StateError;
use crate::rate_limiter::{RateLimiterState, RateLimiterStateError};

use super::device_manager::VirtioDevices;
use super::machine_state::{CheckedDeviceConfigs, MachineState};

/// Why the clone state of a state file is refused.
#[derive(Debug, thiserror::Error)]
pub enum CloneStateError {
    /// The i8042 state.
    #[error("The i8042 state is refused")]
    I8042(#[source] I8042StateError),
    /// The limiters saved do not match the devices configured.
    #[error("The saved rate limiters do not match the devices: {0}")]
    LimiterDevices(&'static str),
    /// A limiter's saved budget.
    #[error("The rate limiter of {device} is refused")]
    Limiter {
        /// `drive <id>`, `entropy` or `vsock`.
        device: String,
        /// Why.
        #[source]
        source: RateLimiterStateError,
    },
    /// The generation.
    #[error("The generation ID state is refused")]
    Generation(#[source] GenerationError),
}

/// One drive's limiter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveLimiterState {
    /// The drive.
    pub drive_id: String,
    /// Its limiter's remaining tokens.
    pub limiter: RateLimiterState,
}

/// The rate limiters' remaining budgets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterStates {
    /// The drives, in the order of the state file's drive list.
    pub drives: Vec<DriveLimiterState>,
    /// The entropy device.
    pub entropy: Option<RateLimiterState>,
    /// The vsock device's own limiter.
    pub vsock: Option<RateLimiterState>,
}

fn limiter_error(device: String) -> impl FnOnce(RateLimiterStateError) -> CloneStateError {
    move |source| CloneStateError::Limiter { device, source }
}

impl LimiterStates {
    /// Checks every saved limiter against its device's configuration.
    pub fn validate(&self, configs: &CheckedDeviceConfigs) -> Result<(), CloneStateError> {
        if self.drives.len() != configs.drives.iter().count() {
            return Err(CloneStateError::LimiterDevices("drive count"));
        }
        for (drive, saved) in configs.drives.iter().zip(&self.drives) {
            if drive.drive_id != saved.drive_id {
                return Err(CloneStateError::LimiterDevices("drive ids"));
            }
            saved
                .limiter
                .validate(drive.rate_limiter.as_ref())
                .map_err(limiter_error(format!("drive {}", drive.drive_id)))?;
        }
        match (&configs.entropy, &self.entropy) {
            (Some(config), Some(saved)) => saved
                .validate(config.rate_limiter.as_ref())
                .map_err(limiter_error("entropy".into()))?,
            (None, None) => {}
            _ => return Err(CloneStateError::LimiterDevices("entropy device")),
        }
        match (&configs.vsock, &self.vsock) {
            (Some(config), Some(saved)) => saved
                .validate(config.policy().rate_limiter.as_ref())
                .map_err(limiter_error("vsock".into()))?,
            (None, None) => {}
            _ => return Err(CloneStateError::LimiterDevices("vsock device")),
        }
        Ok(())
    }
}

impl MachineState {
    /// Checks the clone state against the state file's device configurations (checked
    /// already): the i8042, every limiter, and the generation's room for one more restore.
    pub fn validate_clone_state(
        &self,
        configs: &CheckedDeviceConfigs,
    ) -> Result<(), CloneStateError> {
        self.i8042.validate().map_err(CloneStateError::I8042)?;
        self.limiters.validate(configs)?;
        self.generation
            .validate()
            .map_err(CloneStateError::Generation)
    }
}

impl VirtioDevices {
    /// Every limiter's remaining tokens, to save.
    pub fn save_limiters(&self) -> LimiterStates {
        LimiterStates {
            drives: self
                .blocks()
                .map(|mut block| DriveLimiterState {
                    drive_id: block.id().to_string(),
                    limiter: block.save_limiter(),
                })
                .collect(),
            entropy: self.rng().map(|mut rng| rng.save_limiter()),
            vsock: self.vsock().map(|mut vsock| vsock.save_limiter()),
        }
    }

    /// Gives every limiter its saved tokens (each checked against its buckets).
    pub fn restore_limiters(&self, saved: &LimiterStates) -> Result<(), CloneStateError> {
        if self.blocks().count() != saved.drives.len() {
            return Err(CloneStateError::LimiterDevices("drive count"));
        }
        for (mut block, state) in self.blocks().zip(&saved.drives) {
            if block.id() != state.drive_id {
                return Err(CloneStateError::LimiterDevices("drive ids"));
            }
            let device = format!("drive {}", state.drive_id);
            block
                .restore_limiter(&state.limiter)
                .map_err(limiter_error(device))?;
        }
        match (self.rng(), &saved.entropy) {
            (Some(mut rng), Some(state)) => rng
                .restore_limiter(state)
                .map_err(limiter_error("entropy".into()))?,
            (None, None) => {}
            _ => return Err(CloneStateError::LimiterDevices("entropy device")),
        }
        match (self.vsock(), &saved.vsock) {
            (Some(mut vsock), Some(state)) => vsock
                .restore_limiter(state)
                .map_err(limiter_error("vsock".into()))?,
            (None, None) => {}
            _ => return Err(CloneStateError::LimiterDevices("vsock device")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::{BlockDeviceConfig, DriveList, EntropyConfig};
    use crate::rate_limiter::{BucketState, RateLimiterConfig, TokenBucketConfig};

    fn configs(limited: bool) -> CheckedDeviceConfigs {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let mut drives = DriveList::default();
        let drive: BlockDeviceConfig = serde_json::from_value(serde_json::json!({
            "drive_id": "data", "path_on_host": disk.path(), "is_root_device": false,
            "is_read_only": true}))
        .unwrap();
        drives.insert(drive).unwrap();
        let limiter = limited.then_some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 10,
                one_time_burst: None,
                refill_time: 100,
            }),
        });
        CheckedDeviceConfigs {
            drives,
            entropy: Some(EntropyConfig {
                rate_limiter: limiter,
            }),
            vsock: None,
            mmds: None,
            balloon: None,
        }
    }

    fn states(budget: u64) -> LimiterStates {
        LimiterStates {
            drives: vec![DriveLimiterState {
                drive_id: "data".into(),
                limiter: RateLimiterState::default(),
            }],
            entropy: Some(RateLimiterState {
                bandwidth: None,
                ops: Some(BucketState {
                    budget,
                    one_time_burst: 0,
                }),
            }),
            vsock: None,
        }
    }

    #[test]
    fn saved_limiters_are_checked_against_the_configured_buckets() {
        states(10).validate(&configs(true)).unwrap();
        let e = states(11).validate(&configs(true)).unwrap_err();
        assert!(
            matches!(&e, CloneStateError::Limiter { device, .. } if device == "entropy"),
            "{e}"
        );
        // Budget saved for a bucket the configuration does not have.
        assert!(states(0).validate(&configs(false)).is_err());
    }

    #[test]
    fn saved_limiters_for_other_devices_are_refused() {
        let mut other = states(1);
        other.drives[0].drive_id = "root".into();
        assert!(matches!(
            other.validate(&configs(true)),
            Err(CloneStateError::LimiterDevices("drive ids"))
        ));
        let mut missing = states(1);
        missing.drives.clear();
        assert!(matches!(
            missing.validate(&configs(true)),
            Err(CloneStateError::LimiterDevices("drive count"))
        ));
        let mut extra = states(1);
        extra.vsock = Some(RateLimiterState::default());
        assert!(matches!(
            extra.validate(&configs(true)),
            Err(CloneStateError::LimiterDevices("vsock device"))
        ));
        let mut no_entropy = states(1);
        no_entropy.entropy = None;
        assert!(matches!(
            no_entropy.validate(&configs(true)),
            Err(CloneStateError::LimiterDevices("entropy device"))
        ));
    }
}
