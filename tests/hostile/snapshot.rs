//! Hostile state files (issue 14): without a key a state file's tag is a plain SHA-256 that
//! anyone who can write the file can compute again, so every value in it is attacker input.
//! One probe guest (2 vCPUs, a drive, the entropy device and a vsock device; the drive and
//! the entropy device active, the guest waiting in `blk-watch`) is saved once without a key.
//! Each case decodes that state through the library (`StateFile::open` + `MachineState`),
//! changes one thing, seals it again with the library's own `StateFile::encode` (so the tag
//! verifies), and loads it into a fresh VMM: it must be refused with 400 within a deadline
//! (or, where the value is one a guest may set itself, load and leave the VMM answering);
//! then the good state file must load into the SAME VMM (nothing was half-restored). Each
//! table starts with a control row, the state sealed again unchanged, which must load: a
//! broken sealer (a tag the loader refuses) would otherwise make every row pass on "bad tag".

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade::rate_limiter::BucketState;
use palisade::snapshot::{MemoryIdentity, StateFile};
use palisade::vmm::machine_state::MachineState;
use serde_json::{json, Value};

use std::net::UdpSocket;

use crate::common::api::{ApiClient, ApiResponse};
use crate::common::netns::{tsc_mhz, TapNetns, GUEST_MAC};
use crate::common::{probe_path, ApiVm};
use crate::host::can_attack;
use crate::table::Table;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long one load may take before it counts as a hang of the API.
const LOAD_DEADLINE: Duration = Duration::from_secs(15);
const MIB: usize = 64;
const SECTOR: usize = 512;

/// The saved guest: its directory (also the VMMs' `--snapshot-dir`), the good pair, and
/// the state as decoded.
pub(super) struct Base {
    pub dir: tempfile::TempDir,
    pub state_path: PathBuf,
    pub mem_path: PathBuf,
    pub state: MachineState,
}

fn boot_and_save() -> Base {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = vm.client();
    let put = |c: &mut ApiClient, path: &str, body: Value| {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    };
    put(
        &mut c,
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": MIB}),
    );
    put(
        &mut c,
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": "console=ttyS0 probe.run=rng,blk-watch,idle"}),
    );
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0x11u8; 8 * SECTOR]).unwrap();
    put(
        &mut c,
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
               "is_read_only": false}),
    );
    put(&mut c, "/entropy", json!({}));
    put(
        &mut c,
        "/vsock",
        json!({"guest_cid": 3, "uds_path": dir.path().join("v.sock")}),
    );
    put(&mut c, "/actions", json!({"action_type": "InstanceStart"}));
    vm.running
        .wait_for_output("probe: blk-watch waiting sectors=8", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state_path, mem_path) = (dir.path().join("state"), dir.path().join("mem"));
    put(
        &mut c,
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state_path, "mem_file_path": mem_path}),
    );
    vm.running.kill();
    let bytes = std::fs::read(&state_path).unwrap();
    let opened = StateFile::open(&bytes, None).unwrap();
    let state: MachineState = opened.state().unwrap();
    Base {
        dir,
        state_path,
        mem_path,
        state,
    }
}

/// `state` sealed as the library seals it (no key), for a memory file of `mem_size` bytes.
fn seal(state: &MachineState, mem_size: u64) -> Vec<u8> {
    StateFile::encode(
        state,
        None,
        &MemoryIdentity {
            size: mem_size,
            sha256: None,
        },
    )
    .unwrap()
}

fn load_body(state: &Path, mem: &Path) -> Value {
    json!({"snapshot_path": state,
           "mem_backend": {"backend_type": "File", "backend_path": mem},
           "resume_vm": true})
}

/// A PUT that gives up after `LOAD_DEADLINE` (None: no answer, the API hung).
fn put_within(sock: &Path, path: &str, body: Value) -> Option<(ApiResponse, Duration)> {
    let mut c = ApiClient::connect(sock);
    c.set_read_timeout(LOAD_DEADLINE);
    let start = Instant::now();
    let body = body.to_string();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.request("PUT", path, Some(&body))
    }));
    done.ok().map(|r| (r, start.elapsed()))
}

