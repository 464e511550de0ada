//! Hostile balloon state in an unkeyed state file (the rules of hostile/snapshot.rs: one
//! change per case, sealed again with the library's own sealer, loaded into a fresh VMM;
//! refused with 400, then the good file loads into the same VMM). The probe guest
//! (`balloon-snap`, 128 MiB) gave 256 pages to the balloon and wrote `actual` before the
//! save; the table starts with the unchanged state as its control row.

use palisade::devices::virtio::balloon::BalloonState;
use palisade::snapshot::StateFile;
use palisade::vmm::machine_state::MachineState;
use serde_json::{json, Value};

use super::snapshot::{case, control, devices, run_cases, Base, Expect};
use crate::common::api::ApiClient;
use crate::common::{probe_path, ApiVm};
use crate::host::can_attack;
use crate::table::Table;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const MIB: u64 = 128;
/// Pages of guest RAM.
const PAGES: u32 = (MIB as u32) << 8;

fn boot_balloon_and_save() -> Base {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().to_string_lossy().into_owned();
    let mut vm = ApiVm::start(&["--snapshot-dir", &snapshot_dir]);
    let mut c = vm.client();
    let send = |c: &mut ApiClient, method: &str, path: &str, body: Value| {
        let r = c.request(method, path, Some(&body.to_string()));
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    };
    send(
        &mut c,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": MIB}),
    );
    send(
        &mut c,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": probe_path(),
               "boot_args": "console=ttyS0 probe.run=balloon-snap"}),
    );
    send(
        &mut c,
        "PUT",
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false}),
    );
    send(
        &mut c,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vm.running
        .wait_for_output("probe: balloon-snap ok filled", TIMEOUT);
    send(&mut c, "PATCH", "/balloon", json!({"amount_mib": 1}));
    vm.running
        .wait_for_output("probe: balloon-snap ok saved-at inflated=256", TIMEOUT);
    send(&mut c, "PATCH", "/vm", json!({"state": "Paused"}));
    let (state_path, mem_path) = (dir.path().join("state"), dir.path().join("mem"));
    send(
        &mut c,
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state_path, "mem_file_path": mem_path}),
    );
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

fn balloon(s: &mut MachineState) -> &mut BalloonState {
    s.balloon.as_mut().unwrap()
}

#[test]
fn hostile_balloon_state_in_an_unkeyed_state_file_is_refused_and_the_vmm_then_loads_the_good_one() {
    let test = "hostile_balloon_state_in_an_unkeyed_state_file_is_refused_and_the_vmm_then_loads_the_good_one";
    if !can_attack(test) {
        return;
    }
    let base = boot_balloon_and_save();
    let saved = base.state.balloon.clone().unwrap();
    assert_eq!(saved.actual_pages, 256);
    let words = saved.inflated.as_ref().unwrap().len();
    assert_eq!(words, PAGES as usize / 64);
    use Expect::{Refused, RefusedOrSurvives};
    let cases = vec![
        control(&base),
        case("balloon: actual u32::MAX", Refused, &base, |s| {
            balloon(s).actual_pages = u32::MAX;
        }),
        case("balloon: actual one page past guest RAM", Refused, &base, |s| {
            balloon(s).actual_pages = PAGES + 1;
        }),
        case(
            "balloon: a held statistics buffer on a balloon without a statistics queue",
            Refused,
            &base,
            |s| balloon(s).stats_head = Some(0),
        ),
        case("balloon: statistics tag 99", Refused, &base, |s| {
            balloon(s).stats = vec![(99, 1)];
        }),
        case("balloon: 100,000 statistics entries (tag 4 repeated)", Refused, &base, |s| {
            balloon(s).stats = vec![(4, 1); 100_000];
        }),
        case("balloon: an inflated page bitmap of one word", Refused, &base, |s| {
            balloon(s).inflated = Some(vec![u64::MAX]);
        }),
        case(
            "balloon: an inflated page bitmap of 1 Mi words (8 MiB, 64 GiB of pages)",
            Refused,
            &base,
            |s| balloon(s).inflated = Some(vec![u64::MAX; 1 << 20]),
        ),
        case(
            "balloon: every page of guest RAM in the balloon (the ledger only: nothing is madvised at load)",
            RefusedOrSurvives,
            &base,
            move |s| balloon(s).inflated = Some(vec![u64::MAX; words]),
        ),
        case("balloon: its state dropped, the device kept", Refused, &base, |s| {
            s.balloon = None;
        }),
        case("balloon: its configuration dropped, the state kept", Refused, &base, |s| {
            devices(s, |d| {
                d.as_object_mut().unwrap().remove("balloon");
            });
        }),
        case("balloon: amount_mib 129 on a 128 MiB machine", Refused, &base, |s| {
            devices(s, |d| d["balloon"]["amount_mib"] = json!(MIB + 1));
        }),
        case("balloon: stats_polling_interval_s 1 (a queue the transport lacks)", Refused, &base, |s| {
            devices(s, |d| d["balloon"]["stats_polling_interval_s"] = json!(1));
        }),
        case("balloon: an unknown field in its configuration", Refused, &base, |s| {
            devices(s, |d| d["balloon"]["page_size"] = json!(1));
        }),
        case(
            "balloon: a hinting run on a balloon without free page hinting",
            Refused,
            &base,
            |s| {
                let h = &mut balloon(s).hinting;
                (h.host_cmd, h.last_cmd_id, h.guest_cmd) = (2, 2, Some(2));
            },
        ),
        case(
            "balloon: hinting command id 7 in config space, the last run started 2",
            Refused,
            &base,
            |s| {
                let h = &mut balloon(s).hinting;
                (h.host_cmd, h.last_cmd_id) = (7, 2);
            },
        ),
        case(
            "balloon: driver features with the statistics queue (never offered)",
            Refused,
            &base,
            |s| s.transports.last_mut().unwrap().driver_features |= 1 << 1,
        ),
        case(
            "balloon: its transport before DRIVER_OK with pages in the balloon",
            Refused,
            &base,
            |s| {
                let t = s.transports.last_mut().unwrap();
                t.status = 0xb;
                t.active = false;
            },
        ),
    ];
    let snapshot_dir = base.dir.path().to_string_lossy().into_owned();
    let mut table = Table::default();
    run_cases(&mut table, &base, cases, &|| {
        ApiVm::start(&["--snapshot-dir", &snapshot_dir])
    });
    table.finish();
}
