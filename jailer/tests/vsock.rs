//! vsock through palisade-jailer: the VMM, jailed (chroot, its uid, Landlock layer 1, then its
//! own Landlock layer and seccomp), listens on `uds_path` inside the jail; a host client
//! reaches the guest through `<chroot>/<uds_path>`, and the guest reaches a host listener the
//! caller put at `<chroot>/<uds_path>_<port>`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_jail, probe_guest, unique, vmm_bin, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(120);
const SIZE: usize = 1 << 20;

fn pattern(n: usize, offset: usize) -> Vec<u8> {
    (0..n).map(|i| ((offset + i) % 251) as u8).collect()
}

/// Collects a child's output as it comes.
fn collect(mut source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    text
}

/// Waits for a whole line starting with `prefix`; panics with the output after `TIMEOUT` or
/// if the jailer exits first.
fn wait_for_line(
    child: &mut Child,
    out: &Mutex<String>,
    err: &Mutex<String>,
    prefix: &str,
) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = out.lock().unwrap().clone();
        if let Some(line) = text
            .split_inclusive('\n')
            .find(|l| l.starts_with(prefix) && l.ends_with('\n'))
        {
            return line.trim_end().to_string();
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no {prefix:?} ({exited:?})\n--- stdout\n{text}\n--- stderr\n{}",
                err.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `CONNECT <port>` on `uds`: the stream after `OK ...\n`.
fn host_connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed after {reply:?}");
        reply.push(byte[0]);
    }
    assert!(reply.starts_with(b"OK "), "{reply:?}");
    s
}

#[test]
fn a_jailed_vmm_carries_vsock_both_ways_through_sockets_inside_its_chroot() {
    if !can_jail("a_jailed_vmm_carries_vsock_both_ways_through_sockets_inside_its_chroot") {
        return;
    }
    let vmm = vmm_bin();
    let sandbox = Sandbox::new("vsock");
    let id = unique("vsock");
    let root = sandbox.stage_libraries(&vmm, &id);
    std::fs::copy(probe_guest(), root.join("probe.elf")).unwrap();
    let boot = format!(
        "console=ttyS0 probe.run=vsock-echo,vsock-connect probe.port=5000 probe.count=1 \
         probe.secs=60 probe.bytes={SIZE}"
    );
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": "/probe.elf", "boot_args": boot},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "vsock": {"guest_cid": 3, "uds_path": "/v.sock"}
    });
    std::fs::write(root.join("vm.json"), config.to_string()).unwrap();
    // The guest-initiated side: the caller's listener inside the jail, connectable by the
    // jailed uid.
    let host_listener = UnixListener::bind(root.join("v.sock_5000")).unwrap();
    std::fs::set_permissions(
        root.join("v.sock_5000"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let echoed = std::thread::spawn(move || {
        let (mut s, _) = host_listener.accept().unwrap();
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 65536];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 || s.write_all(&chunk[..n]).is_err() {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
        }
        all
    });

    let mut cmd = sandbox.jailer(&id, &vmm);
    cmd.args(["--new-pid-ns", "--cgroup", "pids.max=64"]);
    cmd.args(["--", "--no-api", "--config-file", "/vm.json"]);
    let mut child = common::spawn(cmd);
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());

    wait_for_line(&mut child, &out, &err, "probe: vsock-echo ready");
    let stream = host_connect(&root.join("v.sock"), 5000);
    let data = pattern(SIZE, 1);
    let mut writer = stream.try_clone().unwrap();
    let to_send = data.clone();
    let sender = std::thread::spawn(move || writer.write_all(&to_send).is_ok());
    let mut back = Vec::new();
    let mut reader = stream.try_clone().unwrap();
    let mut chunk = vec![0u8; 65536];
    while back.len() < SIZE {
        let n = reader.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} bytes", back.len());
        back.extend_from_slice(&chunk[..n]);
    }
    assert!(sender.join().unwrap());
    assert!(back == data, "the host-initiated echo came back intact");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for_line(&mut child, &out, &err, "probe: vsock-echo ok");

    let line = wait_for_line(&mut child, &out, &err, "probe: vsock-connect ");
    assert!(line.contains(" ok "), "{line}");
    assert!(
        echoed.join().unwrap() == pattern(SIZE, 0),
        "the host got the pattern"
    );
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the jailed VMM did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = err.lock().unwrap().clone();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("VMM Landlock ABI"), "{log}");
}
