//! The device on a real event loop, bulk data with honest credit, and the rate limiters.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use super::*;

/// Runs the event loop until `done` holds, failing after [`DEADLINE`].
fn spin(
    manager: &mut event_manager::EventManager<
        Arc<std::sync::Mutex<dyn event_manager::MutEventSubscriber + Send>>,
    >,
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "the event loop did not get there"
        );
        manager.run_with_timeout(50).unwrap();
    }
}

#[test]
fn on_the_event_loop_sockets_are_watched_as_they_come_and_go() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;

    let mem = memory();
    let Rig {
        dev,
        mem,
        mut rx,
        mut tx,
        ev: _ev,
        _dir,
        path,
    } = rig(&mem, None);
    let dev = Arc::new(Mutex::new(dev));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(dev.clone());
    for _ in 0..16 {
        rx.add(mem, None, (HDR_LEN as u32) + packet::MAX_PKT_LEN);
    }
    let read_rx = |rx: &mut Driver<'_>, got: &mut Vec<Header>| {
        for (addr, _) in rx.take_used(mem) {
            let mut raw = [0u8; HDR_LEN];
            mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            got.push(Header::from_bytes(&raw));
        }
    };
    let mut got = Vec::new();
    let mut c = client(&path);
    c.write_all(b"CONNECT 52\n").unwrap();
    spin(&mut manager, || {
        read_rx(&mut rx, &mut got);
        !got.is_empty()
    });
    assert_eq!(got[0].op, Op::Request as u16);
    let local = got[0].src_port;

    let mut response = guest_hdr(Op::Response, 52, local).to_bytes();
    response[24..28].copy_from_slice(&0u32.to_le_bytes());
    tx.add(mem, Some(&response), HDR_LEN as u32);
    dev.lock().unwrap().core.queue_events[TX].write(1).unwrap();
    c.set_nonblocking(true).unwrap();
    let mut line = Vec::new();
    spin(&mut manager, || {
        let mut b = [0u8; 64];
        if let Ok(n) = c.read(&mut b) {
            line.extend_from_slice(&b[..n]);
        }
        line.ends_with(b"\n")
    });
    assert_eq!(line, format!("OK {local}\n").as_bytes());

    c.write_all(b"hi").unwrap();
    spin(&mut manager, || {
        read_rx(&mut rx, &mut got);
        got.len() == 2
    });
    assert_eq!((got[1].op, got[1].len), (Op::Rw as u16, 2));
    drop(c);
    spin(&mut manager, || {
        read_rx(&mut rx, &mut got);
        got.len() == 3
    });
    assert_eq!(got[2].op, Op::Shutdown as u16);
    tx.add(
        mem,
        Some(&guest_hdr(Op::Rst, 52, local).to_bytes()),
        HDR_LEN as u32,
    );
    dev.lock().unwrap().core.queue_events[TX].write(1).unwrap();
    spin(&mut manager, || dev.lock().unwrap().muxer.open_peers() == 0);
    let d = dev.lock().unwrap();
    assert!(
        d.muxer.removed.is_empty(),
        "ended sockets are closed by the loop"
    );
    assert_eq!(d.metrics.conns_closed.count(), 1);
    assert_eq!(d.metrics.event_fails.count(), 0);
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 251 + seed) % 256) as u8)
        .collect()
}

#[test]
fn a_megabyte_each_way_with_honest_credit_arrives_intact() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let (_listener, host) = guest_connection(&mut r);
    const TOTAL: usize = 1 << 20;
    let mut writer = host.try_clone().unwrap();
    let to_guest = std::thread::spawn(move || writer.write_all(&pattern(TOTAL, 1)).unwrap());
    let mut reader = host.try_clone().unwrap();
    let from_guest = std::thread::spawn(move || read_exactly(&mut reader, TOTAL));
    let out = pattern(TOTAL, 2);
    let (mut got, mut sent) = (Vec::new(), 0usize);
    let (mut dev_buf_alloc, mut dev_fwd_cnt) = (0u32, 0u32);
    let start = Instant::now();
    // Until the host reader has everything: the last bytes may wait in the device's buffer.
    while got.len() < TOTAL || sent < TOTAL || !from_guest.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(20), "stalled");
        r.host_ready();
        for (h, d) in r.recv() {
            let expected = [Op::Rw, Op::CreditUpdate, Op::CreditRequest];
            assert!(expected.iter().any(|&op| h.op == op as u16), "op {}", h.op);
            got.extend_from_slice(&d);
            (dev_buf_alloc, dev_fwd_cnt) = (h.buf_alloc, h.fwd_cnt);
        }
        let mut credit = guest_hdr(Op::CreditUpdate, 1000, 52);
        credit.buf_alloc = 64 * 1024;
        credit.fwd_cnt = got.len() as u32;
        r.send(credit, &[]);
        let room = dev_buf_alloc.wrapping_sub((sent as u32).wrapping_sub(dev_fwd_cnt)) as usize;
        let n = room.min(16 * 1024).min(TOTAL - sent);
        if n > 0 {
            let mut rw = credit;
            rw.op = Op::Rw as u16;
            r.send(rw, &out[sent..sent + n]);
            sent += n;
        }
    }
    to_guest.join().unwrap();
    assert!(got == pattern(TOTAL, 1), "host to guest data intact");
    assert!(
        from_guest.join().unwrap() == out,
        "guest to host data intact"
    );
    assert_eq!(
        r.metrics().credit_lies.count() + r.metrics().credit_overrun.count(),
        0
    );
    assert_eq!(r.dev.muxer.open_peers(), 1);
}

