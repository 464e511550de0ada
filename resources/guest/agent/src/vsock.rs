//! AF_VSOCK stream sockets through libc: listen, accept, connect, timeouts. The only
//! unsafe code of the agent.

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening socket on `port` of any local CID.
pub fn listen(port: u32, backlog: i32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the size passed; fd is a socket we own.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: fd is a bound socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Accepts one connection: (stream, peer CID, peer port).
pub fn accept(listener: &OwnedFd) -> io::Result<(File, u32, u32)> {
    let mut a = addr(0, 0);
    let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `a` and `len` are valid for writes of the sizes given; listener is ours.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut a as *mut libc::sockaddr_vm).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a new descriptor that nothing else owns.
    let stream = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok((stream, a.svm_cid, a.svm_port))
}

/// Connects to `cid`:`port`.
pub fn connect(cid: u32, port: u32) -> io::Result<File> {
    let fd = socket()?;
    let a = addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the size passed; fd is a socket we own.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    Ok(File::from(fd))
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO: a blocked read or write fails after `secs` seconds
/// without progress.
pub fn set_timeouts(stream: &File, secs: i64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval of the size passed; the fd is a socket we own.
        cvt(unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}
