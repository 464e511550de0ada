//! The Uffd memory backend of `PUT /snapshot/load`, as Firecracker's: guest memory is
//! private anonymous memory registered with a userfaultfd (missing-page mode), and an external
//! page fault handler, listening on a Unix socket, fills each page the first time the guest
//! (or the VMM) touches it.
//!
//! The handshake is Firecracker's, byte for byte, so its example handlers serve us: one
//! message on a stream connection to the handler's socket, whose bytes are the JSON array of
//! [`GuestRegionUffdMapping`] (one per region, in guest address order; `offset` is the
//! region's offset in the memory file) and whose SCM_RIGHTS control message carries the
//! userfaultfd. The VMM keeps its end of the connection and its copy of the userfaultfd for
//! the life of the VM: if the handler dies, faults stay unserved (the vCPU that touches a
//! missing page waits) rather than silently turning into zero pages.
//!
//! Palisade adds one check: the load succeeds only once the handler has read the message
//! (the socket's send queue is empty, SIOCOUTQ) while its end is still open, within
//! [`HANDOFF_TIMEOUT`]; a handler that closes the connection first, or never reads, fails the
//! load with a clear error and nothing restored.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_val};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::uffd_abi::{
    UffdioApi, UffdioRange, UffdioRegister, UFFDIO_API, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_FEATURE_EVENT_REMOVE, USERFAULTFD_IOC_NEW,
};
use crate::vstate::memory::GuestMemory;

/// The device that hands out userfaultfds without the `vm.unprivileged_userfaultfd` sysctl
/// (Linux 6.1+); its permissions decide who may.
pub const USERFAULTFD_DEVICE: &str = "/dev/userfaultfd";
/// How long the handler has to accept the connection and read the message.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size the restored memory uses (4 KiB: restored memory is never huge-page backed).
const PAGE_SIZE: usize = 4096;
/// Longest wait between two looks at the socket.
const POLL_STEP: Duration = Duration::from_millis(1);

