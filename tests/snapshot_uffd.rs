//! The Uffd memory backend of `PUT /snapshot/load`, each VMM a new process, with the page
//! fault handler resources/uffd-handler (`palisade-uffd-handler`, which speaks Firecracker's
//! protocol): a probe guest that rechecks a pattern over all of its RAM continues in the clone
//! with every page served by the handler; a missing, dead or non-socket `backend_path`, a
//! handler that closes the connection early and a `hash_memory` snapshot are refused with 400
//! and the same VMM then loads with a good handler (whose exit the VMM then logs); a handler
//! that never serves a fault
//! blocks the guest's vCPU but not the API or the VMM thread.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::ApiClient;
use common::{kvm_available, probe_path, ApiVm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: usize = 32;

/// A running `palisade-uffd-handler` and what it printed.
struct Handler {
    child: Child,
    out: Arc<Mutex<String>>,
    socket: PathBuf,
}

impl Handler {
    /// Starts the handler on DIR/NAME serving `mem` in `mode`, and waits until it listens.
    fn start(dir: &Path, name: &str, mem: &Path, mode: &str) -> Self {
        let socket = dir.join(name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-uffd-handler"))
            .arg("--socket")
            .arg(&socket)
            .arg("--mem-file")
            .arg(mem)
            .args(["--mode", mode])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let handler = Self { child, out, socket };
        handler.wait_for("listening on");
        handler
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until the handler printed `text`.
    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "handler never printed {text:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the handler to exit (its VMM closed the connection) and returns its output.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "handler: {status}\n{}", self.output());
                break;
            }
            assert!(Instant::now() < deadline, "handler still running");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The reader thread ends at end-of-file; the summary is the last line.
        self.wait_for("served ");
        self.output()
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files of a saved probe guest.
struct Saved {
    dir: tempfile::TempDir,
    state: PathBuf,
    mem: PathBuf,
    stdout: String,
}

/// Boots the probe with `boot_args`, waits for `marker`, pauses and creates a Full snapshot
/// (and a second one with `hash_memory` at `state-hashed`/`mem-hashed`), then ends the VMM.
fn boot_and_save(boot_args: &str, marker: &str) -> Saved {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = vm.client();
    let r = c.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": MIB}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put(
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": format!("console=ttyS0 {boot_args}")}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.wait_for_output(marker, TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": dir.path().join("state-hashed"),
               "mem_file_path": dir.path().join("mem-hashed"), "hash_memory": true}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let stdout = vm.running.stdout();
    vm.running.kill();
    Saved {
        dir,
        state,
        mem,
        stdout,
    }
}

fn uffd_body(state: &Path, socket: &Path) -> serde_json::Value {
    json!({"snapshot_path": state,
           "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
           "resume_vm": true})
}

/// The last complete line `PREFIX N SUFFIX` of `out` (a line cut by the pause does not count).
fn last_count(out: &str, prefix: &str, suffix: &str) -> u64 {
    out.split_inclusive('\n')
        .rev()
        .filter_map(|l| l.strip_suffix('\n')?.strip_prefix(prefix))
        .find_map(|rest| rest.strip_suffix(suffix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `served N faults (C copied, Z zeroed)` of the handler's summary: (N, C).
fn served(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("uffd-handler: served "))
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    let total = line.split(' ').next().unwrap().parse().unwrap();
    let copied = line
        .split('(')
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    (total, copied)
}

#[test]
fn a_probe_guest_loaded_with_uffd_in_a_new_process_reads_its_whole_pattern_back_from_the_handler() {
    let test = "a_probe_guest_loaded_with_uffd_in_a_new_process_reads_its_whole_pattern_back_from_the_handler";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save(
        "probe.run=pattern probe.seed=31337 probe.recheck=1",
        "probe: pattern recheck 2 ok\n",
    );
    let pass = last_count(&saved.stdout, "probe: pattern recheck ", " ok");
    assert!(pass >= 2, "{}", saved.stdout);
    let handler = Handler::start(saved.dir.path(), "uffd.sock", &saved.mem, "serve");

    let clone = ApiVm::start(&[]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", uffd_body(&saved.state, &handler.socket));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    assert_eq!(c.get("/").json()["state"], "Running");
    handler.wait_for(&format!("received 1 region(s), {} bytes", MIB << 20));
    // Two whole passes over RAM in the clone: every page it reads came from the handler.
    let mut clone = clone;
    clone.running.wait_for_output(
        &format!("probe: pattern recheck {} ok\n", pass + 2),
        TIMEOUT,
    );
    let out = clone.running.stdout();
    assert!(
        !out.contains("recheck 1 ok"),
        "the clone booted again:\n{out}"
    );
    assert!(!out.contains(" fail"), "{out}");
    let log = clone
        .running
        .wait_for_log("Snapshot loaded", Duration::from_secs(10));
    let loaded = log
        .lines()
        .find(|l| l.contains("Snapshot loaded"))
        .unwrap_or_else(|| panic!("no load line:\n{log}"));
    assert!(log.contains("handed to the page fault handler"), "{log}");
    println!("{MIB} MiB probe guest, Uffd: {}", loaded.trim());
    drop(c);
    clone.running.kill();
    // The VMM's end of the connection closed: the handler reports and exits.
    let (total, copied) = served(&handler.finish());
    // At least the pattern's pages (all RAM but the low 1 MiB and the probe image).
    let pattern_pages = ((MIB - 4) << 20) as u64 / 4096;
    assert!(
        total > 0 && copied >= pattern_pages,
        "{total} faults, {copied} pages copied, {pattern_pages} expected"
    );
}

#[test]
fn bad_handler_sockets_an_early_close_and_a_hashed_snapshot_are_refused_then_a_good_load_works() {
    let test =
        "bad_handler_sockets_an_early_close_and_a_hashed_snapshot_are_refused_then_a_good_load_works";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", "probe: tick 2\n");
    let dir = saved.dir.path();
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    let plain = dir.join("plain-file");
    std::fs::write(&plain, b"not a socket").unwrap();
    let dead = dir.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let long = dir.join("x".repeat(120));
    let refuse = |c: &mut ApiClient, body: serde_json::Value, want: &str, what: &str| {
        let r = c.put("/snapshot/load", body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(r.fault().contains(want), "{what}: {}", r.fault());
        assert_eq!(c.get("/").json()["state"], "Not started", "{what}");
    };
    let connect = "Cannot connect to the page fault handler's socket";
    refuse(
        &mut c,
        uffd_body(&saved.state, &dir.join("missing.sock")),
        connect,
        "a missing socket",
    );
    refuse(
        &mut c,
        uffd_body(&saved.state, &plain),
        connect,
        "a regular file",
    );
    refuse(
        &mut c,
        uffd_body(&saved.state, &dead),
        connect,
        "nobody listening",
    );
    refuse(
        &mut c,
        uffd_body(&saved.state, &long),
        connect,
        "a path too long",
    );
    // The VMM's own API socket is no handler: its server reads no descriptor and answers
    // with an HTTP error, or cannot read while it waits on this very load.
    let r = c.put("/snapshot/load", uffd_body(&saved.state, &vm.sock()));
    assert_eq!(r.status, 400, "its own API socket: {}", r.body);
    assert!(r.fault().contains("page fault handler"), "{}", r.fault());
    assert_eq!(c.get("/").json()["state"], "Not started");
    let early = Handler::start(dir, "early.sock", &saved.mem, "close-early");
    refuse(
        &mut c,
        uffd_body(&saved.state, &early.socket),
        "closed the connection before taking the userfaultfd",
        "a handler that closes early",
    );
    early.wait_for("closed the connection");
    let hashed = Handler::start(dir, "hashed.sock", &dir.join("mem-hashed"), "serve");
    refuse(
        &mut c,
        uffd_body(&dir.join("state-hashed"), &hashed.socket),
        "hash_memory",
        "a hash_memory snapshot",
    );
    // Nothing was half-restored: the same VMM loads with a good handler and the guest ticks.
    let good = Handler::start(dir, "good.sock", &saved.mem, "serve");
    let r = c.put("/snapshot/load", uffd_body(&saved.state, &good.socket));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    let stopped_at = last_count(&saved.stdout, "probe: tick ", "");
    let mut vm = vm;
    vm.running
        .wait_for_output(&format!("probe: tick {}\n", stopped_at + 2), TIMEOUT);
    // A handler that goes away is named in the VMM's log (its served pages stay).
    let mut good = good;
    good.child.kill().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !vm.running.stderr().contains("closed its connection") {
        assert!(Instant::now() < deadline, "{}", vm.running.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.get("/").json()["state"], "Running");
    drop(c);
    vm.running.kill();
}

#[test]
fn a_handler_that_never_serves_blocks_the_vcpu_but_the_api_and_vmm_thread_keep_answering() {
    let test =
        "a_handler_that_never_serves_blocks_the_vcpu_but_the_api_and_vmm_thread_keep_answering";
    if !kvm_available(test) {
        return;
    }
    let saved = boot_and_save("probe.run=ticker", "probe: tick 2\n");
    let handler = Handler::start(saved.dir.path(), "stall.sock", &saved.mem, "stall");
    let vm = ApiVm::start(&[]);
    let mut c = vm.client();
    c.set_read_timeout(Duration::from_secs(10));
    let r = c.put("/snapshot/load", uffd_body(&saved.state, &handler.socket));
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    handler.wait_for("stalling");
    // The vCPU waits on its first fault; the API thread and the VMM thread still answer.
    assert_eq!(c.get("/").json()["state"], "Running");
    let r = c.get("/machine-config");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["mem_size_mib"], MIB);
    // A pause kicks the vCPU: where KVM's fault path is interruptible it leaves its wait and
    // parks (204); where the wait outlasts the kick (this host's KVM walks guest page tables
    // with a plain user access) the pause fails with a clear 400 after its 2 s deadline.
    // Either way the VMM answers at once afterwards.
    let r = c.patch("/vm", json!({"state": "Paused"}));
    match r.status {
        204 => {
            assert_eq!(c.get("/").json()["state"], "Paused");
            let r = c.patch("/vm", json!({"state": "Resumed"}));
            assert_eq!(r.status, 204, "{}", r.body);
        }
        _ => {
            assert_eq!(r.status, 400, "{}", r.body);
            assert!(r.fault().contains("did not pause"), "{}", r.fault());
        }
    }
    assert_eq!(c.get("/").json()["state"], "Running");
    let r = c.put("/snapshot/load", uffd_body(&saved.state, &handler.socket));
    assert_eq!(r.status, 400, "a second load: {}", r.body);
    let stopped_at = last_count(&saved.stdout, "probe: tick ", "");
    let out = vm.running.stdout();
    assert!(
        !out.contains(&format!("probe: tick {}\n", stopped_at + 1)),
        "the guest ran without its memory:\n{out}"
    );
    drop(c);
    let run = vm.running.kill();
    assert!(!run.status.success());
}

/// Firecracker's contract for a balloon over Uffd memory: a range the VMM gives back
/// (MADV_DONTNEED) raises UFFD_EVENT_REMOVE, and the handler serves the next fault there with
/// zeros, not the memory file's old page. The probe's `balloon-snap` guest fills 32 MiB from
/// guest-physical 32 MiB before the snapshot; in the Uffd clone it writes the 16 MiB from
/// 48 MiB again and gives them to the balloon. A Full snapshot of the clone then reads every
/// page (the VMM faults them in): the given pages are zeros in it, while the memory file the
/// handler serves still holds the fill there.
#[test]
fn pages_a_uffd_clone_gives_to_the_balloon_read_as_zeros_not_as_the_memory_files() {
    let test = "pages_a_uffd_clone_gives_to_the_balloon_read_as_zeros_not_as_the_memory_files";
    if !kvm_available(test) {
        return;
    }
    const GIVEN: std::ops::Range<usize> = (48 << 20)..(64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = vm.client();
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(),
                   "boot_args": "console=ttyS0 probe.run=balloon-snap"}),
        ),
        (
            "/balloon",
            json!({"amount_mib": 0, "deflate_on_oom": false}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    }
    vm.running
        .wait_for_output("probe: balloon-snap ok filled", TIMEOUT);
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 16})).status, 204);
    vm.running
        .wait_for_output("probe: balloon-snap ok saved-at inflated=4096", TIMEOUT);
    assert_eq!(c.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, vm.running.stderr());
    vm.running.kill();
    let bytes = std::fs::read(&mem).unwrap();
    assert!(
        bytes[GIVEN]
            .chunks_exact(4096)
            .all(|p| p.iter().any(|&b| b != 0)),
        "the memory file holds the fill where the clone will give pages"
    );

    let handler = Handler::start(dir.path(), "uffd.sock", &mem, "serve");
    let mut clone = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = clone.client();
    let r = c.put("/snapshot/load", uffd_body(&state, &handler.socket));
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    assert_eq!(c.patch("/balloon", json!({"amount_mib": 32})).status, 204);
    clone
        .running
        .wait_for_output("probe: balloon-snap ok inflated=4096 deflated=1", TIMEOUT);
    assert_eq!(c.patch("/vm", json!({"state": "Paused"})).status, 204);
    let mem2 = dir.path().join("mem2");
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": dir.path().join("state2"), "mem_file_path": mem2}),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, clone.running.stderr());
    drop(c);
    clone.running.kill();
    let bytes = std::fs::read(&mem2).unwrap();
    let stale = bytes[GIVEN]
        .chunks_exact(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count();
    assert_eq!(
        stale, 0,
        "pages given back read as the memory file's old pages"
    );
    let (total, copied) = served(&handler.finish());
    println!(
        "uffd handler: {total} faults, {copied} copied, {} zeroed",
        total - copied
    );
    // The snapshot's read of each given page was a fault the handler served with zeros.
    assert!(total - copied >= 4096, "{total} faults, {copied} copied");
}
