//! TestVm: boots the real test guests under the real `palisade` binary and KVM.
#![allow(dead_code, clippy::unwrap_used)]

pub mod agent;
pub mod api;
pub mod linux;
pub mod mmds_guest;
pub mod netns;
pub mod skip;
pub mod vsock;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every line's `group` counters in DIR/metrics.json summed (counters report deltas per
/// flush).
pub fn metric_totals(dir: &Path, group: &str) -> std::collections::BTreeMap<String, u64> {
    group_totals(
        &std::fs::read_to_string(dir.join("metrics.json")).unwrap_or_default(),
        group,
    )
}

/// `group`'s counters summed over the lines of a metrics file's `text`.
pub fn group_totals(text: &str, group: &str) -> std::collections::BTreeMap<String, u64> {
    let mut totals = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (k, n) in v[group].as_object().into_iter().flatten() {
            *totals.entry(k.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    totals
}

/// `VmRSS` of process `pid` in KiB (the resident memory tests bound and compare).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// The VMM binary under test.
pub fn palisade_bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when this host can run the boot tests; otherwise prints one SKIPPED line.
pub fn kvm_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        skip::skip(test, "/dev/kvm is not usable here");
    }
    ok
}

/// Runs a build script (cached by the script itself) and returns the last line it prints.
fn build_output(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} printed nothing"));
    PathBuf::from(last.trim())
}

/// The probe guest ELF: `$PALISADE_PROBE`, else built by resources/probe/build.sh.
pub fn probe_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os("PALISADE_PROBE") {
        Some(p) => PathBuf::from(p),
        None => build_output("resources/probe/build.sh"),
    })
}

/// The Linux guest output directory: `$PALISADE_GUEST_DIR`, else built by
/// resources/guest/build.sh.
pub fn linux_guest_dir() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os("PALISADE_GUEST_DIR") {
        Some(p) => PathBuf::from(p),
        None => build_output("resources/guest/build.sh"),
    })
}

/// A VM configuration written to a private directory, and the VMM flags to run it with.
pub struct TestVm {
    pub dir: tempfile::TempDir,
    pub config: serde_json::Value,
    pub args: Vec<String>,
    /// A network namespace (`ip netns` name) the VMM runs in, for tap devices.
    pub netns: Option<String>,
}

/// The outcome of a VM that ran to its end.
#[derive(Debug)]
pub struct GuestRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl GuestRun {
    /// Result lines `probe: NAME ok|fail ...` of scenario `name`.
    pub fn probe_result(&self, name: &str) -> Option<&str> {
        let prefix = format!("probe: {name} ");
        self.stdout
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| &l[prefix.len()..])
            .find(|rest| rest.starts_with("ok") || rest.starts_with("fail"))
    }

    /// The Linux guest's verdict on check `name`: (passed, detail), or None if it never
    /// reported.
    pub fn guest_result(&self, name: &str) -> Option<(bool, &str)> {
        let prefix = format!("palisade-result: {name} ");
        let rest = self
            .stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix.as_str()))?;
        let (status, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((status == "pass", detail))
    }

    /// The detail of the Linux guest's check `name`, which must have passed.
    pub fn assert_guest_pass(&self, name: &str) -> &str {
        match self.guest_result(name) {
            Some((true, detail)) => detail,
            other => panic!(
                "guest check {name}: {other:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            ),
        }
    }

    /// Panics with the whole output unless the VMM exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "VMM exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Panics unless scenario `name` printed `ok`; returns the detail after it.
    pub fn assert_probe_ok(&self, name: &str) -> String {
        match self.probe_result(name) {
            Some(r) if r == "ok" || r.starts_with("ok ") => r[2..].trim().to_string(),
            other => panic!(
                "probe scenario {name}: {other:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            ),
        }
    }
}

impl TestVm {
    /// A VM running the probe guest with `scenarios`.
    pub fn probe(scenarios: &str, vcpus: u8, mem_mib: usize) -> Self {
        let kernel = probe_path().to_string_lossy().to_string();
        Self::new(serde_json::json!({
            "boot-source": {
                "kernel_image_path": kernel,
                "boot_args": format!("console=ttyS0 probe.run={scenarios}"),
            },
            "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib},
        }))
    }

    /// A VM with the given Firecracker-format config.
    pub fn new(config: serde_json::Value) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            config,
            args: vec!["--no-api".into(), "--boot-timer".into()],
            netns: None,
        }
    }

    /// Writes the config and returns the command that boots it.
    pub fn command(&self) -> Command {
        let path = self.dir.path().join("vm.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
        let mut cmd = Command::new(palisade_bin());
        cmd.args(&self.args)
            .arg("--config-file")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(name) = &self.netns {
            netns::run_in(&mut cmd, name);
        }
        cmd
    }

    /// Boots and waits for the VMM to exit; kills it and panics after `timeout`.
    pub fn run(&self, timeout: Duration) -> GuestRun {
        self.spawn().wait(timeout)
    }

    /// Boots and returns at once.
    pub fn spawn(&self) -> RunningVm {
        let start = Instant::now();
        let mut child = self.command().spawn().expect("spawn palisade");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        RunningVm {
            child,
            stdout,
            stderr,
            start,
        }
    }
}