#[test]
fn the_connection_limiter_holds_host_data_and_the_device_limiter_holds_the_tx_queue() {
    use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
    let bucket = |size| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time: 60_000,
    };
    let mem = memory();
    let policy = VsockPolicy {
        connection_rate_limiter: Some(RateLimiterConfig {
            bandwidth: Some(bucket(8192)),
            ops: None,
        }),
        ..VsockPolicy::default()
    };
    let mut r = rig(&mem, Some(policy));
    let (_listener, mut host) = guest_connection(&mut r);
    host.write_all(&[5u8; 20_000]).unwrap();
    let mut delivered = 0;
    for _ in 0..4 {
        r.host_ready();
        delivered += r.recv().iter().map(|(_, d)| d.len()).sum::<usize>();
    }
    assert_eq!(
        delivered, 8192,
        "one bucket's worth, then the connection waits"
    );
    // Lifting the limit lets the rest through.
    r.dev.update_policy(VsockPolicy::default()).unwrap();
    for token in r.dev.muxer.tokens() {
        r.dev
            .on_peer_event(peer_event(token, Watch::Limiter), EventSet::IN);
    }
    r.host_ready();
    delivered += r.recv().iter().map(|(_, d)| d.len()).sum::<usize>();
    assert_eq!(delivered, 20_000);

    let policy = VsockPolicy {
        rate_limiter: Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(2)),
        }),
        ..VsockPolicy::default()
    };
    r.dev.update_policy(policy).unwrap();
    for _ in 0..3 {
        let bytes = guest_hdr(Op::CreditRequest, 1000, 52).to_bytes();
        r.tx.add(r.mem, Some(&bytes), HDR_LEN as u32);
    }
    r.dev.process_tx();
    assert_eq!(
        r.tx.take_used(r.mem).len(),
        2,
        "the third packet waits in the ring"
    );
    assert!(r.metrics().rate_limiter_throttled.count() >= 1);
}

#[test]
fn a_random_guest_never_panics_the_device_and_its_memory_stays_bounded() {
    let mem = memory();
    let policy = VsockPolicy {
        max_connections: Some(8),
        ..VsockPolicy::default()
    };
    let mut r = rig(&mem, Some(policy));
    let listeners: Vec<UnixListener> = (1..=3)
        .map(|p| {
            let l = UnixListener::bind(format!("{}_{p}", r.path.display())).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mut hosts = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let data = vec![0xa5u8; 8192];
    for round in 0..3000 {
        let x = next();
        let mut h = guest_hdr(Op::Rw, (x % 4) as u32, ((x >> 8) % 4) as u32);
        h.op = ((x >> 16) % 9) as u16;
        h.flags = ((x >> 24) % 4) as u32;
        h.buf_alloc = (next() % (1 << 20)) as u32;
        h.fwd_cnt = if x >> 40 & 1 == 0 { 0 } else { next() as u32 };
        let len = if h.op == Op::Rw as u16 {
            (next() % 8192) as usize
        } else {
            0
        };
        r.send(h, &data[..len]);
        for l in &listeners {
            if let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                hosts.push(s);
            }
        }
        if round % 7 == 0 {
            for s in &hosts {
                let _ = (&*s).write(&data[..(x % 4096) as usize]);
            }
            r.host_ready();
            r.recv();
        }
        assert!(r.dev.muxer.open_peers() <= 8);
        assert!(r.dev.muxer.buffered_bytes() <= 8 * CONN_BUF_SIZE as usize);
    }
    assert!(
        r.metrics().conns_opened_guest.count() > 0,
        "the walk reached connections"
    );
}

/// Set in the child process of the fd-exhaustion test.
const FD_CHILD_ENV: &str = "PALISADE_VSOCK_FD_CHILD";

/// The process's open-file limit, soft and hard.
fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

fn set_nofile(soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own; the limit is our own process's (a child
    // that runs this one test).
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

#[test]
fn a_listener_that_cannot_accept_for_lack_of_fds_is_paused_not_spun_on() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;

    if std::env::var_os(FD_CHILD_ENV).is_none() {
        // RLIMIT_NOFILE is the whole process's: the test runs in a child of its own.
        let name = "devices::virtio::vsock::tests::traffic::\
                    a_listener_that_cannot_accept_for_lack_of_fds_is_paused_not_spun_on";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(FD_CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "child ran nothing:\n{text}");
        return;
    }
    let mem = memory();
    let Rig {
        dev, _dir, path, ..
    } = rig(&mem, None);
    let metrics = dev.metrics.clone();
    let dev = Arc::new(Mutex::new(dev));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(dev.clone());
    // A host client waits in the listener's backlog while the VMM has no fd left.
    let _c = client(&path);
    let (soft, hard) = nofile();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    set_nofile(open + 4, hard);
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    for _ in 0..25 {
        manager.run_with_timeout(20).unwrap();
    }
    assert!(metrics.event_fails.count() >= 1, "the failure is counted");
    assert!(
        metrics.conn_event_count.count() <= 2,
        "the loop spun on the listener {} times",
        metrics.conn_event_count.count()
    );
    // Fds come back: the listener is watched again and the client gets its place.
    drop(fillers);
    set_nofile(soft, hard);
    spin(&mut manager, || dev.lock().unwrap().muxer.open_peers() == 1);
}
