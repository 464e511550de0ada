//! The host side of the Linux test guest's agent (resources/guest/README.md, "Protocol"):
//! EXEC and READ over the VMM's vsock Unix socket, one request per connection, in Rust so
//! that tests can poll it with a deadline.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::vsock::host_connect;

/// The agent's guest port.
pub const AGENT_PORT: u32 = 52;

/// What an EXEC returned.
#[derive(Debug)]
pub struct Exec {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn read_frame(s: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| format!("length: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 16 << 20 {
        return Err(format!("frame of {len} bytes"));
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).map_err(|e| format!("data: {e}"))?;
    Ok(data)
}

fn request(uds: &Path, payload: &[u8]) -> Result<std::os::unix::net::UnixStream, String> {
    let mut s = host_connect(uds, AGENT_PORT)?;
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(payload).map_err(|e| format!("send: {e}"))?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status)
        .map_err(|e| format!("status: {e}"))?;
    if status[0] != 0 {
        let msg = read_frame(&mut s)?;
        return Err(format!("agent: {}", String::from_utf8_lossy(&msg)));
    }
    Ok(s)
}

/// Runs `argv` in the guest through the agent behind `uds`.
pub fn exec(uds: &Path, argv: &[&str]) -> Result<Exec, String> {
    let mut payload = frame(b"EXEC");
    payload.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    for arg in argv {
        payload.extend_from_slice(&frame(arg.as_bytes()));
    }
    payload.extend_from_slice(&frame(b""));
    let mut s = request(uds, &payload)?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).map_err(|e| format!("exit: {e}"))?;
    let code = i32::from_le_bytes(head[..4].try_into().unwrap());
    let stdout = String::from_utf8_lossy(&read_frame(&mut s)?).into_owned();
    let stderr = String::from_utf8_lossy(&read_frame(&mut s)?).into_owned();
    Ok(Exec {
        code,
        stdout,
        stderr,
    })
}

/// `sh -c script` in the guest; panics unless it exits 0. Returns its stdout.
pub fn sh(uds: &Path, script: &str) -> String {
    let out = exec(uds, &["sh", "-c", script]).unwrap_or_else(|e| panic!("EXEC {script}: {e}"));
    assert_eq!(out.code, 0, "EXEC {script}: {out:?}");
    out.stdout
}

/// Waits until the agent behind `uds` runs `busybox true`; panics after `timeout` with the
/// last connection error, or at once if the agent answers with an error.
pub fn wait_for_agent(uds: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match exec(uds, &["busybox", "true"]) {
            Ok(out) if out.code == 0 => return,
            Ok(out) => panic!("the agent answered, `busybox true` failed: {out:?}"),
            Err(e) if e.starts_with("agent:") => panic!("the agent answered: {e}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "the agent did not answer within {timeout:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
