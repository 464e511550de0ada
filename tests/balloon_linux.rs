//! virtio-balloon driven by a real driver: Linux's virtio_balloon in the Linux test guest
//! (the probe's `balloon` scenarios, tests/balloon.rs, drive the same device with our own
//! driver and its hostile cases). The guest first fills its memory through the page cache
//! (reading a drive larger than its RAM), so that every page it gives back is one the host
//! really holds; then:
//! - inflating by 64 MiB takes that much from the guest (its MemTotal, deflate_on_oom off)
//!   and lowers the VMM's RSS by about as much; the statistics Linux reports every second are
//!   answered by `GET /balloon/statistics`; deflating gives the guest its memory back;
//! - with `free_page_reporting`, memory the guest frees (its page cache, dropped) leaves the
//!   VMM's RSS without any inflation.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::agent::{sh, wait_for_agent};
use common::linux::boot_source;
use common::rss_kib;
use common::{kvm_available, metric_totals, ApiVm};

/// Booting Linux on a loaded host without VMX/SVM, and the guest's emulated kernel work
/// (filling 128 MiB of page cache, 16,384 balloon pages): generous.
const TIMEOUT: Duration = Duration::from_secs(600);
const GUEST_MIB: u64 = 128;
/// The drive the guest reads to fill its memory: larger than its RAM.
const FILL_MIB: u64 = 144;

/// A Linux guest with a balloon (`balloon` is the device's config), vsock for the agent and
/// a sparse drive of FILL_MIB (/dev/vda), booted and answering.
struct BalloonGuest {
    vm: ApiVm,
    uds: std::path::PathBuf,
}

impl BalloonGuest {
    fn boot(balloon: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.json");
        let vm = ApiVm::start_in(dir, &["--metrics-path", metrics.to_str().unwrap()]);
        let fill = vm.dir.path().join("fill.img");
        std::fs::File::create(&fill)
            .unwrap()
            .set_len(FILL_MIB << 20)
            .unwrap();
        let uds = vm.dir.path().join("v.sock");
        let mut c = vm.client();
        for (path, body) in [
            (
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": GUEST_MIB}),
            ),
            ("/boot-source", boot_source("")),
            (
                "/drives/fill",
                json!({"drive_id": "fill", "path_on_host": fill, "is_root_device": false,
                       "is_read_only": true}),
            ),
            ("/vsock", json!({"guest_cid": 3, "uds_path": uds})),
            ("/balloon", balloon),
        ] {
            let r = c.put(path, body);
            assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
        }
        let r = c.put("/actions", json!({"action_type": "InstanceStart"}));
        assert_eq!(r.status, 204, "{}", r.body);
        wait_for_agent(&uds, TIMEOUT);
        Self { vm, uds }
    }

    fn sh(&self, script: &str) -> String {
        sh(&self.uds, script)
    }

    fn pid(&self) -> u32 {
        self.vm.running.child.id()
    }

