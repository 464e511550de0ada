//! `mtu` on a network interface: the guest is offered it (VIRTIO_NET_F_MTU and the config
//! space), and frames it sends longer than it are dropped and counted, not sent.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use serde_json::json;

use common::kvm_available;
use common::netns::{net_totals, net_vm, TapNetns};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn the_guest_sees_the_mtu_and_its_longer_frames_are_dropped_and_counted() {
    let test = "the_guest_sees_the_mtu_and_its_longer_frames_are_dropped_and_counted";
    if !kvm_available(test) {
        return;
    }
    let Some(ns) = TapNetns::create(test) else {
        return;
    };
    let mut vm = net_vm(&ns, "virtio", "", None);
    vm.config["network-interfaces"][0]["mtu"] = json!(576);
    let run = vm.run(TIMEOUT);
    run.assert_success();
    let detail = run.assert_probe_ok("virtio");
    assert!(detail.contains(" net:mtu=576@"), "{detail}");

    // UDP 1,000 bytes: IPv4 1,028 > 576, every one dropped; UDP 500: 528 fits.
    for (size, dropped) in [(1000u64, true), (500, false)] {
        let mut vm = net_vm(
            &ns,
            "net-tx",
            &format!("probe.peer=10.0.0.1:9 probe.count=100 probe.size={size}"),
            None,
        );
        vm.config["network-interfaces"][0]["mtu"] = json!(576);
        let run = vm.run(TIMEOUT);
        run.assert_success();
        run.assert_probe_ok("net-tx");
        let m = net_totals(&vm);
        println!("size {size}: {m:?}");
        if dropped {
            assert!(m["tx_over_mtu_drops"] >= 100, "{m:?}");
        } else {
            assert_eq!(m["tx_over_mtu_drops"], 0, "{m:?}");
            assert!(m["tx_packets_count"] >= 100, "{m:?}");
        }
    }
}
