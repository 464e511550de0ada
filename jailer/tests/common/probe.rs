//! The probe's host-side targets and the checks on its JSON lines.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use serde_json::Value;

use super::{unique, Run};

/// Host-side targets for the probe: a TCP listener, an abstract Unix socket and a process
/// of the jail's own uid (so only the jail, not the uid, can stop a signal or ptrace).
pub struct Targets {
    tcp: TcpListener,
    unix: UnixListener,
    unix_name: String,
    victim: Child,
}

impl Targets {
    pub fn new(uid: u32) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let unix_name = unique("palisade-jail-probe");
        let unix =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(&unix_name).unwrap()).unwrap();
        unix.set_nonblocking(true).unwrap();
        let victim = Command::new("sleep")
            .arg("120")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        Targets {
            tcp,
            unix,
            unix_name,
            victim,
        }
    }

    pub fn probe_args(&self, outside: &Path) -> Vec<String> {
        vec![
            "--attack".into(),
            "--connect".into(),
            self.tcp.local_addr().unwrap().to_string(),
            "--abstract".into(),
            self.unix_name.clone(),
            "--host-pid".into(),
            self.victim.id().to_string(),
            "--outside".into(),
            outside.display().to_string(),
            "--mem-mib".into(),
            "256".into(),
            "--forks".into(),
            "256".into(),
        ]
    }

    /// Nothing reached the host-side listeners.
    pub fn assert_untouched(&self) {
        assert_eq!(self.tcp.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(
            self.unix.accept().unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = self.victim.kill();
        let _ = self.victim.wait();
    }
}

pub fn attempt<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["attempt"] == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

pub fn detail<'a>(lines: &'a [Value], name: &str) -> &'a str {
    attempt(lines, name)["detail"].as_str().unwrap()
}

/// The number in `detail` right after `word`.
pub fn number_after(detail: &str, word: &str) -> u64 {
    let rest = detail
        .split(word)
        .nth(1)
        .unwrap_or_else(|| panic!("{word} in {detail}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

/// Every attack blocked except `allowed`, every control allowed; prints the table.
pub fn assert_outcomes(run: &Run, lines: &[Value], allowed: &[&str]) {
    assert!(
        lines.iter().any(|l| l["kind"] == "done"),
        "probe did not finish: {run:#?}"
    );
    for l in lines.iter().filter(|l| l["attempt"].is_string()) {
        println!(
            "{:8} {:26} {:8} {}",
            l["kind"], l["attempt"], l["outcome"], l["detail"]
        );
    }
    for l in lines {
        let name = l["attempt"].as_str().unwrap_or_default();
        match l["kind"].as_str() {
            Some("attack") if !allowed.contains(&name) => {
                assert_eq!(l["outcome"], "blocked", "attack succeeded: {l}\n{run:#?}")
            }
            Some("control") => assert_eq!(l["outcome"], "allowed", "control failed: {l}\n{run:#?}"),
            _ => {}
        }
    }
}
