//! The Linux test guest as an MMDS client, and the host side around it: HTTP requests to the
//! metadata address made with busybox `nc` through the agent (busybox `wget` cannot send the
//! PUT a V2 token needs), their status and body, session tokens, the per-interface counters of
//! the VMM's metrics file, extra taps in a test's namespace and a TCP listener there that
//! stands for "the host side of a tap".

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::agent::sh;
use super::netns::TapNetns;

/// The default MMDS address.
pub const MMDS_IP: &str = "169.254.169.254";

/// The lines of a request head as a printf format (CRLF after each, then the empty line).
pub fn printf_request(lines: &[&str]) -> String {
    let mut request = String::new();
    for line in lines {
        request.push_str(line);
        request.push_str("\\r\\n");
    }
    request.push_str("\\r\\n");
    request
}

/// One HTTP request from the guest to `addr`:80 through busybox nc; the whole response (the
/// MMDS service closes after it), or what else answered there.
pub fn guest_http_to(uds: &Path, addr: &str, request_lines: &[&str]) -> String {
    let request = printf_request(request_lines);
    sh(uds, &format!("printf '{request}' | nc -w 5 {addr} 80"))
}

/// One HTTP request from the guest to the MMDS address (the guest's routes pick the
/// interface).
pub fn guest_http(uds: &Path, request_lines: &[&str]) -> String {
    guest_http_to(uds, MMDS_IP, request_lines)
}

/// The status code of an HTTP response; panics on anything else.
pub fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// The body of an HTTP response; panics without one.
pub fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {response:?}"))
        .1
}

/// `PUT /latest/api/token` with `ttl`: the raw response.
pub fn guest_token_response(uds: &Path, ttl: u32, extra: &[&str]) -> String {
    let ttl = format!("X-metadata-token-ttl-seconds: {ttl}");
    let mut lines = vec![
        "PUT /latest/api/token HTTP/1.1",
        "Host: 169.254.169.254",
        ttl.as_str(),
    ];
    lines.extend_from_slice(extra);
    guest_http(uds, &lines)
}

/// A session token with lifetime `ttl`; panics unless the service gave one.
pub fn guest_token(uds: &Path, ttl: u32) -> String {
    let response = guest_token_response(uds, ttl, &[]);
    assert_eq!(status_of(&response), 200, "{response}");
    let token = body_of(&response).trim().to_string();
    assert!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{token:?}"
    );
    token
}

/// `GET path` as JSON, with `token` in `X-metadata-token` when given: the raw response.
pub fn guest_get(uds: &Path, path: &str, token: Option<&str>) -> String {
    let get = format!("GET {path} HTTP/1.1");
    let token = token.map(|t| format!("X-metadata-token: {t}"));
    let mut lines = vec![
        get.as_str(),
        "Host: 169.254.169.254",
        "Accept: application/json",
    ];
    lines.extend(token.as_deref());
    guest_http(uds, &lines)
}

/// The `net_<iface>` counters summed over the metrics file's lines.
pub fn net_totals(path: &Path, iface: &str) -> BTreeMap<String, u64> {
    super::group_totals(
        &std::fs::read_to_string(path).unwrap(),
        &format!("net_{iface}"),
    )
}

/// Runs `ip ARGS` inside `ns`; panics with its stderr unless it succeeds.
pub fn ns_ip(ns: &TapNetns, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds tap `tap` with `addr` (CIDR) to `ns`, up.
pub fn add_tap(ns: &TapNetns, tap: &str, addr: &str) {
    ns_ip(ns, &["tuntap", "add", "dev", tap, "mode", "tap"]);
    ns_ip(ns, &["addr", "add", addr, "dev", tap]);
    ns_ip(ns, &["link", "set", tap, "up"]);
}

/// A TCP listener on 0.0.0.0:`port` inside a namespace that writes `banner` to every
/// connection and closes it: "the host side of a tap" for a guest that connects there.
/// Stopped on drop.
pub struct HostListener {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostListener {
    /// Binds in `ns` (panics if it cannot) and serves on a thread there.
    pub fn start(ns: &TapNetns, port: u16, banner: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = ns.run(move || {
            let bound = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                .and_then(|l| Ok((l.try_clone()?, l)));
            let listener = match bound {
                Ok((clone, l)) => {
                    bound_tx.send(Ok(clone)).unwrap();
                    l
                }
                Err(e) => {
                    bound_tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(mut conn) = conn {
                    let _ = conn.write_all(banner.as_bytes());
                }
            }
        });
        let listener = bound_rx.recv().unwrap().unwrap();
        Self {
            listener,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on the listening socket this struct owns (a clone of the
        // thread's): Linux then fails the thread's blocked accept with EINVAL.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
