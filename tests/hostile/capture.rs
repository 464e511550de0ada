//! Frames the VMM writes to a tap, captured inside the test's network namespace with an
//! AF_PACKET socket (every frame, whatever the host stack then makes of it).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::netns::TapNetns;

/// Captures on `ns`'s tap0 until a frame contains `until` or `secs` pass; returns once the
/// socket is bound, the handle yields the frames.
pub fn capture(ns: &TapNetns, secs: u64, until: &'static [u8]) -> JoinHandle<Vec<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns.run(move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor this thread owns from here on.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the name is a NUL-terminated C string.
        let index = unsafe { libc::if_nametoindex(c"tap0".as_ptr()) };
        assert!(index != 0, "no tap0");
        // SAFETY: zeroed sockaddr_ll is a valid value; the fields set below complete it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO with a timeval of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        tx.send(()).expect("test waits");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 128 * 1024];
        while Instant::now() < deadline {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let frame = buf[..n as usize].to_vec();
            let done = frame.windows(until.len()).any(|w| w == until);
            frames.push(frame);
            if done {
                break;
            }
        }
        frames
    });
    rx.recv().expect("capture thread started");
    handle
}
