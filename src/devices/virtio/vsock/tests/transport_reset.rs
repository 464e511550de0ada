//! The transport reset event after a snapshot restore: once, only into a good posted buffer.

use vm_memory::{Bytes, GuestAddress};

use super::*;

#[test]
fn a_restore_writes_one_transport_reset_into_the_first_good_event_buffer_only() {
    let mem = memory();
    let mut r = rig(&mem, None);
    r.dev.restored();
    // No event buffer posted: nothing is written, the event waits for one.
    r.dev.process_evq();
    assert!(r.dev.transport_reset_pending());
    assert!(r.ev.take_used(&mem).is_empty());
    // A device-readable buffer and a 2-byte one are refused and counted; the event goes into
    // the next good buffer, the one after stays posted for a later event.
    let readable = r.ev.add(&mem, Some(&[0xff; 8]), 8);
    let short = r.ev.add(&mem, None, 2);
    let good = r.ev.add(&mem, None, 8);
    mem.write_slice(&[0xff; 8], GuestAddress(good)).unwrap();
    r.ev.add(&mem, None, 8);
    r.dev.process_evq();
    assert_eq!(
        r.ev.take_used(&mem),
        vec![(readable, 0), (short, 0), (good, 4)]
    );
    let id: u32 = mem.read_obj(GuestAddress(good)).unwrap();
    assert_eq!(id, super::super::transport_reset::TRANSPORT_RESET);
    assert!(!r.dev.transport_reset_pending());
    assert_eq!(r.metrics().transport_resets_sent.count(), 1);
    assert_eq!(r.metrics().bad_event_chain.count(), 2);
    // Further notifications send nothing more.
    r.dev.process_evq();
    assert!(r.ev.take_used(&mem).is_empty());
    assert_eq!(r.ev.outstanding(), 1);
    assert_eq!(r.metrics().transport_resets_sent.count(), 1);
}

#[test]
fn a_restore_ends_every_connection_and_a_driver_reset_cancels_the_event() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, mut host) = guest_connection(&mut r);
    r.dev.restored();
    r.dev.forget_watches();
    assert!(sees_eof(&mut host));
    assert_eq!(r.dev.muxer.open_peers(), 0);
    assert!(r.dev.transport_reset_pending());
    // A driver that resets the device starts over: it needs no transport reset.
    r.dev.reset();
    assert!(!r.dev.transport_reset_pending());
}

#[test]
fn a_restore_of_an_inactive_device_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = VsockDeviceConfig {
        vsock_id: None,
        guest_cid: CID as u32,
        uds_path: dir.path().join("v.sock").to_str().unwrap().into(),
        policy: None,
    };
    let mut dev = Vsock::new(&config, Arc::new(VsockDeviceMetrics::new())).unwrap();
    dev.restored();
    assert!(!dev.transport_reset_pending());
}
