//! The jail directory on the host: `<chroot-base>/<exec-name>/<id>/root`, its lock (the pid
//! file), the directories the VMM needs and the copy of the exec file.
//!
//! Files already in `root/` (a kernel or config staged by the caller, as with Firecracker) are
//! kept. A failed start removes what this start created.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{fchown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::spec::JailSpec;

/// Directories inside the jail owned by the jailed uid (Firecracker's set).
const JAIL_DIRS: [&str; 3] = ["dev", "dev/net", "run"];
/// Device nodes the mknod step creates; removed again by a failed start.
pub const DEVICE_NODES: [&str; 3] = ["dev/kvm", "dev/net/tun", "dev/urandom"];

#[derive(Debug, thiserror::Error)]
pub enum JailDirError {
    #[error("Cannot create {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("{0} exists and is not a directory (symbolic links are refused)")]
    NotADirectory(PathBuf),
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Instance {0} is already running (its pid file {1} is locked)")]
    AlreadyRunning(String, PathBuf),
    #[error("Cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("Cannot set owner or mode of {0}")]
    Own(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a plain file with a single link")]
    UnsafeTarget(PathBuf),
    #[error("Cannot copy {0} to {1}")]
    Copy(PathBuf, PathBuf, #[source] std::io::Error),
    #[error("Cannot write pid file {0}")]
    WritePid(PathBuf, #[source] std::io::Error),
}

/// A prepared and locked jail directory.
#[derive(Debug)]
pub struct JailDir {
    root: PathBuf,
    exec_name: String,
    /// `<base>/<exec-name>`, when this start created it.
    created_exec_dir: Option<PathBuf>,
    /// The highest of `<base>/<exec-name>/<id>` and its `root` that this start created.
    created_top: Option<PathBuf>,
    /// Directories inside a pre-existing `root` that this start created.
    created_dirs: Vec<PathBuf>,
    pid_path: PathBuf,
    /// Locked exclusively for as long as this instance (then its VMM) runs.
    pid_file: File,
}

impl JailDir {
    /// Creates the directories, takes the instance lock and copies the exec file in.
    pub fn prepare(spec: &JailSpec) -> Result<Self, JailDirError> {
        // `<base>/<exec-name>` is shared by every instance of that exec file: removed again
        // only when empty. The instance's own directories go with everything in them.
        let exec_dir = spec.chroot_base.join(&spec.exec_name);
        let created_exec_dir = make_dir(&exec_dir, 0o755)?.then_some(exec_dir);
        let mut created_top = None;
        for dir in [spec.instance_dir(), spec.root()] {
            match make_dir(&dir, 0o755) {
                Ok(true) if created_top.is_none() => created_top = Some(dir),
                Ok(_) => {}
                Err(e) => {
                    remove_created(created_top.as_deref(), created_exec_dir.as_deref());
                    return Err(e);
                }
            }
        }
        let root = spec.root();
        let pid_path = root.join(format!("{}.pid", spec.exec_name));
        let pid_file = lock_pid_file(&pid_path, &spec.id).inspect_err(|_| {
            // Only what this start created: a running instance keeps its files.
            remove_created(created_top.as_deref(), created_exec_dir.as_deref());
        })?;
        let mut jail = JailDir {
            root,
            exec_name: spec.exec_name.clone(),
            created_exec_dir,
            created_top,
            created_dirs: Vec::new(),
            pid_path,
            pid_file,
        };
        if let Err(e) = jail.fill(spec) {
            jail.remove();
            return Err(e);
        }
        Ok(jail)
    }

    fn fill(&mut self, spec: &JailSpec) -> Result<(), JailDirError> {
        own_dir(&self.root, spec.uid, spec.gid)?;
        for name in JAIL_DIRS {
            let dir = self.root.join(name);
            if make_dir(&dir, 0o700)? {
                self.created_dirs.push(dir.clone());
            }
            own_dir(&dir, spec.uid, spec.gid)?;
        }
        copy_exec_file(&spec.exec_file, &self.root.join(&spec.exec_name), spec)
    }

    /// The jail's root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock's descriptor, to be inherited by the VMM so the lock lives as long as it does.
    pub fn lock_fd(&self) -> RawFd {
        self.pid_file.as_raw_fd()
    }

    /// Records the VMM's pid (as the host sees it) in `<exec-name>.pid`.
    pub fn write_pid(&self, pid: i32) -> Result<(), JailDirError> {
        let err = |e| JailDirError::WritePid(self.pid_path.clone(), e);
        let mut f = &self.pid_file;
        f.set_len(0).map_err(err)?;
        f.seek(SeekFrom::Start(0)).map_err(err)?;
        f.write_all(pid.to_string().as_bytes()).map_err(err)
    }

    /// Removes what this start created (after a failure).
    pub fn remove(&self) {
        if self.created_top.is_some() {
            remove_created(
                self.created_top.as_deref(),
                self.created_exec_dir.as_deref(),
            );
            return;
        }
        let files = DEVICE_NODES
            .iter()
            .map(|n| self.root.join(n))
            .chain([self.root.join(&self.exec_name), self.pid_path.clone()]);
        for file in files {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the instance directory this start created, then the exec-name directory if this
/// start created it and no other instance has appeared in it since.
fn remove_created(top: Option<&Path>, exec_dir: Option<&Path>) {
    if let Some(top) = top {
        let _ = std::fs::remove_dir_all(top);
    }
    if let Some(dir) = exec_dir {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Creates `dir` (not its parents); `Ok(true)` when this call created it. An existing entry
/// must be a real directory.
fn make_dir(dir: &Path, mode: u32) -> Result<bool, JailDirError> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => Ok(false),
                _ => Err(JailDirError::NotADirectory(dir.to_path_buf())),
            }
        }
        Err(e) => Err(JailDirError::CreateDir(dir.to_path_buf(), e)),
    }
}

/// chown uid:gid and chmod 0700 through a descriptor opened without following links.
fn own_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), JailDirError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| JailDirError::Open(dir.to_path_buf(), e))?;
    let err = |e| JailDirError::Own(dir.to_path_buf(), e);
    fchown(f.as_fd(), Some(uid), Some(gid)).map_err(err)?;
    f.set_permissions(Permissions::from_mode(0o700))
        .map_err(err)
}

fn lock_pid_file(path: &Path, id: &str) -> Result<File, JailDirError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| JailDirError::Open(path.to_path_buf(), e))?;
    // A plain flock (not nix's guard, whose drop would unlock the description the VMM
    // inherits): the lock goes away only when the last holder closes it.
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(JailDirError::AlreadyRunning(
            id.to_string(),
            path.to_path_buf(),
        )),
        e => Err(JailDirError::Lock(path.to_path_buf(), e)),
    }
}

