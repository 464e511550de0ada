//! The controller's snapshot actions: `PUT /snapshot/create` on a paused VM and
//! `PUT /snapshot/load` on a fresh VMM (the rules have checked the state). A VM with a
//! device whose state snapshots do not carry yet is refused with a clear 400 before any file
//! is written.

use std::fs::File;

use super::Controller;
use crate::snapshot::StateFile;
use crate::vmm::action::{ActionError, ActionResult};
use crate::vmm::snapshot::{CreateSnapshotParams, LoadSnapshotParams, SnapshotError};

impl Controller {
    /// The first device of this VM that snapshots cannot carry yet, if any.
    fn unsupported_device(&self) -> Option<&'static str> {
        if self.resources.network_interfaces.iter().next().is_some() {
            return Some("network interfaces");
        }
        if self.resources.vsock.is_some() {
            return Some("a vsock device");
        }
        None
    }

    /// `PUT /snapshot/create`.
    pub(super) fn create_snapshot(&mut self, params: &CreateSnapshotParams) -> ActionResult {
        if let Some(device) = self.unsupported_device() {
            return Err(SnapshotError::UnsupportedDevice(device).into());
        }
        log::info!(
            "Snapshot create ({:?}) to {} and {} refused: not wired yet",
            params.snapshot_type,
            params.snapshot_path.display(),
            params.mem_file_path.display()
        );
        Err(ActionError::Snapshot(SnapshotError::NotImplemented(
            "creation",
        )))
    }

    /// `PUT /snapshot/load`.
    /// The state file is authenticated (with `--snapshot-key-file`'s key, else checked for
    /// integrity) and bound to the memory file before anything is built.
    pub(super) fn load_snapshot(&mut self, params: &LoadSnapshotParams) -> ActionResult {
        let key = self.opts.snapshot_key.as_deref();
        let bytes = StateFile::read(&params.snapshot_path).map_err(SnapshotError::StateFile)?;
        let opened = StateFile::open(&bytes, key).map_err(SnapshotError::StateFile)?;
        let memory = File::open(&params.mem_file_path).map_err(SnapshotError::MemoryFile)?;
        opened
            .check_memory_file(&memory)
            .map_err(SnapshotError::StateFile)?;
        log::info!(
            "Snapshot load from {} and {} refused: not wired yet",
            params.snapshot_path.display(),
            params.mem_file_path.display()
        );
        Err(ActionError::Snapshot(SnapshotError::NotImplemented(
            "loading",
        )))
    }
}
