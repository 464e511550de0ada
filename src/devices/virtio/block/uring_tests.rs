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
    let (a_read, mut a_write) = pipe();
    let (b_read, mut b_write) = pipe();
    let mut engine = AsyncEngine::with_slots(4, a_read.as_raw_fd()).unwrap();
    let a = [(GuestAddress(0x1000), 4usize)];
    let b = [(GuestAddress(0x2000), 4usize)];
    engine
        .push(&mem, 0, read_request(1, 4), a.into_iter())
        .unwrap();
    engine.submit().unwrap();
    // The first request keeps the file it was issued on.
    engine.set_file(b_read.as_raw_fd()).unwrap();
    engine
        .push(&mem, 0, read_request(2, 4), b.into_iter())
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
    let (r, mut w) = pipe();
    let mut engine = AsyncEngine::with_slots(2, r.as_raw_fd()).unwrap();
    for head in 0..2 {
        assert!(engine.has_room());
        let piece = [(GuestAddress(0x1000 * u64::from(head + 1)), 1usize)];
        engine
            .push(&mem, 0, read_request(head, 1), piece.into_iter())
            .unwrap();
    }
    engine.submit().unwrap();
    assert!(!engine.has_room());
    let piece = [(GuestAddress(0x3000), 1usize)];
    assert!(matches!(
        engine.push(&mem, 0, read_request(9, 1), piece.into_iter()),
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
    let (r, mut w) = pipe();
    let mut engine = AsyncEngine::with_slots(4, r.as_raw_fd()).unwrap();
    let piece = [(GuestAddress(0x1000), 4usize)];
    engine
        .push(&mem, 0, read_request(3, 4), piece.into_iter())
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
        .push(&mem, 0, read_request(4, 4), piece.into_iter())
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
    let (r, _w) = pipe();
    let mut engine = AsyncEngine::with_slots(2, r.as_raw_fd()).unwrap();
    let piece = [(GuestAddress(0xf_f000), 0x2000usize)];
    assert!(matches!(
        engine.push(&mem, 0, read_request(0, 0x2000), piece.into_iter()),
        Err(UringError::Buffer(_))
    ));
    assert_eq!(engine.in_flight(), 0);
    assert!(engine.has_room());
}

const EACCES: i32 = libc::EACCES;

/// Pushes `entry` straight onto the engine's ring (as a thread holding the ring fd could),
/// submits it and returns its completion's result.
fn raw_result(engine: &mut AsyncEngine, entry: squeue::Entry) -> i32 {
    let entry = entry.user_data(u64::MAX);
    // SAFETY: the entry's buffers (if any) outlive the wait below.
    unsafe { engine.ring.submission().push(&entry) }.unwrap();
    engine.ring.submit_and_wait(1).unwrap();
    let c = engine.ring.completion().next().unwrap();
    assert_eq!(c.user_data(), u64::MAX);
    c.result()
}

#[test]
fn a_drive_ring_refuses_openat_other_opcodes_extra_sqe_flags_and_files_that_are_not_fixed() {
    let (r, _w) = pipe();
    let mut engine = AsyncEngine::with_slots(2, r.as_raw_fd()).unwrap();
    let path = std::ffi::CString::new("/etc/hostname").unwrap();
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY)
        .build();
    assert_eq!(raw_result(&mut engine, open), -EACCES, "OPENAT");

    let (other, _other_w) = pipe();
    let mut buf = [0u8; 4];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let readv = opcode::Readv::new(types::Fd(other.as_raw_fd()), &iov, 1).build();
    assert_eq!(raw_result(&mut engine, readv), -EACCES, "READV, plain fd");
    let writev = opcode::Writev::new(types::Fd(other.as_raw_fd()), &iov, 1).build();
    assert_eq!(raw_result(&mut engine, writev), -EACCES, "WRITEV, plain fd");
    // An opcode outside the list is refused even on the fixed file.
    let read = opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), 4).build();
    assert_eq!(raw_result(&mut engine, read), -EACCES, "READ");
    let nop = opcode::Nop::new().build();
    assert_eq!(raw_result(&mut engine, nop), -EACCES, "NOP");
    // The allowed opcode on the fixed file, with any flag but IOSQE_FIXED_FILE, is refused.
    for flag in [
        squeue::Flags::ASYNC,
        squeue::Flags::IO_DRAIN,
        squeue::Flags::SKIP_SUCCESS,
    ] {
        let readv = opcode::Readv::new(types::Fixed(0), &iov, 1)
            .build()
            .flags(flag);
        assert_eq!(raw_result(&mut engine, readv), -EACCES, "READV {flag:?}");
    }
}

