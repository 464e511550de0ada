//! Step 8: the device nodes the VMM needs, created inside the jail and owned by its uid/gid.

use std::path::PathBuf;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum MknodError {
    #[error("Cannot create device node {0}")]
    Mknod(PathBuf, #[source] nix::Error),
    #[error("Cannot give {0} to the jailed uid/gid")]
    Chown(PathBuf, #[source] nix::Error),
}

/// A character device the jail gets: path inside the jail, major, minor, required.
struct Device {
    path: &'static str,
    major: u64,
    minor: u64,
    required: bool,
}

/// Major/minor numbers from the kernel's devices.txt (Firecracker's set).
const DEVICES: [Device; 3] = [
    Device {
        path: "/dev/kvm",
        major: 10,
        minor: 232,
        required: true,
    },
    Device {
        path: "/dev/net/tun",
        major: 10,
        minor: 200,
        required: true,
    },
    Device {
        path: "/dev/urandom",
        major: 1,
        minor: 9,
        required: false,
    },
];

/// mknod each device with mode 0600 and chown it to uid:gid. A node left by an earlier run is
/// replaced. /dev/urandom is optional, as in Firecracker: a warning when it cannot be made.
pub fn create_devices(uid: u32, gid: u32) -> Result<(), MknodError> {
    for dev in &DEVICES {
        match create(dev, uid, gid) {
            Err(e) if !dev.required => eprintln!("palisade-jailer: warning: {e}"),
            other => other?,
        }
    }
    Ok(())
}

fn create(dev: &Device, uid: u32, gid: u32) -> Result<(), MknodError> {
    let path = PathBuf::from(dev.path);
    let _ = std::fs::remove_file(&path);
    mknod(
        dev.path,
        SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        makedev(dev.major, dev.minor),
    )
    .map_err(|e| MknodError::Mknod(path.clone(), e))?;
    chown(dev.path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| MknodError::Chown(path, e))
}