/// Why guest memory cannot be handed to the page fault handler.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Neither /dev/userfaultfd nor the userfaultfd(2) system call gave a userfaultfd.
    #[error("Cannot create a userfaultfd ({USERFAULTFD_DEVICE}: {device}; then userfaultfd(2))")]
    Create {
        /// Why /dev/userfaultfd did not give one.
        device: String,
        /// Why the system call did not.
        #[source]
        syscall: std::io::Error,
    },
    /// UFFDIO_API failed: the kernel lacks the API or the remove events Firecracker asks for.
    #[error("The userfaultfd API handshake (UFFDIO_API) failed")]
    Api(#[source] std::io::Error),
    /// UFFDIO_REGISTER failed for a region.
    #[error("Cannot register guest memory region {index} with the userfaultfd")]
    Register {
        /// The region.
        index: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The handler's socket cannot be reached (missing, not a socket, nobody listening).
    #[error("Cannot connect to the page fault handler's socket {}", .path.display())]
    Connect {
        /// backend_path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// The message could not be encoded.
    #[error("Cannot encode the guest memory description")]
    Encode(#[source] serde_json::Error),
    /// The message could not be sent.
    #[error("Cannot send the guest memory description to the page fault handler")]
    Send(#[source] std::io::Error),
    /// The handler closed the connection before it took the message (or as it did).
    #[error("The page fault handler closed the connection before taking the userfaultfd")]
    Closed,
    /// The handler did not read the message in time.
    #[error("The page fault handler did not take the userfaultfd within {0:?}")]
    Timeout(Duration),
    /// The socket's state could not be read.
    #[error("Cannot watch the connection to the page fault handler")]
    Watch(#[source] std::io::Error),
}

/// One guest memory region as the handler learns it (Firecracker's
/// `GuestRegionUffdMapping`; fields in Firecracker's order and names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Where the region is mapped in the VMM: faults report addresses in here.
    pub base_host_virt_addr: u64,
    /// Bytes in the region.
    pub size: usize,
    /// Where the region's contents start in the memory file.
    pub offset: u64,
    /// Page size of the region, in bytes.
    pub page_size: usize,
    /// The same, under Firecracker's deprecated (misnamed: it is bytes) key.
    pub page_size_kib: usize,
}

/// The regions of `mem` as the handler learns them: in guest address order, at consecutive
/// offsets of the memory file (the layout `memory_file` writes).
pub fn region_mappings(mem: &GuestMemory) -> Vec<GuestRegionUffdMapping> {
    let mut offset = 0;
    mem.iter()
        .map(|region| {
            let mapping = GuestRegionUffdMapping {
                base_host_virt_addr: region.as_ptr() as u64,
                size: region.len() as usize,
                offset,
                page_size: PAGE_SIZE,
                page_size_kib: PAGE_SIZE,
            };
            offset += region.len();
            mapping
        })
        .collect()
}

/// Guest memory served by an external handler: the VMM's copy of the userfaultfd and its end
/// of the connection, both kept open while the VM lives.
#[derive(Debug)]
pub struct UffdBackend {
    _uffd: OwnedFd,
    socket: UnixStream,
}

impl UffdBackend {
    /// A duplicate of the VMM's end of the connection, for watching the handler's side close.
    pub fn connection(&self) -> Result<UnixStream, std::io::Error> {
        self.socket.try_clone()
    }
}

/// Registers every region of `mem` (fresh anonymous memory nothing has touched) with a new
/// userfaultfd, hands it to the handler listening at `socket_path` and waits until the
/// handler has taken it (see the module doc).
pub fn hand_to_handler(mem: &GuestMemory, socket_path: &Path) -> Result<UffdBackend, UffdError> {
    hand_to_handler_within(mem, socket_path, HANDOFF_TIMEOUT)
}

/// As [`hand_to_handler`], giving the handler `timeout` to take the userfaultfd.
pub fn hand_to_handler_within(
    mem: &GuestMemory,
    socket_path: &Path,
    timeout: Duration,
) -> Result<UffdBackend, UffdError> {
    let (uffd, source) = create_userfaultfd()?;
    negotiate_api(&uffd)?;
    for (index, region) in mem.iter().enumerate() {
        register(&uffd, region.as_ptr() as u64, region.len())
            .map_err(|source| UffdError::Register { index, source })?;
    }
    let message = serde_json::to_vec(&region_mappings(mem)).map_err(UffdError::Encode)?;
    let deadline = Instant::now() + timeout;
    let socket = connect_handler(socket_path, deadline, timeout)?;
    send_with_fd(&socket, &message, &uffd)?;
    wait_until_taken(&socket, deadline, timeout)?;
    log::info!(
        "Guest memory ({} region(s)) handed to the page fault handler at {} (userfaultfd from {source})",
        mem.num_regions(),
        socket_path.display()
    );
    Ok(UffdBackend {
        _uffd: uffd,
        socket,
    })
}

/// A userfaultfd (close-on-exec, non-blocking, kernel faults too: KVM's accesses to guest
/// memory are kernel-mode faults): from /dev/userfaultfd when it works, else from the system
/// call, as Firecracker's userfaultfd crate does.
fn create_userfaultfd() -> Result<(OwnedFd, &'static str), UffdError> {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong;
    let device = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(USERFAULTFD_DEVICE)
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd; the
            // device fd is valid for the call.
            let fd = unsafe { ioctl_with_val(&dev, USERFAULTFD_IOC_NEW(), flags) };
            if fd >= 0 {
                // SAFETY: the kernel just returned this fd to us and nothing else owns it.
                return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, USERFAULTFD_DEVICE));
            }
            std::io::Error::last_os_error().to_string()
        }
        Err(e) => e.to_string(),
    };
    // SAFETY: userfaultfd(2) takes its flags by value and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(UffdError::Create {
            device,
            syscall: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: as above; an fd fits a c_int.
    Ok((
        unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
        "userfaultfd(2)",
    ))
}