#[test]
fn a_drive_ring_refuses_every_register_operation_but_files_update() {
    let (r, _w) = pipe();
    let (other, _other_w) = pipe();
    let engine = AsyncEngine::with_slots(2, r.as_raw_fd()).unwrap();
    let s = engine.ring.submitter();
    let refused = |what: &str, result: std::io::Result<()>| {
        assert_eq!(
            result.unwrap_err().raw_os_error(),
            Some(EACCES),
            "{what} is allowed"
        );
    };
    refused("REGISTER_FILES", s.register_files(&[other.as_raw_fd()]));
    refused("UNREGISTER_FILES", s.unregister_files());
    refused("REGISTER_EVENTFD", s.register_eventfd(other.as_raw_fd()));
    refused("UNREGISTER_EVENTFD", s.unregister_eventfd());
    refused("REGISTER_PERSONALITY", s.register_personality().map(drop));
    refused("ENABLE_RINGS", s.register_enable_rings());
    let mut probe = io_uring::Probe::new();
    refused("REGISTER_PROBE", s.register_probe(&mut probe));
    let mut buf = [0u8; 8];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the buffer outlives the call (which the ring refuses).
    refused("REGISTER_BUFFERS", unsafe { s.register_buffers(&[iov]) });
    // A PATCH of the drive's path swaps the fixed file.
    engine.set_file(other.as_raw_fd()).unwrap();
}

#[test]
fn no_ring_is_made_on_a_thread_sealed_before_its_seccomp_filter() {
    let (r, _w) = pipe();
    let fd = r.as_raw_fd();
    let sealed = std::thread::spawn(move || {
        seal_thread();
        AsyncEngine::with_slots(2, fd).err()
    })
    .join()
    .unwrap();
    assert!(matches!(sealed, Some(UringError::Sealed)), "{sealed:?}");
    assert!(check_available(fd).is_ok(), "another thread is not sealed");
}

#[test]
fn orphaning_waits_for_nothing_counts_orphans_and_a_later_quiesce_waits_for_them_too() {
    let mem = memory();
    let (r, mut w) = pipe();
    let mut engine = AsyncEngine::with_slots(4, r.as_raw_fd()).unwrap();
    for head in 0..3u16 {
        let piece = [(GuestAddress(0x1000 * u64::from(head + 1)), 4usize)];
        engine
            .push(&mem, 0, read_request(head, 4), piece.into_iter())
            .unwrap();
    }
    engine.submit().unwrap();
    // Blocked on the empty pipe: orphaned at once, none handed over.
    assert_eq!(engine.orphan_in_flight(), 3);
    assert_eq!(
        engine.orphan_in_flight(),
        0,
        "orphans are not counted twice"
    );
    assert_eq!((engine.in_flight(), engine.orphans()), (3, 3));
    // A snapshot's wait counts orphans as in flight: they outlive a short deadline.
    assert_eq!(engine.quiesce(Duration::from_millis(20), drop), 3);
    w.write_all(b"aaaabbbbcccc").unwrap();
    let mut seen = Vec::new();
    assert_eq!(engine.quiesce(Duration::from_secs(10), |c| seen.push(c)), 0);
    assert!(seen.is_empty(), "an orphan's completion is dropped");
    assert_eq!((engine.in_flight(), engine.orphans()), (0, 0));
    assert!(
        engine.mem.is_none(),
        "guest memory is let go when nothing is in flight"
    );
}