/// Whether `GET /` answers 200 within the deadline.
fn get_root(sock: &Path) -> bool {
    let mut c = ApiClient::connect(sock);
    c.set_read_timeout(LOAD_DEADLINE);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.get("/").status == 200))
        .unwrap_or(false)
}

/// What a case is allowed to end in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// The control: 204, and the VMM answers afterwards.
    Loads,
    /// 400, then the good file loads into the same VMM.
    Refused,
    /// A value a guest may set itself: 400, or a load after which the VMM still answers.
    RefusedOrSurvives,
}

/// The control row: `base`'s state, decoded and sealed again without a change.
pub(super) fn control(base: &Base) -> Case {
    case(
        "control: the same state sealed again unchanged",
        Expect::Loads,
        base,
        |_| {},
    )
}

/// One attack: a name, the state's change, and optionally a memory file of its own.
pub(super) struct Case {
    attack: String,
    expect: Expect,
    state: MachineState,
    mem: Option<PathBuf>,
    /// Checked after the attempt: what must still hold on the host (None: fine).
    after: Option<Box<dyn Fn() -> Option<String>>>,
}

pub(super) fn case(
    attack: &str,
    expect: Expect,
    base: &Base,
    change: impl FnOnce(&mut MachineState),
) -> Case {
    let mut state = base.state.clone();
    change(&mut state);
    Case {
        attack: attack.to_string(),
        expect,
        state,
        mem: None,
        after: None,
    }
}

/// Edits the device configurations (JSON inside the state).
pub(super) fn devices(state: &mut MachineState, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&state.device_configs).unwrap();
    edit(&mut v);
    state.device_configs = v.to_string();
}

pub(super) fn machine(state: &mut MachineState, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&state.machine_config).unwrap();
    edit(&mut v);
    state.machine_config = v.to_string();
}

/// A FIFO, a character device (1,5: /dev/zero) and a link to /etc/shadow in `dir`.
fn plant(dir: &Path) {
    let path = |name: &str| std::ffi::CString::new(dir.join(name).to_str().unwrap()).unwrap();
    let (fifo, zero) = (path("fifo"), path("zero"));
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let dev = libc::makedev(1, 5);
    // SAFETY: mknod with a valid NUL-terminated path.
    let made = unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o600, dev) };
    assert_eq!(made, 0);
    std::os::unix::fs::symlink("/etc/shadow", dir.join("link.img")).unwrap();
}

/// A blocked-reader FIFO and a socket of a bystander service, outside the snapshot dir.
struct Outside {
    _dir: tempfile::TempDir,
    fifo: PathBuf,
    socket: PathBuf,
    _listener: std::os::unix::net::UnixListener,
}

fn outside() -> Outside {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let socket = dir.path().join("service.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    Outside {
        _dir: dir,
        fifo,
        socket,
        _listener: listener,
    }
}