/// UFFDIO_API with the remove events Firecracker's handlers expect.
fn negotiate_api(uffd: &OwnedFd) -> Result<(), UffdError> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_EVENT_REMOVE,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `uffdio_api`, which `api` is and outlives.
    if unsafe { ioctl_with_mut_ref(uffd, UFFDIO_API(), &mut api) } < 0 {
        return Err(UffdError::Api(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// UFFDIO_REGISTER of [start, start + len) in missing-page mode.
fn register(uffd: &OwnedFd, start: u64, len: u64) -> Result<(), std::io::Error> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a `uffdio_register`, which `reg` is and
    // outlives; the range is guest memory this process mapped and keeps mapped.
    if unsafe { ioctl_with_mut_ref(uffd, UFFDIO_REGISTER(), &mut reg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking stream connection to `path` (a full accept backlog is retried until the
/// deadline instead of blocking the VMM thread).
fn connect_handler(
    path: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<UnixStream, UffdError> {
    let failed = |source| UffdError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(failed)?;
    let socket = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(failed)?;
    loop {
        match connect(socket.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(socket)),
            Err(nix::Error::EAGAIN) if Instant::now() < deadline => std::thread::sleep(POLL_STEP),
            Err(nix::Error::EAGAIN) => return Err(UffdError::Timeout(timeout)),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(failed(e)),
        }
    }
}

/// Sends `message` with `fd` as SCM_RIGHTS, in one piece (MSG_NOSIGNAL: a closed peer is
/// an error, not a SIGPIPE).
fn send_with_fd(socket: &UnixStream, message: &[u8], fd: &OwnedFd) -> Result<(), UffdError> {
    match socket.send_with_fd(message, fd.as_raw_fd()) {
        Ok(n) if n == message.len() => Ok(()),
        Ok(_) => Err(UffdError::Send(std::io::Error::from_raw_os_error(
            libc::EMSGSIZE,
        ))),
        Err(e) if matches!(e.errno(), libc::EPIPE | libc::ECONNRESET) => Err(UffdError::Closed),
        Err(e) => Err(UffdError::Send(e.into())),
    }
}

/// Waits until the handler has read everything sent (SIOCOUTQ is 0) while its end is still
/// open. A hang-up seen first fails, whether or not the message was read.
fn wait_until_taken(
    socket: &UnixStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), UffdError> {
    loop {
        let now = Instant::now();
        let step = deadline.saturating_duration_since(now).min(POLL_STEP);
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, which `pfd` is and outlives.
        let ready = unsafe { libc::poll(&mut pfd, 1, step.as_millis() as libc::c_int) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(UffdError::Watch(err));
        }
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(UffdError::Closed);
        }
        if unread_bytes(socket).map_err(UffdError::Watch)? == 0 {
            return Ok(());
        }
        if now >= deadline {
            return Err(UffdError::Timeout(timeout));
        }
    }
}

/// Bytes sent on `socket` that the peer has not read yet (SIOCOUTQ).
fn unread_bytes(socket: &UnixStream) -> Result<libc::c_int, std::io::Error> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int, which `queued` is and outlives.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(queued)
}

/// Whether this process can create a userfaultfd (for tests and diagnostics).
pub fn available() -> bool {
    create_userfaultfd().is_ok()
}

/// Reads one Firecracker handshake from `stream` (what a handler does): the mappings and the
/// userfaultfd. Used by tests and by resources/uffd-handler.
pub fn receive_handshake(
    stream: &UnixStream,
) -> Result<(Vec<GuestRegionUffdMapping>, File), std::io::Error> {
    let mut buf = vec![0u8; 64 << 10];
    let (len, fd) = stream
        .recv_with_fd(&mut buf)
        .map_err(std::io::Error::from)?;
    let fd = fd.ok_or_else(|| std::io::Error::other("no userfaultfd in the message"))?;
    let text = buf.get(..len).unwrap_or_default();
    let mappings = serde_json::from_slice(text).map_err(std::io::Error::other)?;
    Ok((mappings, fd))
}

#[cfg(test)]
mod tests;
