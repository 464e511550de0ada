//! Network: TCP connect and bind, raw and packet sockets, abstract Unix sockets on the host.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use crate::{errno_name, Outcome};

pub fn tcp_connect(addr: Option<SocketAddr>) -> Outcome {
    let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 22)));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => Outcome::allowed(format!("connected to {addr}")),
        Err(e) => Outcome::blocked(format!("{addr}: {}", crate::io_name(&e))),
    }
}

pub fn tcp_bind() -> Outcome {
    match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => Outcome::allowed(format!("bound {:?}", l.local_addr().ok())),
        Err(e) => Outcome::blocked(crate::io_name(&e)),
    }
}

fn socket(domain: i32, kind: i32, protocol: i32) -> Outcome {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(domain, kind, protocol) };
    if fd < 0 {
        return Outcome::blocked(errno_name());
    }
    // SAFETY: closes the socket this attempt just opened.
    unsafe { libc::close(fd) };
    Outcome::allowed("socket opened")
}

pub fn raw_socket() -> Outcome {
    socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
}

pub fn packet_socket() -> Outcome {
    socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from((libc::ETH_P_ALL as u16).to_be()),
    )
}

pub fn abstract_unix(name: Option<&str>) -> Outcome {
    let Some(name) = name else {
        return Outcome::allowed("no --abstract name given: not tried");
    };
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => return Outcome::allowed(format!("bad name: {e}")),
    };
    match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(_) => Outcome::allowed(format!("connected to @{name}")),
        Err(e) => Outcome::blocked(format!("@{name}: {}", crate::io_name(&e))),
    }
}
