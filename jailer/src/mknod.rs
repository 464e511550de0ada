//! Step 8: the device nodes the VMM needs, created inside the jail and owned by its uid/gid.
//! Fixed numbers for /dev/kvm, /dev/net/tun and /dev/urandom; /dev/userfaultfd (snapshot loads
//! with the Uffd memory backend: the jailed VMM lacks the privilege the userfaultfd system
//! call needs) has a dynamic misc minor, read from the host's sysfs before the jail is
//! entered, and is made only when the host has it.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

#[derive(Debug, thiserror::Error)]
pub enum MknodError {
    #[error("Cannot create device node {0}")]
    Mknod(PathBuf, #[source] nix::Error),
    #[error("Cannot give {0} to the jailed uid/gid")]
    Chown(PathBuf, #[source] std::io::Error),
    #[error("{0} was replaced after it was created")]
    Replaced(PathBuf),
}

/// Where the host's kernel publishes the numbers of its /dev/userfaultfd (Linux 6.1+).
pub const USERFAULTFD_SYSFS: &str = "/sys/class/misc/userfaultfd/dev";

/// The host's /dev/userfaultfd as (major, minor), when its kernel has one: read on the host
/// side (before pivot_root), from `USERFAULTFD_SYSFS`.
pub fn host_userfaultfd() -> Option<(u64, u64)> {
    parse_dev(&std::fs::read_to_string(USERFAULTFD_SYSFS).ok()?)
}

/// "MAJOR:MINOR\n" as sysfs writes it.
fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let (major, minor) = line.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A character device the jail gets: path inside the jail, major, minor, required.
#[derive(Debug, PartialEq, Eq)]
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
/// /dev/userfaultfd is made with the host's numbers `userfaultfd` when the host has one.
pub fn create_devices(
    uid: u32,
    gid: u32,
    userfaultfd: Option<(u64, u64)>,
) -> Result<(), MknodError> {
    let userfaultfd = userfaultfd.map(|(major, minor)| Device {
        path: "/dev/userfaultfd",
        major,
        minor,
        required: true,
    });
    for dev in DEVICES.iter().chain(userfaultfd.as_ref()) {
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
    chown_node(dev, uid, gid).map_err(|e| match e {
        None => MknodError::Replaced(path.clone()),
        Some(e) => MknodError::Chown(path.clone(), e),
    })
}

/// chown of the node just made, never of what a link there points at: `/dev` belongs to the
/// jailed uid, which may swap the name for a link to a root-owned file in the jail (the pid
/// file). Opened with O_PATH|O_NOFOLLOW, checked to be the device, chowned through that
/// descriptor. `Err(None)`: something else is there now.
fn chown_node(dev: &Device, uid: u32, gid: u32) -> Result<(), Option<std::io::Error>> {
    let node = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(dev.path)
        .map_err(Some)?;
    let meta = node.metadata().map_err(Some)?;
    let rdev = makedev(dev.major, dev.minor);
    if !meta.file_type().is_char_device() || meta.rdev() != rdev || meta.nlink() != 1 {
        return Err(None);
    }
    let empty = CString::default();
    // SAFETY: fchownat with AT_EMPTY_PATH acts on the O_PATH descriptor itself; `empty` is a
    // NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::fchownat(
            node.as_raw_fd(),
            empty.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(Some(std::io::Error::last_os_error())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_device_numbers_parse_strictly() {
        assert_eq!(parse_dev("10:257\n"), Some((10, 257)));
        assert_eq!(parse_dev("10:257"), Some((10, 257)));
        for bad in [
            "", "10", "10:", ":5", "10:5:1", "a:b", "10: 5", "-1:5", "10:5\n\n",
        ] {
            assert_eq!(parse_dev(bad), None, "{bad:?}");
        }
    }
}
