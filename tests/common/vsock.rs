//! The host side of the probe's vsock scenarios (Firecracker's contract: `CONNECT <port>\n`
//! on `uds_path` answered `OK <port>\n`; guest-initiated connections reach a listener at
//! `<uds_path>_<port>`), the stream pattern and CRC-32 the probe prints, and the vsock
//! metrics of a run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

/// The probe's stream pattern: byte i is (offset + i) % 251.
pub fn pattern(n: usize, offset: usize) -> Vec<u8> {
    (0..n).map(|i| ((offset + i) % 251) as u8).collect()
}

/// CRC-32 (IEEE), as the probe prints it.
pub fn crc32(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|mut c| {
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            c
        })
        .collect();
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `key=value` words of a result line.
pub fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first serial line starting with `prefix`.
pub fn line_with<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(prefix))
}

/// Connects to `uds` and asks for guest port `port`: the stream after `OK <port>\n`, or what
/// the VMM answered instead (empty when it closed the connection).
pub fn host_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds:?}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    if !text.starts_with("OK ") || !text.ends_with('\n') {
        return Err(text);
    }
    s.set_read_timeout(None).unwrap();
    Ok(s)
}

/// Sends `data` on `s` from another thread while reading as many bytes back; returns them.
pub fn echo_round_trip(s: &UnixStream, data: &[u8]) -> Vec<u8> {
    let mut writer = s.try_clone().unwrap();
    let out = data.to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&out).is_ok());
    let mut got = Vec::with_capacity(data.len());
    let mut reader = s.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut chunk = vec![0u8; 65536];
    while got.len() < data.len() {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(sender.join().unwrap(), "the host could not send everything");
    got
}

/// A host listener at `<uds>_<port>` whose connections echo what they read; returns the
/// socket path and, per connection, what it received (once the peer ended).
pub struct EchoListener {
    pub path: PathBuf,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    _thread: JoinHandle<()>,
}

impl EchoListener {
    pub fn start(uds: &Path, port: u32) -> Self {
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let listener = UnixListener::bind(&path).unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut chunk = vec![0u8; 65536];
                    while let Ok(n) = stream.read(&mut chunk) {
                        if n == 0 || stream.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                        all.extend_from_slice(&chunk[..n]);
                    }
                    sink.lock().unwrap().push(all);
                });
            }
        });
        Self {
            path,
            received,
            _thread: thread,
        }
    }
}

/// The vsock counters of a metrics file, summed over its lines.
pub fn vsock_totals(metrics: &Path) -> BTreeMap<String, u64> {
    super::group_totals(
        &std::fs::read_to_string(metrics).unwrap_or_default(),
        "vsock",
    )
}

/// Waits for a whole serial line (ended by its newline) starting with `prefix`: output
/// arrives in pieces, so a prefix seen may still lack its fields.
pub fn wait_for_line(vm: &mut super::RunningVm, prefix: &str, timeout: Duration) -> String {
    vm.wait_for_output(prefix, timeout);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let stdout = vm.stdout();
        let whole = stdout
            .split_inclusive('\n')
            .find(|l| l.starts_with(prefix) && l.ends_with('\n'));
        if let Some(line) = whole {
            return line.trim_end().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{prefix:?} never ended its line"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