/// Copies (never links: two VMMs must not share pages of their binary) the exec file into
/// the jail, owned by the jailed uid, without set-id bits.
fn copy_exec_file(src: &Path, dst: &Path, spec: &JailSpec) -> Result<(), JailDirError> {
    let copy_err = |e| JailDirError::Copy(src.to_path_buf(), dst.to_path_buf(), e);
    let mut input = File::open(src).map_err(|e| JailDirError::Open(src.to_path_buf(), e))?;
    let mode = input.metadata().map_err(copy_err)?.mode() & 0o777;
    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(|e| JailDirError::Open(dst.to_path_buf(), e))?;
    // A stale copy hard-linked to a file outside the jail must not be overwritten.
    let meta = output.metadata().map_err(copy_err)?;
    if !meta.is_file() || meta.nlink() > 1 {
        return Err(JailDirError::UnsafeTarget(dst.to_path_buf()));
    }
    output.set_len(0).map_err(copy_err)?;
    std::io::copy(&mut input, &mut output).map_err(copy_err)?;
    let own_err = |e| JailDirError::Own(dst.to_path_buf(), e);
    fchown(output.as_fd(), Some(spec.uid), Some(spec.gid)).map_err(own_err)?;
    output
        .set_permissions(Permissions::from_mode(mode))
        .map_err(own_err)
}
