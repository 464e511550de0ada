//! The hostile suite's balloon group: the probe's `balloon-flood` keeps the inflate ring full
//! of 64 KiB requests (16,384 page numbers each, none of them guest RAM) for a few seconds,
//! while the host watches the API's latency and the VMM's RSS. Each request costs the VMM at
//! most 1,024 page numbers and each kick a few thousand; every page number is refused and
//! counted, none is madvised, the device never needs a reset. (The single bad requests:
//! outside RAM, in the MMIO gap, duplicates, past the target, odd lengths, device-writable
//! buffers, deflating what was never inflated, are tests/balloon.rs and the device's unit
//! tests.) The probe's `balloon-hint` drives a free page hinting run as a hostile driver would:
//! hints before any run and after the run ended (dropped), hints in the MMIO gap, past RAM,
//! unaligned, and a device-readable buffer that is not a command id (refused and counted);
//! only the 16 MiB hinted inside the run leave the VMM.

use serde_json::json;

use super::host::ApiWatch;
use super::{
    api_probe, can_attack, field, flush_metrics, latency_row, metric_totals, spawn_with_api, Table,
    RSS_GROWTH_KIB, TIMEOUT,
};
use crate::common::rss_kib;

/// Page numbers in one flood request.
const PFNS_PER_REQUEST: u64 = 16384;

#[test]
fn balloon_flood_of_huge_inflate_requests_is_refused_counted_and_bounded() {
    let test = "balloon_flood_of_huge_inflate_requests_is_refused_counted_and_bounded";
    if !can_attack(test) {
        return;
    }
    let mut table = Table::default();
    let mut vm = api_probe("balloon-flood,idle", "probe.secs=4");
    vm.config["balloon"] = json!({"amount_mib": 16, "deflate_on_oom": false});
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: balloon-flood flood-start", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let watch = ApiWatch::start(vm.dir.path().join("api.sock"));
    running.wait_for_output("probe: balloon-flood flood-done", TIMEOUT);
    let during = watch.stop();
    let rss_after = rss_kib(pid);
    running.wait_for_output("probe: idle ok", TIMEOUT);
    let flushed = flush_metrics(&vm);
    let run = running.kill();

    let detail = run
        .probe_result("balloon-flood")
        .unwrap_or("no result")
        .to_string();
    let answered = if detail.starts_with("ok ") {
        field(&detail, "answered")
    } else {
        0
    };
    table.record(
        "balloon-flood: 64 KiB inflate requests of 16,384 page numbers past RAM, ring kept full",
        "every request answered, the device still serving",
        &format!("{detail}; FlushMetrics -> {flushed}"),
        answered > 0 && flushed == 204,
    );
    latency_row(
        &mut table,
        "balloon-flood: API GET / of the flooded VMM",
        during,
    );
    table.record(
        "balloon-flood: VMM VmRSS",
        "grows < 64 MiB and stays under the guest's 64 MiB plus the VMM's own",
        &format!("before {rss_before} KiB, after {rss_after} KiB"),
        rss_after < rss_before + RSS_GROWTH_KIB && rss_after < 2 * 64 * 1024,
    );
    let m = metric_totals(vm.dir.path(), "balloon");
    let counted = m.get("refused_pfns") == Some(&(answered * PFNS_PER_REQUEST))
        && m.get("inflated_pages") == Some(&0)
        && m.get("madvise_fails") == Some(&0)
        && m.get("needs_reset_count") == Some(&0);
    table.record(
        "balloon-flood: metrics balloon",
        "refused_pfns = 16,384 per request, nothing inflated or madvised, no reset",
        &format!(
            "refused_pfns={:?} inflated_pages={:?} madvise_fails={:?} needs_reset={:?} (answered {answered})",
            m.get("refused_pfns"),
            m.get("inflated_pages"),
            m.get("madvise_fails"),
            m.get("needs_reset_count"),
        ),
        counted,
    );
    table.finish();
}

#[test]
fn hostile_free_page_hints_are_dropped_or_refused_and_only_the_runs_hints_are_given_back() {
    let test =
        "hostile_free_page_hints_are_dropped_or_refused_and_only_the_runs_hints_are_given_back";
    if !can_attack(test) {
        return;
    }
    let mut table = Table::default();
    let mut vm = api_probe("balloon-hint", "");
    vm.config["machine-config"]["mem_size_mib"] = json!(128);
    vm.config["balloon"] =
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true});
    let mut running = spawn_with_api(&vm);
    running.wait_for_output("probe: balloon-hint ok filled", TIMEOUT);
    let pid = running.child.id();
    let rss_before = rss_kib(pid);
    let sock = vm.dir.path().join("api.sock");
    let mut api = crate::common::api::ApiClient::connect(&sock);
    let started = api.request("PATCH", "/balloon/hinting/start", None).status;
    running.wait_for_output("probe: balloon-hint ok hinted=", TIMEOUT);
    let rss_after = rss_kib(pid);
    let status = api.get("/balloon/hinting/status").body;
    let flushed = flush_metrics(&vm);
    let run = running.kill();
    let line = "probe: balloon-hint ok hinted=16777216 done=1";
    let done = run.stdout.contains(line);
    table.record(
        "balloon-hint: a run answered, STOP acknowledged",
        "start 204, the guest sees DONE after its STOP",
        &format!("start {started}; guest printed `{line}`: {done}; status {status}"),
        started == 204 && done,
    );
    let m = metric_totals(vm.dir.path(), "balloon");
    let get = |k: &str| m.get(k).copied().unwrap_or(u64::MAX);
    table.record(
        "balloon-hint: hints before any run and after the run ended (2 MiB each)",
        "dropped: only the run's 8 hints (16 MiB) are given back",
        &format!(
            "free_page_hint_count={} free_page_hint_freed={} (FlushMetrics {flushed})",
            get("free_page_hint_count"),
            get("free_page_hint_freed")
        ),
        get("free_page_hint_count") == 8 && get("free_page_hint_freed") == 16 << 20,
    );
    table.record(
        "balloon-hint: hints in the MMIO gap, past RAM, unaligned, a readable 8-byte buffer",
        "each refused and counted, nothing madvised outside RAM, no reset",
        &format!(
            "free_page_hint_fails={} madvise_fails={} needs_reset={}",
            get("free_page_hint_fails"),
            get("madvise_fails"),
            get("needs_reset_count")
        ),
        get("free_page_hint_fails") == 4
            && get("madvise_fails") == 0
            && get("needs_reset_count") == 0,
    );
    let dropped = rss_before.saturating_sub(rss_after);
    table.record(
        "balloon-hint: VMM VmRSS through the run",
        "drops by about the 16 MiB hinted (14-18 MiB)",
        &format!("before {rss_before} KiB, after {rss_after} KiB"),
        (14 * 1024..=18 * 1024).contains(&dropped),
    );
    table.finish();
}
