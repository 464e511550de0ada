//! The jail directory on the host: `<chroot-base>/<exec-name>/<id>/root`, its lock (the pid
//! file), the directories the VMM needs and the copy of the exec file.
//!
//! Files already in `root/` (a kernel or config staged by the caller, as with Firecracker) are
//! kept. A failed start removes what this start created. The jailed uid can write in `root/`
//! and in the directories below it, so every name there is reached through directory
//! descriptors opened without following links, and every file the jailer opens there as root
//! must be a regular file with one link (staged.rs): a planted symbolic link, hard link or
//! FIFO is refused before the instance lock is taken.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{fchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::spec::JailSpec;
use crate::staged::{Access, Dir, StagedError};

/// Directories inside the jail owned by the jailed uid (Firecracker's set), in creation order.
const JAIL_DIRS: [&str; 3] = ["dev", "dev/net", "run"];
/// Device nodes the mknod step creates; removed again by a failed start.
pub const DEVICE_NODES: [&str; 4] = ["dev/kvm", "dev/net/tun", "dev/urandom", "dev/userfaultfd"];
/// The jail's root: owned by root, group the jailed gid, sticky and group-writable. The VMM
/// may create files in `/`, but neither rename nor remove what it does not own: the pid file
/// and the files the caller staged.
const ROOT_MODE: u32 = 0o1770;