type Collected = (Arc<Mutex<Vec<u8>>>, Option<JoinHandle<()>>);

fn collect(mut source: impl Read + Send + 'static) -> Collected {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, Some(handle))
}

/// A VMM serving the API on a socket in its own directory, with an audit log there.
pub struct ApiVm {
    pub dir: tempfile::TempDir,
    pub running: RunningVm,
}

impl ApiVm {
    /// Starts `palisade --api-sock DIR/api.sock --audit-log DIR/audit.jsonl EXTRA...` and
    /// waits for the socket.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra)
    }

    /// As `start`, in `dir` (which the caller may have named in `extra`, e.g. as a
    /// `--snapshot-dir`).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_in_netns(dir, None, extra)
    }

    /// As `start_in`, inside network namespace `netns` (for its taps) when given.
    pub fn start_in_netns(dir: tempfile::TempDir, netns: Option<&str>, extra: &[&str]) -> Self {
        let sock = dir.path().join("api.sock");
        let start = Instant::now();
        let mut cmd = Command::new(palisade_bin());
        cmd.arg("--api-sock")
            .arg(&sock)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .arg("--boot-timer")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(name) = netns {
            netns::run_in(&mut cmd, name);
        }
        let mut child = cmd.spawn().expect("spawn palisade");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        api::wait_for_socket(&sock, Duration::from_secs(10));
        Self {
            dir,
            running: RunningVm {
                child,
                stdout,
                stderr,
                start,
            },
        }
    }

    /// The socket path.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// A new client connection.
    pub fn client(&self) -> api::ApiClient {
        api::ApiClient::connect(self.sock())
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A VMM process that is still running; it is killed if the test drops it.
pub struct RunningVm {
    pub child: Child,
    stdout: Collected,
    stderr: Collected,
    start: Instant,
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl RunningVm {
    /// The guest's serial output so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.0.lock().unwrap()).into_owned()
    }

    /// The VMM's log so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.0.lock().unwrap()).into_owned()
    }

    /// The log (stderr) once it contains `text`: a line the VMM writes just before an API
    /// answer can reach this process's reader after the answer does. Panics with the log
    /// after `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log within {timeout:?}\n--- stderr\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the serial output contains `text`; panics after `timeout` or if the VMM
    /// exits first.
    pub fn wait_for_output(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stdout().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "VMM exited ({status}) before printing {text:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "no {text:?} within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the VMM to exit; kills it and panics after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> GuestRun {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "VMM still running after {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.start.elapsed();
        for handle in [self.stdout.1.take(), self.stderr.1.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
        GuestRun {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed,
        }
    }

    /// Ends the VMM with SIGKILL and collects what it printed.
    pub fn kill(mut self) -> GuestRun {
        let _ = self.child.kill();
        self.wait(Duration::from_secs(10))
    }
}