fn cases(base: &Base, out: &Outside) -> Vec<Case> {
    use Expect::{Refused, RefusedOrSurvives};
    let mem_size = base.state.mem_size;
    let mut v = vec![control(base)];
    // virtio queues (transport 0: the drive, active, queue 0).
    v.push(case(
        "virtio: descriptor table at the end of guest memory",
        Refused,
        base,
        |s| {
            s.transports[0].queues[0].desc_table = mem_size;
        },
    ));
    v.push(case(
        "virtio: avail ring overlapping the end of guest memory",
        Refused,
        base,
        |s| {
            s.transports[0].queues[0].avail_ring = mem_size - 2;
        },
    ));
    v.push(case(
        "virtio: used ring at u64::MAX-3",
        Refused,
        base,
        |s| {
            s.transports[0].queues[0].used_ring = u64::MAX - 3;
        },
    ));
    v.push(case("virtio: queue size 0", Refused, base, |s| {
        s.transports[0].queues[0].size = 0;
    }));
    v.push(case(
        "virtio: queue size 100 (not a power of two)",
        Refused,
        base,
        |s| {
            s.transports[0].queues[0].size = 100;
        },
    ));
    v.push(case(
        "virtio: queue size 32768 (above the maximum)",
        Refused,
        base,
        |s| {
            s.transports[0].queues[0].size = 32768;
        },
    ));
    v.push(case(
        "virtio: next_avail 0x8000 ahead of the ring",
        RefusedOrSurvives,
        base,
        |s| {
            let q = &mut s.transports[0].queues[0];
            q.next_avail = q.next_avail.wrapping_add(0x8000);
        },
    ));
    v.push(case(
        "virtio: next_used 0x8000 ahead of the ring",
        RefusedOrSurvives,
        base,
        |s| {
            let q = &mut s.transports[1].queues[0];
            q.next_used = q.next_used.wrapping_add(0x8000);
        },
    ));
    v.push(case(
        "virtio: DRIVER_OK with feature bit 60 never offered",
        Refused,
        base,
        |s| {
            s.transports[0].driver_features |= 1 << 60;
        },
    ));
    v.push(case(
        "virtio: status 0xff (off the state machine)",
        Refused,
        base,
        |s| {
            s.transports[0].status = 0xff;
        },
    ));
    v.push(case("virtio: one transport missing", Refused, base, |s| {
        s.transports.pop();
    }));
    v.push(case("virtio: a queue missing", Refused, base, |s| {
        s.transports[1].queues.clear();
    }));
    // vCPUs.
    v.push(case("vcpu: 1 state for vcpu_count 2", Refused, base, |s| {
        s.vcpus.pop();
    }));
    v.push(case(
        "vcpu: 3 states for vcpu_count 2",
        Refused,
        base,
        |s| {
            let extra = s.vcpus[1].clone();
            s.vcpus.push(extra);
        },
    ));
    v.push(case(
        "vcpu: vcpu_count 1 with 2 states",
        Refused,
        base,
        |s| {
            machine(s, |m| m["vcpu_count"] = json!(1));
        },
    ));
    v.push(case("vcpu: vCPU 0's state twice", Refused, base, |s| {
        s.vcpus[1] = s.vcpus[0].clone();
    }));
    v.push(case(
        "vcpu: MSR 0xdeadbeef the host does not list",
        Refused,
        base,
        |s| {
            s.vcpus[0].msrs.push((0xdead_beef, 1));
        },
    ));
    v.push(case("vcpu: 100000 MSR entries", Refused, base, |s| {
        s.vcpus[0].msrs = (0..100_000u32).map(|i| (0x800 + (i % 0x400), 0)).collect();
    }));
    v.push(case(
        "vcpu: IA32_PAT with reserved memory type 2",
        Refused,
        base,
        |s| {
            let msrs = &mut s.vcpus[0].msrs;
            msrs.retain(|m| m.0 != 0x277);
            msrs.push((0x277, 0x0202_0202_0202_0202));
        },
    ));
    v.push(case("vcpu: EFER with reserved bits", Refused, base, |s| {
        s.vcpus[0].sregs.0.efer = u64::MAX;
    }));
    v.push(case("vcpu: LAPIC ID 0xff in vCPU 0", Refused, base, |s| {
        s.vcpus[0].lapic.0.regs[0x23] = -1;
    }));
    v.push(case("vcpu: XSAVE area of 1M words", Refused, base, |s| {
        s.vcpus[0].xsave = vec![0; 1 << 20];
    }));
    v.push(case("vcpu: no CPUID leaves", Refused, base, |s| {
        s.vcpus[0].cpuid.clear();
    }));
    v.push(case(
        "vcpu: RFLAGS with reserved bits",
        Refused,
        base,
        |s| {
            s.vcpus[0].regs.0.rflags = u64::MAX;
        },
    ));
    v.push(case("vm: IOAPIC redirection to vector 0, reserved delivery mode, dest 0xff, unmasked (guest-writable)", RefusedOrSurvives, base, |s| {
        // SAFETY: plain-integer union members; any bits are a valid value.
        unsafe {
            let io = &mut s.vm.ioapic.0.chip.ioapic;
            for e in io.redirtbl.iter_mut() {
                e.bits = (0xff << 56) | (7 << 8);
            }
            io.ioregsel = 0xff;
            io.id = 0xff;
        }
    }));
    v.push(case(
        "vm: IOAPIC at another base address",
        Refused,
        base,
        |s| {
            // Writing a Copy field of a union is safe.
            s.vm.ioapic.0.chip.ioapic.base_address = 0xdead_0000;
        },
    ));
    v.push(case("vm: PIT channel in mode 9", Refused, base, |s| {
        s.vm.pit.0.channels[0].mode = 9;
    }));
    v.push(case("serial: 1 MiB receive FIFO", Refused, base, |s| {
        s.serial.fifo = vec![b'x'; 1 << 20];
    }));
    // Clone state: the generation, the i8042, the rate limiters.
    v.push(case(
        "generation: restore counter at u64::MAX",
        Refused,
        base,
        |s| {
            s.generation.counter = u64::MAX;
        },
    ));
    v.push(case("generation: counter u64::MAX-1 and an all-zero ID (the clone gets counter MAX and a fresh ID)", RefusedOrSurvives, base, |s| {
        s.generation.counter = u64::MAX - 1;
        s.generation.id = [0; 16];
    }));
    v.push(case(
        "i8042: 4096 bytes waiting in its output",
        Refused,
        base,
        |s| {
            s.i8042.output = vec![0xfa; 4096];
        },
    ));
    v.push(case(
        "limiter: a drive bucket with u64::MAX tokens for a limiter never configured",
        Refused,
        base,
        |s| {
            s.limiters.drives[0].limiter.bandwidth = Some(BucketState {
                budget: u64::MAX,
                one_time_burst: u64::MAX,
            });
        },
    ));
    v.push(case(
        "limiter: the saved drive limiters name another drive",
        Refused,
        base,
        |s| {
            s.limiters.drives[0].drive_id = "other".into();
        },
    ));
    // Memory.
    v.push(case(
        "memory: mem_size 4 KiB more than the memory file",
        Refused,
        base,
        |s| {
            s.mem_size += 4096;
        },
    ));
    v.push(case(
        "machine: 1 TiB memory (mem_size and machine config agree)",
        Refused,
        base,
        |s| {
            machine(s, |m| m["mem_size_mib"] = json!(1u64 << 20));
            s.mem_size = 1 << 40;
        },
    ));
    v.push(case("machine: 1000 vCPUs", Refused, base, |s| {
        machine(s, |m| m["vcpu_count"] = json!(1000));
    }));
    v.push(case(
        "machine: 32 vCPUs with 2 states",
        Refused,
        base,
        |s| {
            machine(s, |m| m["vcpu_count"] = json!(32));
        },
    ));
    v.push(case(
        "machine: unknown field in machine_config",
        Refused,
        base,
        |s| {
            machine(s, |m| m["smt_x"] = json!(true));
        },
    ));
    // Host paths.
    v.push(case(
        "paths: drive path_on_host /etc/shadow (read-write)",
        Refused,
        base,
        |s| {
            devices(s, |d| d["drives"][0]["path_on_host"] = json!("/etc/shadow"));
        },
    ));
    v.push(case(
        "paths: drive path_on_host /dev/zero",
        Refused,
        base,
        |s| {
            devices(s, |d| d["drives"][0]["path_on_host"] = json!("/dev/zero"));
        },
    ));
    let zero = base.dir.path().join("zero");
    v.push(case(
        "paths: drive on a character device (/dev/zero's numbers) inside the snapshot dir",
        Refused,
        base,
        |s| {
            devices(s, |d| d["drives"][0]["path_on_host"] = json!(zero));
        },
    ));
    let fifo = base.dir.path().join("fifo");
    v.push(case(
        "paths: read-only drive on a FIFO inside the snapshot dir (open would block)",
        Refused,
        base,
        |s| {
            devices(s, |d| {
                d["drives"][0]["path_on_host"] = json!(fifo);
                d["drives"][0]["is_read_only"] = json!(true);
            });
        },
    ));
    let link = base.dir.path().join("link.img");
    v.push(case(
        "paths: drive on a link inside the snapshot dir to /etc/shadow",
        Refused,
        base,
        |s| {
            devices(s, |d| d["drives"][0]["path_on_host"] = json!(link));
        },
    ));
    let fifo = out.fifo.clone();
    v.push(case(
        "paths: read-only drive on a FIFO outside the snapshot dir",
        Refused,
        base,
        |s| {
            devices(s, |d| {
                d["drives"][0]["path_on_host"] = json!(fifo);
                d["drives"][0]["is_read_only"] = json!(true);
            });
        },
    ));
    let socket = out.socket.clone();
    let mut c = case(
        "paths: vsock uds_path on another service's socket",
        Refused,
        base,
        |s| {
            devices(s, |d| d["vsock"]["uds_path"] = json!(socket));
        },
    );
    let socket = out.socket.clone();
    let inode = std::fs::symlink_metadata(&socket).unwrap().ino();
    c.after = Some(Box::new(move || {
        let same = std::fs::symlink_metadata(&socket)
            .map(|m| m.file_type().is_socket() && m.ino() == inode)
            .unwrap_or(false);
        (!same).then(|| "the service's socket was replaced".to_string())
    }));
    v.push(c);
    let mut c = case(
        "paths: vsock uds_path /run/../etc/palisade-hostile-vsock",
        Refused,
        base,
        |s| {
            devices(s, |d| {
                d["vsock"]["uds_path"] = json!("/run/../etc/palisade-hostile-vsock")
            });
        },
    );
    c.after = Some(Box::new(|| {
        let planted = Path::new("/etc/palisade-hostile-vsock");
        let there = std::fs::symlink_metadata(planted).is_ok();
        let _ = std::fs::remove_file(planted);
        there.then(|| "a socket was created in /etc".to_string())
    }));
    v.push(c);
    v.push(case("paths: a second root drive", Refused, base, |s| {
        devices(s, |d| {
            let mut second = d["drives"][0].clone();
            second["drive_id"] = json!("other");
            d["drives"][0]["is_root_device"] = json!(true);
            second["is_root_device"] = json!(true);
            d["drives"].as_array_mut().unwrap().push(second);
        });
    }));
    v.push(case(
        "paths: unknown field in a drive",
        Refused,
        base,
        |s| {
            devices(s, |d| d["drives"][0]["socket"] = json!("/x"));
        },
    ));
    v
}

