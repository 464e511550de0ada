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

/// A restored device whose driver got the transport reset, and a host client whose
/// `CONNECT` arrived before the driver handled it.
fn reset_sent_and_a_host_connect(mem: &GuestMemory) -> (Rig<'_>, UnixStream) {
    let mut r = rig(mem, None);
    let posted = r.ev.add(mem, None, 8);
    r.ev.add(mem, None, 8);
    r.dev.restored();
    r.dev.process_evq();
    assert_eq!(r.ev.take_used(mem), vec![(posted, 4)]);
    let mut c = client(&r.path);
    c.write_all(b"CONNECT 52\n").unwrap();
    r.host_ready();
    (r, c)
}

#[test]
fn a_host_connect_waits_until_the_driver_has_handled_the_transport_reset() {
    // A Linux driver resets every connected socket when it handles the event: a REQUEST it
    // saw earlier would open a connection that the reset then tears down.
    let mem = memory();
    let (mut r, _c) = reset_sent_and_a_host_connect(&mem);
    assert!(
        r.recv().is_empty(),
        "a REQUEST before the reset was handled"
    );
    assert!(r.recv().is_empty());
    // The device asked to be told of the driver's next event buffer (avail_event = 2).
    let avail_event: u16 = mem
        .read_obj(r.ev.used.unchecked_add(4 + 8 * u64::from(QSIZE)))
        .unwrap();
    assert_eq!(avail_event, 2);
    // The driver handled it and posts the buffer again: the REQUEST goes out.
    r.ev.add(&mem, None, 8);
    r.dev.process_evq();
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Request as u16]);
    assert_eq!(got[0].0.dst_port, 52);
    assert!(r.ev.take_used(&mem).is_empty(), "one event only");
}

#[test]
fn a_driver_that_never_handles_the_transport_reset_delays_host_packets_only_until_the_deadline() {
    let mem = memory();
    let (mut r, _c) = reset_sent_and_a_host_connect(&mem);
    assert!(r.recv().is_empty());
    let flight = r.dev.reset_in_flight.as_mut().unwrap();
    flight.until = Instant::now();
    let got = r.recv();
    assert_eq!(ops(&got), vec![Op::Request as u16]);
    assert!(r.dev.reset_in_flight.is_none());
}

#[test]
fn a_driver_reset_ends_the_wait_for_the_transport_reset() {
    let mem = memory();
    let (mut r, _c) = reset_sent_and_a_host_connect(&mem);
    assert!(r.dev.reset_in_flight.is_some());
    r.dev.reset();
    assert!(r.dev.reset_in_flight.is_none());
}

#[test]
fn a_host_connect_waits_while_the_transport_reset_has_no_buffer_to_go_in() {
    // The event loop may accept a host client before it sends the event, or the driver may
    // have posted no event buffer yet: either way the guest has not reset its old
    // connections, and would reset the new one with them.
    let mem = memory();
    let mut r = rig(&mem, None);
    r.dev.restored();
    let mut c = client(&r.path);
    c.write_all(b"CONNECT 52\n").unwrap();
    r.host_ready();
    assert!(r.recv().is_empty(), "a REQUEST before the reset was sent");
    // The driver posts a buffer: the event goes in, the REQUEST waits for its handling.
    r.ev.add(&mem, None, 8);
    r.dev.process_evq();
    assert_eq!(r.ev.take_used(&mem).len(), 1);
    assert!(r.recv().is_empty());
    r.ev.add(&mem, None, 8);
    r.dev.process_evq();
    assert_eq!(ops(&r.recv()), vec![Op::Request as u16]);
}
