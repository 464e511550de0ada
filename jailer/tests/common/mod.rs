//! Fixtures for the jailer's integration tests: a private chroot base and parent cgroup per
//! test, staging of a binary's shared libraries into a jail, runs with a timeout.
#![allow(dead_code, clippy::unwrap_used)]

pub mod api;
pub mod probe;
#[path = "../../../tests/common/skip.rs"]
pub mod skip;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn jailer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade-jailer")
}

pub fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jail-probe"))
}

/// True when this test can run: root and a usable /dev/kvm. Otherwise prints one SKIPPED line.
pub fn can_jail(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip(test, "the jailer needs root");
        return false;
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_err() {
        skip::skip(test, "/dev/kvm is not usable here");
        return false;
    }
    true
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `prefix-<pid>-<n>`: unique within this machine for the life of the test process.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A chroot base directory, a parent cgroup and a uid of one test; all removed on drop.
pub struct Sandbox {
    pub base: PathBuf,
    pub parent_cgroup: String,
    pub uid: u32,
}

impl Sandbox {
    pub fn new(name: &str) -> Self {
        let tag = unique(name);
        let base = std::env::temp_dir().join(format!("palisade-jailer-test-{tag}"));
        std::fs::create_dir_all(&base).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Sandbox {
            base,
            parent_cgroup: format!("palisade-jailer-test-{tag}"),
            uid: 40_000 + (std::process::id() % 1000) * 20 + n % 20,
        }
    }

    /// `<base>/<exec-name>/<id>/root`.
    pub fn root(&self, exec: &Path, id: &str) -> PathBuf {
        self.base
            .join(exec.file_name().unwrap())
            .join(id)
            .join("root")
    }

    /// The jailer with the flags every test uses, for `exec` under `id`.
    pub fn jailer(&self, id: &str, exec: &Path) -> Command {
        let mut cmd = Command::new(jailer_bin());
        cmd.arg("--id").arg(id);
        cmd.arg("--exec-file").arg(exec);
        cmd.args([
            "--uid",
            &self.uid.to_string(),
            "--gid",
            &self.uid.to_string(),
        ]);
        cmd.arg("--chroot-base-dir").arg(&self.base);
        cmd.args(["--parent-cgroup", &self.parent_cgroup]);
        cmd
    }

    /// Copies the shared libraries `exec` needs (as ldd resolves them) to the same paths in
    /// its jail, as a caller stages a kernel: the jailer copies only the exec file itself.
    pub fn stage_libraries(&self, exec: &Path, id: &str) -> PathBuf {
        let root = self.root(exec, id);
        let out = Command::new("ldd").arg(exec).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for lib in text.split_whitespace().filter(|w| w.starts_with('/')) {
            let dst = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        root
    }

    /// Every cgroup directory named after this sandbox's parent cgroup, in any hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .map(|m| m.join(&self.parent_cgroup))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON lines the probe printed.
    pub fn probe_lines(&self) -> Vec<serde_json::Value> {
        parse_lines(&self.stdout)
    }

    pub fn assert_success(&self) {
        assert!(self.status.success(), "{self:#?}");
    }
}

/// Exit status 1 and exactly one stderr line that starts with `palisade-jailer: <step>:` and
/// contains `reason`.
pub fn assert_refused(run: &Run, step: &str, reason: &str) {
    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains("Landlock ABI"))
        .collect();
    assert_eq!(lines.len(), 1, "{run:#?}");
    let prefix = format!("palisade-jailer: {step}: ");
    assert!(
        lines[0].starts_with(&prefix),
        "expected {prefix:?}: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(reason),
        "expected {reason:?}: {}",
        lines[0]
    );
}

pub fn parse_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `cmd` (stdin /dev/null) to its end; kills it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Run {
    cmd.stdin(Stdio::null());
    finish(spawn(cmd), timeout)
}

pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Waits for `child` (spawned with piped stdout and stderr) and collects its output.
pub fn finish(mut child: Child, timeout: Duration) -> Run {
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let s = child.wait().unwrap();
            panic!("timed out after {timeout:?} ({s}); stderr so far unavailable");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits until `pid` no longer exists.
pub fn wait_gone(pid: i32, timeout: Duration) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < timeout, "pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace's root directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `palisade` VMM binary: `$PALISADE_VMM`, else this workspace's, built (or refreshed)
/// first: `cargo test --workspace` has built it already, `cargo test -p palisade-jailer` may
/// not have.
pub fn vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_VMM") {
        return PathBuf::from(p);
    }
    // Test binaries run from <target>/<profile>/deps; the VMM lands in <target>/<profile>.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "-p", "palisade", "--bin", "palisade"]);
    if profile_dir.file_name() == Some("release".as_ref()) {
        cargo.arg("--release");
    }
    let status = cargo.current_dir(workspace_dir()).status().unwrap();
    assert!(status.success(), "cargo build -p palisade failed: {status}");
    profile_dir.join("palisade")
}

/// The Uffd page fault handler `palisade-uffd-handler` (resources/uffd-handler), built (or
/// refreshed) first, as `vmm_bin` builds the VMM.
pub fn uffd_handler_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args([
        "build",
        "--quiet",
        "-p",
        "palisade",
        "--bin",
        "palisade-uffd-handler",
    ]);
    if profile_dir.file_name() == Some("release".as_ref()) {
        cargo.arg("--release");
    }
    let status = cargo.current_dir(workspace_dir()).status().unwrap();
    assert!(
        status.success(),
        "cargo build of the handler failed: {status}"
    );
    profile_dir.join("palisade-uffd-handler")
}

/// The probe guest ELF: `$PALISADE_PROBE`, else built by resources/probe/build.sh.
pub fn probe_guest() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_PROBE") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(workspace_dir().join("resources/probe/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "resources/probe/build.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().unwrap().trim())
}
