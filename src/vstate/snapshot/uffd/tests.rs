//! The Uffd handshake against in-process handlers (no KVM): Firecracker's message with the
//! userfaultfd attached, a fault on registered memory served with UFFDIO_COPY, and the
//! refusals (no socket, nobody listening, a handler that closes early or never reads).

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

use super::*;
use crate::vstate::memory::{create_guest_memory, MemoryOptions};
use crate::vstate::snapshot::uffd_abi::{UffdMsg, UffdioCopy, UFFDIO_COPY, UFFD_EVENT_PAGEFAULT};

fn memory() -> GuestMemory {
    create_guest_memory(2 << 20, MemoryOptions::default()).unwrap()
}

fn listener() -> (tempfile::TempDir, PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    (dir, path, listener)
}

/// Waits for one event on `uffd` and reads it.
fn next_event(uffd: &File) -> UffdMsg {
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
    let mut msg = UffdMsg::default();
    // SAFETY: reads at most one uffd_msg into `msg`.
    let n = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            (&mut msg as *mut UffdMsg).cast(),
            std::mem::size_of::<UffdMsg>(),
        )
    };
    assert_eq!(n, std::mem::size_of::<UffdMsg>() as isize);
    msg
}

#[test]
fn the_message_is_firecrackers_json_in_its_field_order() {
    let mem = memory();
    let text = String::from_utf8(serde_json::to_vec(&region_mappings(&mem)).unwrap()).unwrap();
    let base = region_mappings(&mem)[0].base_host_virt_addr;
    assert_eq!(
        text,
        format!(
            "[{{\"base_host_virt_addr\":{base},\"size\":2097152,\"offset\":0,\
             \"page_size\":4096,\"page_size_kib\":4096}}]"
        )
    );
}

#[test]
fn the_handler_gets_the_regions_and_a_userfaultfd_and_serves_the_vmms_fault() {
    let (_dir, path, listener) = listener();
    let mem = memory();
    let handler = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let (mappings, uffd) = receive_handshake(&stream).unwrap();
        let msg = next_event(&uffd);
        assert_eq!(msg.event, UFFD_EVENT_PAGEFAULT);
        let page = vec![0xabu8; 4096];
        let mut copy = UffdioCopy {
            dst: msg.arg1 & !4095,
            src: page.as_ptr() as u64,
            len: 4096,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY of one page from `page` into the faulting range.
        let copied = unsafe { ioctl_with_mut_ref(&uffd, UFFDIO_COPY(), &mut copy) };
        assert_eq!(copied, 0);
        (mappings, msg.arg1, stream)
    });
    let _backend = hand_to_handler(&mem, &path).unwrap();
    // This read faults, and waits until the handler has copied the page in.
    let value: u8 = mem.read_obj(GuestAddress(3 * 4096 + 5)).unwrap();
    assert_eq!(value, 0xab);
    let (mappings, address, _stream) = handler.join().unwrap();
    assert_eq!(mappings, region_mappings(&mem));
    let base = mappings[0].base_host_virt_addr;
    assert_eq!(address & !4095, base + 3 * 4096);
    // Other pages are still missing: untouched, nothing else was populated.
    assert_eq!(mappings[0].size, 2 << 20);
}

#[test]
fn no_socket_and_no_listener_are_connect_errors() {
    let mem = memory();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let err = hand_to_handler(&mem, &missing).unwrap_err();
    assert!(
        matches!(
            err,
            UffdError::Connect {
                source: nix::Error::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    let (_dir, path, listener) = listener();
    drop(listener);
    let err = hand_to_handler(&mem, &path).unwrap_err();
    assert!(
        matches!(
            err,
            UffdError::Connect {
                source: nix::Error::ECONNREFUSED,
                ..
            }
        ),
        "{err:?}"
    );
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = hand_to_handler(&mem, &file).unwrap_err();
    assert!(matches!(err, UffdError::Connect { .. }), "{err:?}");
}

#[test]
fn a_handler_that_closes_without_reading_fails_the_handoff() {
    let (_dir, path, listener) = listener();
    let mem = memory();
    let handler = thread::spawn(move || drop(listener.accept().unwrap()));
    let err = hand_to_handler(&mem, &path).unwrap_err();
    assert!(matches!(err, UffdError::Closed), "{err:?}");
    handler.join().unwrap();
}

#[test]
fn a_handler_that_never_reads_fails_the_handoff_at_the_deadline() {
    let (_dir, path, listener) = listener();
    let mem = memory();
    let (tx, rx) = mpsc::channel();
    let handler = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // Hold the connection open, unread, until the VMM side gave up.
        rx.recv().unwrap();
        drop(stream);
    });
    let timeout = Duration::from_millis(200);
    let err = hand_to_handler_within(&mem, &path, timeout).unwrap_err();
    assert!(
        matches!(err, UffdError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    tx.send(()).unwrap();
    handler.join().unwrap();
}