    /// MemTotal in the guest's /proc/meminfo, in KiB.
    fn mem_total_kib(&self) -> u64 {
        let out = self.sh("busybox grep MemTotal: /proc/meminfo");
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Reads the whole fill drive through the page cache (every free page of the guest is
    /// used, so every page it frees later is one the host holds); returns how long it took.
    fn fill(&self) -> Duration {
        let start = Instant::now();
        self.sh("busybox dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null");
        start.elapsed()
    }

    /// The balloon's metrics, flushed now and summed over every line written.
    fn balloon_metrics(&self) -> std::collections::BTreeMap<String, u64> {
        let r = self
            .vm
            .client()
            .put("/actions", json!({"action_type": "FlushMetrics"}));
        assert_eq!(r.status, 204, "{}", r.body);
        metric_totals(self.vm.dir.path(), "balloon")
    }

    /// The balloon's metrics and the VMM's output, for a failure message.
    fn diagnostics(&self) -> String {
        format!(
            "--- balloon metrics: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.balloon_metrics(),
            self.vm.running.stdout(),
            self.vm.running.stderr()
        )
    }
}

/// Polls `f` until it returns `Some`, for at most `timeout`; panics with `what` after.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn linux_inflates_and_deflates_the_balloon_its_pages_leave_the_vmms_rss_and_its_statistics_are_answered(
) {
    let test = "linux_inflates_and_deflates_the_balloon_its_pages_leave_the_vmms_rss_and_its_statistics_are_answered";
    if !kvm_available(test) {
        return;
    }
    let guest = BalloonGuest::boot(
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}),
    );
    let mut api = guest.vm.client();
    let total_before = guest.mem_total_kib();
    let took = guest.fill();
    let filled = rss_kib(guest.pid());
    println!("guest MemTotal {total_before} KiB; filled in {took:?}; VMM VmRSS {filled} KiB");
    assert!(
        filled > (GUEST_MIB - 16) * 1024,
        "the fill left VmRSS at {filled} KiB"
    );

    // Inflate by 64 MiB: the guest's driver takes the pages from its allocator (MemTotal
    // drops by exactly that much) and the VMM releases them.
    let r = api.patch("/balloon", json!({"amount_mib": 64}));
    assert_eq!(r.status, 204, "{}", r.body);
    let inflated = wait_for("the guest's MemTotal to drop by 64 MiB", TIMEOUT, || {
        let now = guest.mem_total_kib();
        (total_before - now >= 64 * 1024).then_some(now)
    });
    assert_eq!(total_before - inflated, 64 * 1024);
    let after = wait_for("VmRSS to drop by 56 MiB or more", TIMEOUT, || {
        let now = rss_kib(guest.pid());
        (filled.saturating_sub(now) >= 56 * 1024).then_some(now)
    });
    println!(
        "inflated 64 MiB: VmRSS {filled} -> {after} KiB ({} MiB less)",
        (filled - after) / 1024
    );
    let r = api.get("/balloon");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["amount_mib"], 64, "{}", r.body);

    // Linux's statistics, polled every second: its total_memory is the guest's MemTotal.
    let stats = wait_for("statistics with the inflated total", TIMEOUT, || {
        let r = api.get("/balloon/statistics");
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (v["total_memory"].as_u64() == Some(inflated * 1024)).then_some(v)
    });
    println!("statistics: {stats}");
    assert_eq!(stats["target_pages"], 64 * 256, "{stats}");
    assert_eq!(stats["actual_pages"], 64 * 256, "{stats}");
    // (The guest's kernel has no VM event counters: no fault or swap figures.)
    for key in ["free_memory", "available_memory", "disk_caches"] {
        assert!(stats[key].as_u64().is_some(), "{key} missing: {stats}");
    }
    assert!(
        stats["free_memory"].as_u64().unwrap() < inflated * 1024,
        "{stats}"
    );

    // Deflate: the guest gets its memory back and can use it.
    let r = api.patch("/balloon", json!({"amount_mib": 0}));
    assert_eq!(r.status, 204, "{}", r.body);
    wait_for("the guest's MemTotal back", TIMEOUT, || {
        (guest.mem_total_kib() == total_before).then_some(())
    });
    guest.fill();
    let refilled = rss_kib(guest.pid());
    println!("deflated: VmRSS {refilled} KiB after the guest read its drive again");
    assert!(
        refilled > after + 32 * 1024,
        "VmRSS {refilled} KiB: the deflated pages were not used again\n{}",
        guest.diagnostics()
    );
}

#[test]
fn memory_linux_frees_is_reported_and_leaves_the_vmms_rss() {
    let test = "memory_linux_frees_is_reported_and_leaves_the_vmms_rss";
    if !kvm_available(test) {
        return;
    }
    let guest = BalloonGuest::boot(
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true}),
    );
    // Linux reports free blocks of `pageblock_order` unless told otherwise: 4 MiB in this
    // kernel (no hugetlb), and its watermark wants 32 such blocks free beyond the low mark,
    // more than a 128 MiB guest ever has. 2 MiB blocks (what a kernel with hugetlb uses on
    // x86) need 64 MiB free: set through the parameter Linux keeps for this.
    guest.sh("echo 9 >/sys/module/page_reporting/parameters/page_reporting_order");
    println!(
        "balloon features the guest took: {}",
        guest.sh("busybox cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    );
    // The same fill as above, which leaves a guest without reporting holding its whole RAM
    // in the host (over GUEST_MIB - 16 MiB of VmRSS): here the page cache the fill evicts,
    // then all of it (dropped), is reported 2 s after it is freed and released.
    guest.fill();
    let filled = rss_kib(guest.pid());
    guest.sh("echo 3 >/proc/sys/vm/drop_caches");
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let now = rss_kib(guest.pid());
        if now <= (GUEST_MIB - 64) * 1024 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "VmRSS still {now} KiB (after the fill: {filled})\n{}",
            guest.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let m = guest.balloon_metrics();
    println!("reported: VmRSS {filled} KiB after the fill, {after} KiB after the drop; {m:?}");
    assert!(m["free_page_report_count"] > 0, "{m:?}");
    assert!(m["free_page_report_freed"] > 0, "{m:?}");
    assert_eq!(m["free_page_report_fails"], 0, "{m:?}");
    assert_eq!(m["inflated_pages"], 0, "{m:?}");
    let r = guest.vm.client().get("/balloon");
    assert_eq!(r.json()["amount_mib"], 0, "{}", r.body);
}
