//! The io_uring engine alone, its files pipes so that a test decides when each request
//! completes.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::Bytes;

use super::*;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// (read end, write end).
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nothing else.
    let read = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { File::from_raw_fd(fds[1]) };
    (read, write)
}

fn read_request(head: u16, len: u32) -> Pending {
    Pending {
        head,
        status: GuestAddress(0x8000 + u64::from(head)),
        kind: RequestType::In,
        len,
    }
}

/// Waits (10 s at most) for the completion event, then reaps.
fn wait_reap(engine: &mut AsyncEngine) -> Vec<Completion> {
    let mut pfd = libc::pollfd {
        fd: engine.completion_event().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(ready, 1, "no completion");
    let mut out = Vec::new();
    engine.reap(&mut out);
    out
}

#[test]
fn completions_come_back_in_the_order_the_kernel_finishes_them_not_the_submission_order() {
    let mem = memory();
    let mut engine = AsyncEngine::with_slots(4).unwrap();
    let (a_read, mut a_write) = pipe();
    let (b_read, mut b_write) = pipe();
    let a = [(GuestAddress(0x1000), 4usize)];
    let b = [(GuestAddress(0x2000), 4usize)];
    engine
        .push(
            &mem,
            a_read.as_raw_fd(),
            0,
            read_request(1, 4),
            a.into_iter(),
        )
        .unwrap();
    engine
        .push(
            &mem,
            b_read.as_raw_fd(),
            0,
            read_request(2, 4),
            b.into_iter(),
        )
        .unwrap();
    engine.submit().unwrap();
    assert_eq!(engine.in_flight(), 2);

    b_write.write_all(b"bbbb").unwrap();
    let first = wait_reap(&mut engine);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].request, read_request(2, 4));
    assert!(first[0].ok());
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(&got, b"bbbb");

    a_write.write_all(b"aa").unwrap();
    let second = wait_reap(&mut engine);
    assert_eq!(second[0].request.head, 1);
    assert_eq!(second[0].result, 2);
    assert!(!second[0].ok(), "a short read is an error");
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn a_full_engine_takes_nothing_more_until_a_request_completes() {
    let mem = memory();
    let mut engine = AsyncEngine::with_slots(2).unwrap();
    let (r, mut w) = pipe();
    for head in 0..2 {
        assert!(engine.has_room());
        let piece = [(GuestAddress(0x1000 * u64::from(head + 1)), 1usize)];
        engine
            .push(
                &mem,
                r.as_raw_fd(),
                0,
                read_request(head, 1),
                piece.into_iter(),
            )
            .unwrap();
    }
    engine.submit().unwrap();
    assert!(!engine.has_room());
    let piece = [(GuestAddress(0x3000), 1usize)];
    assert!(matches!(
        engine.push(
            &mem,
            r.as_raw_fd(),
            0,
            read_request(9, 1),
            piece.into_iter()
        ),
        Err(UringError::SubmissionFull)
    ));
    w.write_all(b"x").unwrap();
    let done = wait_reap(&mut engine);
    assert_eq!(done.len(), 1);
    assert!(engine.has_room());
    w.write_all(b"y").unwrap();
    assert_eq!(engine.quiesce(Duration::from_secs(10), drop), 0);
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn quiesce_waits_for_requests_in_flight_and_orphans_what_outlives_its_deadline() {
    let mem = memory();
    let mut engine = AsyncEngine::with_slots(4).unwrap();
    let (r, mut w) = pipe();
    let piece = [(GuestAddress(0x1000), 4usize)];
    engine
        .push(
            &mem,
            r.as_raw_fd(),
            0,
            read_request(3, 4),
            piece.into_iter(),
        )
        .unwrap();
    // Nothing to read: the request outlives a short deadline and is orphaned.
    assert_eq!(engine.quiesce(Duration::from_millis(50), drop), 1);
    assert_eq!(engine.in_flight(), 1);
    // Its completion, when it comes, is dropped and frees the slot.
    w.write_all(b"late").unwrap();
    let done = wait_reap(&mut engine);
    assert!(done.is_empty());
    assert_eq!(engine.in_flight(), 0);

    // A request the kernel finishes within the deadline is handed over.
    engine
        .push(
            &mem,
            r.as_raw_fd(),
            0,
            read_request(4, 4),
            piece.into_iter(),
        )
        .unwrap();
    w.write_all(b"done").unwrap();
    let mut seen = Vec::new();
    assert_eq!(engine.quiesce(Duration::from_secs(10), |c| seen.push(c)), 0);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].ok());
}

#[test]
fn a_buffer_outside_guest_memory_is_refused_before_submission() {
    let mem = memory();
    let mut engine = AsyncEngine::with_slots(2).unwrap();
    let (r, _w) = pipe();
    let piece = [(GuestAddress(0xf_f000), 0x2000usize)];
    assert!(matches!(
        engine.push(
            &mem,
            r.as_raw_fd(),
            0,
            read_request(0, 0x2000),
            piece.into_iter()
        ),
        Err(UringError::Buffer(_))
    ));
    assert_eq!(engine.in_flight(), 0);
    assert!(engine.has_room());
}
