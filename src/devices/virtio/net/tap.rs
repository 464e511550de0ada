//! The host side of a network interface: a tap device opened through /dev/net/tun with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so that every frame carries a virtio-net header (12
//! bytes, the virtio 1.x layout) and offloaded frames (checksum, TSO) cross it whole.
//!
//! The file descriptor is non-blocking: a read with nothing waiting answers `WouldBlock`, and
//! the event loop waits for it to become readable (edge-triggered).

use std::fs::File;
use std::io::{self, Read, Write};
#[cfg(test)]
use std::os::fd::FromRawFd;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offloads the tap may hand to the guest (`TUNSETOFFLOAD`).
pub const TUN_F_CSUM: u32 = 0x01;
/// TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;

/// The virtio-net header the tap reads and writes before every frame (virtio 1.x: with
/// `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// Errors of opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name does not fit `IFNAMSIZ`.
    #[error("Invalid tap name '{0}': 1 to 15 bytes, no NUL")]
    Name(String),
    /// /dev/net/tun cannot be opened (Firecracker's message).
    #[error("Couldn't open /dev/net/tun: {0}")]
    Open(io::Error),
    /// TUNSETIFF refused the name: not a tap, busy, or not ours to create (Firecracker's
    /// message).
    #[error(
        "Error while creating ifreq structure: {1}. Invalid TUN/TAP Backend provided by {0}. \
         Check our documentation on setting up the network devices."
    )]
    Attach(String, io::Error),
    /// An ioctl on the tap failed.
    #[error("Cannot {0} on tap {1}")]
    Ioctl(&'static str, String, #[source] io::Error),
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name` (created when it does not exist and the process may create it).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        let tap = Self {
            file,
            name: name.to_string(),
        };
        // SAFETY: TUNSETIFF reads (and writes back the name into) a `struct ifreq`, which
        // `req` is, laid out as the kernel expects and alive for the call.
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::Attach(
                tap.name.clone(),
                io::Error::last_os_error(),
            ));
        }
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        tap.check(r, "set the vnet header size")?;
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// A stand-in tap on any packet file descriptor (a SOCK_SEQPACKET end in unit tests, a
    /// datagram socket in fuzz targets): no ioctl is made on it.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            name: "test".to_string(),
        }
    }

    fn check(&self, r: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Ioctl(
                what,
                self.name.clone(),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads frames written to the guest may carry (`TUN_F_*`); the guest's
    /// negotiated features decide.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        if self.name == "test" {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        self.check(r, "set offloads (TUNSETOFFLOAD)")
    }

    /// Reads one frame (with its vnet header) into `buf`; `WouldBlock` when none waits.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        loop {
            match self.file.write(frame) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A connected pair of packet sockets: one end stands in for the tap in unit tests.
#[cfg(test)]
pub fn socket_pair() -> (Tap, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for them.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    (Tap::from_fd(a), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tap_names_are_refused_before_any_system_call() {
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-longer-than-15"),
            Err(TapError::Name(_))
        ));
        assert!(matches!(Tap::open("nul\0"), Err(TapError::Name(_))));
    }

    #[test]
    fn a_device_that_is_not_a_tap_is_refused_with_firecrackers_message() {
        // `lo` always exists and is no tap: TUNSETIFF answers EINVAL (or EPERM unprivileged).
        let err = Tap::open("lo").unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, TapError::Attach(..) | TapError::Open(_)),
            "{text}"
        );
        if matches!(err, TapError::Attach(..)) {
            assert!(
                text.starts_with("Error while creating ifreq structure: ")
                    && text.contains("Invalid TUN/TAP Backend provided by lo."),
                "{text}"
            );
        }
    }
}
