//! `PUT /serial` and the `serial` config section (Firecracker's `SerialConfig`): where the
//! guest's console output goes instead of stdout, and its byte budget. The file or FIFO is
//! opened by the VMM before its Landlock layer and seccomp filter (inside the jailer's
//! chroot, the path is resolved there), never through a symbolic link, created 0600 when
//! absent, and never blocks the VMM: a FIFO without room drops and counts.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use serde::{Deserialize, Serialize};

use crate::rate_limiter::TokenBucketConfig;

/// Most bytes Palisade writes to a regular output file over the VM's life; past it the
/// console is dropped and counted (`uart.dropped_bytes`), so a guest cannot fill the host's
/// disk. A FIFO has no total (its reader drains it), only the byte budget.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why the serial output is refused.
#[derive(Debug, thiserror::Error)]
pub enum SerialConfigError {
    /// The path does not open for writing (a symbolic link is refused: ELOOP).
    #[error("Cannot open the serial output {path}: {source}")]
    Open {
        /// `serial_out_path`.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file, FIFO or character device.
    #[error("The serial output {0} is not a regular file, FIFO or character device")]
    Kind(String),
    /// A bucket that would stop the console or overflow.
    #[error("Invalid serial rate_limiter: size and refill_time must be between 1 and 2^32")]
    RateLimiter,
}

/// The body of `PUT /serial` and the `serial` config section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the console goes; stdout when absent.
    #[serde(default)]
    pub serial_out_path: Option<String>,
    /// The byte budget: `size` bytes per `refill_time` ms, `one_time_burst` extra at first.
    /// Palisade's default (1 MiB burst, 64 KiB/s) when absent.
    #[serde(default)]
    pub rate_limiter: Option<TokenBucketConfig>,
}

/// The opened output and whether it has a total cap.
#[derive(Debug)]
pub struct SerialOutputFile {
    /// The file, FIFO or device, opened write-only and non-blocking.
    pub file: File,
    /// [`MAX_FILE_BYTES`] for a regular file, none otherwise.
    pub total_cap: Option<u64>,
}

impl SerialConfig {
    /// Checks the bucket: within Palisade's bounds so the budget arithmetic cannot overflow.
    pub fn validate(&self) -> Result<(), SerialConfigError> {
        if let Some(b) = &self.rate_limiter {
            let ok = |v: u64| (1..=1 << 32).contains(&v);
            if !ok(b.size) || !ok(b.refill_time) || b.one_time_burst.is_some_and(|o| o > 1 << 32) {
                return Err(SerialConfigError::RateLimiter);
            }
        }
        Ok(())
    }

    /// Opens `serial_out_path` (if any): write-only, append, non-blocking, no symbolic link,
    /// created with mode 0600 when absent.
    pub fn open(&self) -> Result<Option<SerialOutputFile>, SerialConfigError> {
        self.validate()?;
        let Some(path) = &self.serial_out_path else {
            return Ok(None);
        };
        let open_err = |source| SerialConfigError::Open {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        let total_cap = if kind.is_file() {
            Some(MAX_FILE_BYTES)
        } else if kind.is_fifo() || kind.is_char_device() {
            None
        } else {
            return Err(SerialConfigError::Kind(path.clone()));
        };
        Ok(Some(SerialOutputFile { file, total_cap }))
    }

    /// The byte budget: (burst, bytes per second, first credit).
    pub fn budget(&self) -> (u64, u64, u64) {
        match &self.rate_limiter {
            Some(b) => {
                let per_sec = (b.size.saturating_mul(1000) / b.refill_time.max(1)).max(1);
                (b.size, per_sec, b.one_time_burst.unwrap_or(0))
            }
            None => (
                super::serial_output::BURST_BYTES,
                super::serial_output::BYTES_PER_SEC,
                0,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn at(path: &std::path::Path) -> SerialConfig {
        SerialConfig {
            serial_out_path: Some(path.to_str().unwrap().into()),
            rate_limiter: None,
        }
    }

    #[test]
    fn a_new_output_file_is_created_0600_and_capped_and_a_fifo_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let out = at(&path).open().unwrap().unwrap();
        assert_eq!(out.total_cap, Some(MAX_FILE_BYTES));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A reader, so the non-blocking open for writing succeeds.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert_eq!(at(&fifo).open().unwrap().unwrap().total_cap, None);
        assert!(SerialConfig::default().open().unwrap().is_none());
    }

    #[test]
    fn a_symbolic_link_or_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = at(&link).open().unwrap_err();
        assert!(
            matches!(&err, SerialConfigError::Open { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "{err}"
        );
        assert!(!target.exists(), "nothing created through the link");
        assert!(at(dir.path()).open().is_err());
    }

    #[test]
    fn a_rate_limiter_that_would_stop_or_overflow_the_console_is_refused() {
        for (size, refill) in [(0, 1000), (100, 0), (1 << 40, 1000)] {
            let c = SerialConfig {
                serial_out_path: None,
                rate_limiter: Some(TokenBucketConfig {
                    size,
                    one_time_burst: None,
                    refill_time: refill,
                }),
            };
            assert!(c.validate().is_err(), "{size} {refill}");
        }
        let c: SerialConfig = serde_json::from_str(
            r#"{"serial_out_path":"/s","rate_limiter":{"size":1000,"refill_time":100}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.budget(), (1000, 10_000, 0));
    }
}
