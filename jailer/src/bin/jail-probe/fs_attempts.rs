//! File system: host files, writes outside the jail, mount, mknod, chroot; and the controls
//! that a VMM must still be able to do.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{errno_name, io_name, Outcome};

/// KVM_GET_API_VERSION.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// Control: /dev/kvm opens read-write and answers an ioctl (Landlock's ioctl right).
pub fn open_dev_kvm() -> Outcome {
    let kvm = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => return Outcome::blocked(io_name(&e)),
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and returns an integer.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version < 0 {
        Outcome::blocked(format!("ioctl: {}", errno_name()))
    } else {
        Outcome::allowed(format!("KVM API version {version}"))
    }
}

/// Control: a file inside the jail can be written, read back and removed.
pub fn write_inside() -> Outcome {
    let path = "/run/jail-probe-inside";
    let result = std::fs::write(path, b"inside")
        .and_then(|()| std::fs::read(path))
        .and_then(|data| std::fs::remove_file(path).map(|()| data));
    match result {
        Ok(data) if data == b"inside" => Outcome::allowed(path),
        Ok(_) => Outcome::blocked("read back different data"),
        Err(e) => Outcome::blocked(io_name(&e)),
    }
}

pub fn read(path: &str) -> Outcome {
    match std::fs::read(path) {
        Ok(data) => Outcome::allowed(format!("read {} bytes", data.len())),
        Err(e) => Outcome::blocked(io_name(&e)),
    }
}

/// Tries to create `path` (a host path outside the jail, given by the test).
pub fn write_outside(path: Option<&Path>) -> Outcome {
    let Some(path) = path else {
        return Outcome::allowed("no --outside path given: not tried");
    };
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    match created {
        Ok(_) => Outcome::allowed(format!("created {}", path.display())),
        Err(e) => Outcome::blocked(format!("{}: {}", path.display(), io_name(&e))),
    }
}

/// A tmpfs over /run and a new procfs.
pub fn mount() -> Outcome {
    let mut details = Vec::new();
    let mut allowed = false;
    for (source, target, fstype) in [("tmpfs", "/run", "tmpfs"), ("proc", "/run", "proc")] {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        let (source, target, fstype) = (c(source), c(target), c(fstype));
        // SAFETY: all pointers are NUL-terminated strings that outlive the call; no data.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            allowed = true;
            details.push(format!("{fstype:?} mounted"));
            // SAFETY: unmounts what this attempt just mounted.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        } else {
            details.push(format!("{fstype:?}: {}", errno_name()));
        }
    }
    Outcome {
        allowed,
        detail: details.join(", "),
    }
}

/// A character device node for /dev/mem (1, 1).
pub fn mknod() -> Outcome {
    let path = CString::new("/run/jail-probe-mem").unwrap_or_default();
    // SAFETY: path is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 1)) };
    if rc == 0 {
        // SAFETY: removes the node this attempt just made.
        unsafe { libc::unlink(path.as_ptr()) };
        return Outcome::allowed("created a /dev/mem node");
    }
    Outcome::blocked(errno_name())
}

pub fn chroot_again() -> Outcome {
    let path = CString::new("/run").unwrap_or_default();
    // SAFETY: path is a NUL-terminated string that outlives the call.
    Outcome::from_rc(i64::from(unsafe { libc::chroot(path.as_ptr()) }))
}