/// A memory file of `size` bytes (sparse) in `dir`.
fn sparse_mem(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// The VMM's exit status once it has exited, polled until `limit`.
fn exit_within(vm: &mut ApiVm, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match vm.running.child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn alive(vm: &mut ApiVm) -> bool {
    vm.running.child.try_wait().ok().flatten().is_none()
}

#[test]
fn hostile_state_files_sealed_again_without_a_key_are_refused_and_the_vmm_then_loads_the_good_one()
{
    let test = "hostile_state_files_sealed_again_without_a_key_are_refused_and_the_vmm_then_loads_the_good_one";
    if !can_attack(test) {
        return;
    }
    let base = boot_and_save();
    let out = outside();
    plant(base.dir.path());
    let dir = base.dir.path();
    let mem_size = base.state.mem_size;
    let mut all = cases(&base, &out);
    // A memory file that agrees with a 1 TiB state: sparse, never touched.
    let tib = sparse_mem(dir, "mem-1tib", 1 << 40);
    for c in all.iter_mut() {
        if c.state.mem_size == 1 << 40 {
            c.mem = Some(tib.clone());
        }
    }
    // A consistent smaller machine (32 MiB config, state and file) whose rings lie above.
    // The saved memory, cut to its first half.
    let half = dir.join("mem-half");
    std::fs::copy(&base.mem_path, &half).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&half)
        .unwrap()
        .set_len(mem_size / 2)
        .unwrap();
    let mut shrunk = case(
        "memory: config, state and file all 32 MiB (rings above 32 MiB?)",
        Expect::RefusedOrSurvives,
        &base,
        |s| {
            machine(s, |m| m["mem_size_mib"] = json!(MIB / 2));
            s.mem_size /= 2;
        },
    );
    shrunk.mem = Some(half);
    all.push(shrunk);

    let snapshot_dir = dir.to_string_lossy().into_owned();
    let mut table = Table::default();
    run_cases(&mut table, &base, all, &|| {
        ApiVm::start(&["--snapshot-dir", &snapshot_dir])
    });
    table.finish();
}

/// Loads each case into a fresh VMM from `start`, then (after a refusal) the good pair into
/// the same VMM; one row per case.
pub(super) fn run_cases(
    table: &mut Table,
    base: &Base,
    cases: Vec<Case>,
    start: &dyn Fn() -> ApiVm,
) {
    let dir = base.dir.path();
    for (i, c) in cases.into_iter().enumerate() {
        let mem = c.mem.clone().unwrap_or_else(|| base.mem_path.clone());
        let size = std::fs::metadata(&mem).unwrap().len();
        let bad = dir.join(format!("bad-{i}.state"));
        StateFile::write(&bad, &seal(&c.state, size)).unwrap();
        let mut vm = start();
        let sock = vm.sock();
        let seen = put_within(&sock, "/snapshot/load", load_body(&bad, &mem));
        let (observed, held) = match &seen {
            None => (
                format!("no answer within {LOAD_DEADLINE:?} (API hung)"),
                false,
            ),
            Some((r, took)) => {
                let ms = took.as_millis();
                match (r.status, c.expect) {
                    (400, Expect::Loads) => (format!("400 in {ms} ms: {}", r.fault()), false),
                    (400, _) => (format!("400 in {ms} ms: {}", r.fault()), true),
                    (204, Expect::Loads) => {
                        let answers = get_root(&sock) && alive(&mut vm);
                        (format!("204 in {ms} ms; answers GET / {answers}"), answers)
                    }
                    (204, Expect::RefusedOrSurvives) => {
                        let answers = get_root(&sock) && alive(&mut vm);
                        if answers {
                            (
                                format!("204 in {ms} ms; the VMM answers GET / afterwards"),
                                true,
                            )
                        } else {
                            // The guest may end its own VM (a triple fault on a state that
                            // makes no sense to it): a clean exit, never a host panic.
                            let status = exit_within(&mut vm, Duration::from_secs(10));
                            let stderr = vm.running.stderr();
                            let clean = status.and_then(|s| s.code()) == Some(0)
                                && !stderr.contains("panicked");
                            let last = stderr.lines().last().unwrap_or("").to_string();
                            (
                                format!("204 in {ms} ms; the VMM then exited ({status:?}): {last}"),
                                clean,
                            )
                        }
                    }
                    (s, _) => (format!("{s} in {ms} ms: {}", r.body), false),
                }
            }
        };
        let host_ok = c.after.as_ref().and_then(|f| f());
        let refused = seen.as_ref().is_some_and(|(r, _)| r.status == 400);
        // After a refusal the same VMM loads the good pair and runs it.
        let good = if refused && alive(&mut vm) {
            match put_within(
                &sock,
                "/snapshot/load",
                load_body(&base.state_path, &base.mem_path),
            ) {
                Some((r, _)) if r.status == 204 => "good load 204".to_string(),
                Some((r, _)) => format!("good load {}: {}", r.status, r.body),
                None => "good load: no answer".to_string(),
            }
        } else if refused {
            "VMM died".to_string()
        } else {
            String::new()
        };
        let good_ok = !refused || good == "good load 204";
        let expected = match c.expect {
            Expect::Loads => "204 (else every row could pass on a bad tag), the VMM answers",
            Expect::Refused => "400, then the good file loads into the same VMM",
            Expect::RefusedOrSurvives => {
                "400 (then the good load works), or loads and the VMM keeps answering"
            }
        };
        let mut observed = format!("{observed}; {good}");
        if let Some(why) = &host_ok {
            observed.push_str(&format!("; {why}"));
        }
        table.record(
            &format!("snapshot: {}", c.attack),
            expected,
            &observed,
            held && good_ok && host_ok.is_none(),
        );
        // Ends the VMM (a hung one too).
        let _ = vm.running.kill();
    }
}

/// The probe on `ns`'s tap0 behind a firewall, its datagram to 10.0.0.1:7000 tracked as a
/// flow, paused and saved without a key.
fn boot_net_and_save(ns: &TapNetns) -> Base {
    let dir = tempfile::tempdir().unwrap();
    let peer = ns
        .run(|| UdpSocket::bind(("10.0.0.1", 7000)).unwrap())
        .join()
        .unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start_in_netns(
        tempfile::tempdir().unwrap(),
        Some(&ns.name),
        &["--snapshot-dir", &snapshot_dir],
    );
    let mut c = vm.client();
    let boot_args = format!(
        "console=ttyS0 probe.run=net-tx,idle probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:7000 \
         probe.port=40000 probe.count=2 probe.size=32 probe.tsc_mhz={}",
        tsc_mhz()
    );
    for (path, body) in [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": MIB}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": probe_path(), "boot_args": boot_args}),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC,
                   "firewall": {"allowed_ips": ["10.0.0.2/32"], "conntrack_max": 64,
                     "egress": [{"action": "allow", "proto": "udp", "ports": "7000",
                                 "cidr": "10.0.0.1/32"}],
                     "default_egress": "deny", "default_ingress": "deny"}}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ] {
        let r = c.put(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    }
    let mut buf = [0u8; 128];
    peer.recv_from(&mut buf).unwrap();
    vm.running.wait_for_output("probe: idle ok", TIMEOUT);
    let r = c.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state_path, mem_path) = (dir.path().join("state"), dir.path().join("mem"));
    let r = c.put(
        "/snapshot/create",
        json!({"snapshot_path": state_path, "mem_file_path": mem_path}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.running.kill();
    let bytes = std::fs::read(&state_path).unwrap();
    let state: MachineState = StateFile::open(&bytes, None).unwrap().state().unwrap();
    Base {
        dir,
        state_path,
        mem_path,
        state,
    }
}

/// Edits interface 0's configuration (JSON inside the state).
fn net_config(state: &mut MachineState, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&state.nets[0].config).unwrap();
    edit(&mut v);
    state.nets[0].config = v.to_string();
}