#[derive(Debug, thiserror::Error)]
pub enum JailDirError {
    #[error(transparent)]
    Staged(#[from] StagedError),
    #[error("Instance {0} is already running (its pid file {1} is locked)")]
    AlreadyRunning(String, PathBuf),
    #[error("Cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("Cannot set owner or mode of {0}")]
    Own(PathBuf, #[source] std::io::Error),
    #[error("Cannot open exec file {0}")]
    OpenExec(PathBuf, #[source] std::io::Error),
    #[error("Exec file {0} is not a regular file")]
    ExecNotAFile(PathBuf),
    #[error("Cannot copy {0} to {1}")]
    Copy(PathBuf, PathBuf, #[source] std::io::Error),
    #[error("Cannot write pid file {0}")]
    WritePid(PathBuf, #[source] std::io::Error),
}

/// A prepared and locked jail directory.
#[derive(Debug)]
pub struct JailDir {
    root: Dir,
    root_identity: (u64, u64),
    exec_name: String,
    /// `<base>/<exec-name>`, when this start created it.
    created_exec_dir: Option<PathBuf>,
    /// The highest of `<base>/<exec-name>/<id>` and its `root` that this start created.
    created_top: Option<PathBuf>,
    /// Directories inside a pre-existing `root` that this start created (relative to it).
    created_dirs: Vec<&'static str>,
    pid_name: String,
    /// The pid file, opened read-only and locked exclusively for as long as this instance
    /// (then its VMM, which inherits it) runs. Read-only: the VMM cannot rewrite it.
    lock: File,
}

impl JailDir {
    /// Creates the directories, takes the instance lock and copies the exec file in.
    pub fn prepare(spec: &JailSpec) -> Result<Self, JailDirError> {
        // `<base>/<exec-name>` is shared by every instance of that exec file: removed again
        // only when empty. The instance's own directories go with everything in them.
        let base = Dir::open_trusted(&spec.chroot_base)?;
        let (exec_dir, created) = base.make_dir(&spec.exec_name, 0o755)?;
        let created_exec_dir = created.then(|| exec_dir.path.clone());
        let mut created_top = None;
        let root = open_instance_root(&exec_dir, &spec.id, &mut created_top);
        let undo = |top: Option<&Path>| remove_created(top, created_exec_dir.as_deref());
        let root = root.inspect_err(|_| undo(created_top.as_deref()))?;
        let pid_name = format!("{}.pid", spec.exec_name);
        // Refuse what was planted at the names the jailer opens before taking anything.
        let lock = root
            .inspect(&pid_name)
            .and_then(|_| root.inspect(&spec.exec_name))
            .map_err(JailDirError::from)
            .and_then(|_| lock_pid_file(&root, &pid_name, &spec.id))
            // Only what this start created: a running instance keeps its files.
            .inspect_err(|_| undo(created_top.as_deref()))?;
        let meta = root
            .file
            .metadata()
            .map_err(|e| StagedError::Open(root.path.clone(), e))?;
        let mut jail = JailDir {
            root_identity: (meta.dev(), meta.ino()),
            root,
            exec_name: spec.exec_name.clone(),
            created_exec_dir,
            created_top,
            created_dirs: Vec::new(),
            pid_name,
            lock,
        };
        if let Err(e) = jail.fill(spec) {
            jail.remove();
            return Err(e);
        }
        Ok(jail)
    }

    fn fill(&mut self, spec: &JailSpec) -> Result<(), JailDirError> {
        own(&self.root, 0, spec.gid, ROOT_MODE)?;
        for name in JAIL_DIRS {
            let (parent, last) = self.root.walk(name)?;
            let (dir, created) = parent.make_dir(last, 0o700)?;
            if created {
                self.created_dirs.push(name);
            }
            own(&dir, spec.uid, spec.gid, 0o700)?;
        }
        copy_exec_file(&spec.exec_file, &self.root, &spec.exec_name, spec)
    }

    /// The jail's root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root.path
    }

    /// Device and inode of the jail's root, to check that a later lookup by path found it.
    pub fn root_identity(&self) -> (u64, u64) {
        self.root_identity
    }

    /// The lock's descriptor (read-only), to be inherited by the VMM so the lock lives as
    /// long as it does.
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// Records the VMM's pid (as the host sees it) in `<exec-name>.pid`, through a descriptor
    /// opened here and closed before this returns (the VMM never holds a writable one).
    pub fn write_pid(&self, pid: i32) -> Result<(), JailDirError> {
        let path = self.root.path.join(&self.pid_name);
        let mut f = self.root.reopen_for_writing(&self.pid_name, &self.lock)?;
        let err = |e| JailDirError::WritePid(path.clone(), e);
        f.set_len(0).map_err(err)?;
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
            .copied()
            .chain([self.exec_name.as_str(), self.pid_name.as_str()]);
        for file in files {
            if let Ok((dir, name)) = self.root.walk(file) {
                dir.remove(name, false);
            }
        }
        for created in self.created_dirs.iter().rev() {
            if let Ok((dir, name)) = self.root.walk(created) {
                dir.remove(name, true);
            }
        }
    }
}

/// `<id>` and `<id>/root` below `<base>/<exec-name>`, each created when missing and opened
/// without following links; records the highest one this start created.
fn open_instance_root(
    exec_dir: &Dir,
    id: &str,
    created_top: &mut Option<PathBuf>,
) -> Result<Dir, JailDirError> {
    let (id_dir, created) = exec_dir.make_dir(id, 0o755)?;
    if created {
        *created_top = Some(id_dir.path.clone());
    }
    let (root, created) = id_dir.make_dir("root", 0o755)?;
    if created && created_top.is_none() {
        *created_top = Some(root.path.clone());
    }
    Ok(root)
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

/// chown and chmod through the directory's own descriptor (opened without following links).
fn own(dir: &Dir, uid: u32, gid: u32, mode: u32) -> Result<(), JailDirError> {
    let err = |e| JailDirError::Own(dir.path.clone(), e);
    fchown(dir.file.as_fd(), Some(uid), Some(gid)).map_err(err)?;
    dir.file
        .set_permissions(Permissions::from_mode(mode))
        .map_err(err)
}

/// Opens (creating it if missing) and locks the pid file, read-only.
fn lock_pid_file(root: &Dir, name: &str, id: &str) -> Result<File, JailDirError> {
    let path = root.path.join(name);
    let file = root.open_file(name, Access::Read, Some(0o644))?;
    // A plain flock (not nix's guard, whose drop would unlock the description the VMM
    // inherits): the lock goes away only when the last holder closes it.
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            Err(JailDirError::AlreadyRunning(id.to_string(), path))
        }
        e => Err(JailDirError::Lock(path, e)),
    }
}

/// Copies (never links: two VMMs must not share pages of their binary) the exec file into
/// the jail, owned by the jailed uid, without set-id bits.
fn copy_exec_file(src: &Path, root: &Dir, name: &str, spec: &JailSpec) -> Result<(), JailDirError> {
    let dst = root.path.join(name);
    let copy_err = |e| JailDirError::Copy(src.to_path_buf(), dst.clone(), e);
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(src)
        .map_err(|e| JailDirError::OpenExec(src.to_path_buf(), e))?;
    let meta = input.metadata().map_err(copy_err)?;
    if !meta.is_file() {
        return Err(JailDirError::ExecNotAFile(src.to_path_buf()));
    }
    let mode = meta.mode() & 0o777;
    let mut output = root.open_file(name, Access::Write, Some(mode))?;
    output.set_len(0).map_err(copy_err)?;
    std::io::copy(&mut input, &mut output).map_err(copy_err)?;
    let own_err = |e| JailDirError::Own(dst.clone(), e);
    fchown(output.as_fd(), Some(spec.uid), Some(spec.gid)).map_err(own_err)?;
    output
        .set_permissions(Permissions::from_mode(mode))
        .map_err(own_err)
}