#[test]
fn hostile_network_state_in_an_unkeyed_state_file_is_refused_and_the_vmm_then_loads_the_good_one() {
    let test =
        "hostile_network_state_in_an_unkeyed_state_file_is_refused_and_the_vmm_then_loads_the_good_one";
    if !can_attack(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let base = boot_net_and_save(&ns);
    use Expect::Refused;
    let flows = base.state.nets[0].firewall.as_ref().unwrap().flows.len();
    let mut cases = vec![
        control(&base),
        case(
            "net: conntrack table of 100000 flows (cap 64)",
            Refused,
            &base,
            |s| {
                let fw = s.nets[0].firewall.as_mut().unwrap();
                let one = fw.flows[0].clone();
                fw.flows = vec![one; 100_000];
            },
        ),
        case(
            "net: conntrack_max raised to 4 Mi in the saved config with 100000 flows",
            Refused,
            &base,
            |s| {
                net_config(s, |c| c["firewall"]["conntrack_max"] = json!(4 << 20));
                let fw = s.nets[0].firewall.as_mut().unwrap();
                let one = fw.flows[0].clone();
                fw.flows = vec![one; 100_000];
            },
        ),
        case(
            "net: the firewall state of another interface id",
            Refused,
            &base,
            |s| {
                s.nets[0].firewall.as_mut().unwrap().iface_id = "eth9".into();
            },
        ),
        case(
            "net: 1000 egress rule hit counters for 1 rule",
            Refused,
            &base,
            |s| {
                s.nets[0].firewall.as_mut().unwrap().egress_rule_hits = vec![1; 1000];
            },
        ),
        case(
            "net: the interface dropped from the state (its transport kept)",
            Refused,
            &base,
            |s| {
                s.nets.clear();
            },
        ),
    ];
    // MMDS (issue 15): the state records `mmds-config`, checked at load as PUT /mmds/config
    // checks it against the state's own interfaces, before any tap opens.
    let mmds = |attack: &str, expect: Expect, config: Value| {
        case(attack, expect, &base, move |s| {
            devices(s, |d| d["mmds"] = config);
        })
    };
    cases.extend([
        mmds(
            "mmds: config naming eth9, which the state does not have",
            Refused,
            json!({"network_interfaces": ["eth0", "eth9"]}),
        ),
        mmds(
            "mmds: ipv4_address 10.0.0.1 (not link-local: the guest's gateway subnet)",
            Refused,
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
        ),
        mmds(
            "mmds: ipv4_address 169.254.0.1 (the reserved first /24)",
            Refused,
            json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.1"}),
        ),
        mmds(
            "mmds: no interface",
            Refused,
            json!({"network_interfaces": []}),
        ),
        mmds(
            "mmds: a token key field planted in the config",
            Refused,
            json!({"network_interfaces": ["eth0"], "token_key": "00112233445566778899aabbccddeeff"}),
        ),
        mmds(
            "mmds: version V3",
            Refused,
            json!({"network_interfaces": ["eth0"], "version": "V3"}),
        ),
        mmds(
            "mmds: eth0 named 1,000,000 times (kept once: one responder)",
            Expect::RefusedOrSurvives,
            json!({"network_interfaces": vec!["eth0"; 1_000_000]}),
        ),
        mmds(
            "mmds: hop_limit 0 (every answer undeliverable)",
            Refused,
            json!({"network_interfaces": ["eth0"], "hop_limit": 0}),
        ),
        mmds(
            "mmds: hop_limit 2^64-1",
            Refused,
            json!({"network_interfaces": ["eth0"], "hop_limit": u64::MAX}),
        ),
        mmds(
            "mmds: a bandwidth bucket in rate_limiter (it counts requests only)",
            Refused,
            json!({"network_interfaces": ["eth0"],
                   "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}),
        ),
        mmds(
            "mmds: V1 enabled on eth0 by an unkeyed file (trusted as written, as its firewall is)",
            Expect::RefusedOrSurvives,
            json!({"network_interfaces": ["eth0"], "version": "V1"}),
        ),
    ]);
    let mut c = case(
        "net: flow_log /etc/palisade-hostile-flows.jsonl",
        Refused,
        &base,
        |s| {
            net_config(s, |c| {
                c["firewall"]["flow_log"] = json!("/etc/palisade-hostile-flows.jsonl")
            });
        },
    );
    c.after = Some(Box::new(|| {
        let planted = Path::new("/etc/palisade-hostile-flows.jsonl");
        let there = planted.exists();
        let _ = std::fs::remove_file(planted);
        there.then(|| "a flow log was created in /etc".to_string())
    }));
    cases.push(c);
    let snapshot_dir = base.dir.path().to_string_lossy().into_owned();
    let mut table = Table::default();
    println!("saved {flows} tracked flow(s)");
    run_cases(&mut table, &base, cases, &|| {
        ApiVm::start_in_netns(
            tempfile::tempdir().unwrap(),
            Some(&ns.name),
            &["--snapshot-dir", &snapshot_dir],
        )
    });
    table.finish();
}
