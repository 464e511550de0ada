//! The block device against virtio-queue's mock driver: good requests, and every malformed
//! chain a hostile guest can build.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::{ActivateContext, VirtioDevice};
use crate::rate_limiter::TokenBucketConfig;
use crate::vstate::memory::GuestMemory;

const SECTORS: u64 = 8;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// A chain's buffers: (address, length, flags).
type Bufs = [(u64, u32, u16)];

struct Fixture {
    mem: GuestMemory,
    file: tempfile::NamedTempFile,
    next_desc: std::cell::Cell<u16>,
}

impl Fixture {
    fn new() -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..SECTORS * 512).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        Self {
            mem: GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap(),
            file,
            next_desc: std::cell::Cell::new(0),
        }
    }

    fn config(&self) -> BlockDeviceConfig {
        BlockDeviceConfig {
            drive_id: "data".into(),
            path_on_host: self.file.path().to_str().unwrap().into(),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            cache_type: CacheType::Writeback,
            rate_limiter: None,
            io_engine: Default::default(),
            socket: None,
        }
    }

    fn block(&self, config: &BlockDeviceConfig, q: &MockSplitQueue<GuestMemory>) -> Block {
        let mut block = Block::new(config, Arc::new(BlockDeviceMetrics::new())).unwrap();
        block
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues: vec![q.create_queue().unwrap()],
                features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        block
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Adds one chain of (addr, len, flags) buffers, linked in order.
    fn submit(&self, q: &MockSplitQueue<GuestMemory>, bufs: &[(u64, u32, u16)]) {
        // Chains are answered before the table wraps; a chain never straddles its end.
        let base = match self.next_desc.get() {
            b if usize::from(b) + bufs.len() > 16 => 0,
            b => b,
        };
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == bufs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                RawDescriptor::from(Descriptor::new(addr, len, flags, base + i as u16 + 1))
            })
            .collect();
        q.add_desc_chains(&descs, base).unwrap();
        self.next_desc.set(base + bufs.len() as u16);
    }

    fn status(&self) -> u32 {
        u32::from(self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn used(&self, q: &MockSplitQueue<GuestMemory>, i: u64) -> (u32, u32) {
        let addr = q.used_addr().unchecked_add(4 + 8 * i);
        let id: u32 = self.mem.read_obj(addr).unwrap();
        let len: u32 = self.mem.read_obj(addr.unchecked_add(4)).unwrap();
        (id, len)
    }
}

/// A read of `len` bytes at `sector` with header, data and status in three descriptors.
fn read_chain(len: u32) -> [(u64, u32, u16); 3] {
    [(HEADER, 16, 0), (DATA, len, W), (STATUS, 1, W)]
}

#[test]
fn reads_writes_flushes_and_get_id_work() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);

    f.header(VIRTIO_BLK_T_IN, 2);
    f.submit(&q, &read_chain(1024));
    block.process_queue();
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(f.used(&q, 0), (0, 1025));
    let mut data = vec![0u8; 1024];
    f.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    let expected: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(data, expected);

    f.header(VIRTIO_BLK_T_OUT, 7);
    f.mem.write_slice(&[b'p'; 512], GuestAddress(DATA)).unwrap();
    f.submit(&q, &[(HEADER, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
    block.process_queue();
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(f.used(&q, 1).1, 1);
    let content = std::fs::read(f.file.path()).unwrap();
    assert_eq!(&content[7 * 512..], &[b'p'; 512][..]);

    f.header(VIRTIO_BLK_T_FLUSH, 0);
    f.submit(&q, &[(HEADER, 16, 0), (STATUS, 1, W)]);
    block.process_queue();
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(block.metrics.flush_count.count(), 1);

    f.header(VIRTIO_BLK_T_GET_ID, 0);
    f.submit(&q, &[(HEADER, 16, 0), (DATA, 20, W), (STATUS, 1, W)]);
    block.process_queue();
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(f.used(&q, 3).1, 21);
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..5], b"data\0");
    assert_eq!(block.metrics.read_bytes.count(), 1024);
    assert_eq!(block.metrics.write_count.count(), 1);
    assert!(!block.core.interrupt.needs_reset());
}

#[test]
fn a_request_split_across_descriptors_any_way_is_served() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    // Header in two pieces; data and status in one writable buffer.
    f.header(VIRTIO_BLK_T_IN, 1);
    f.submit(
        &q,
        &[
            (HEADER, 10, 0),
            (HEADER + 10, 6, 0),
            (DATA, 512, W),
            (DATA + 512, 1, W),
        ],
    );
    block.process_queue();
    assert_eq!(
        f.mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap() as u32,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        f.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(),
        (512 % 251) as u8
    );
}

/// Submits one chain and returns the status byte and the used length.
fn outcome(
    f: &Fixture,
    block: &mut Block,
    q: &MockSplitQueue<GuestMemory>,
    bufs: &[(u64, u32, u16)],
) -> (u32, u32) {
    let used_before = q.used().idx().load();
    f.submit(q, bufs);
    block.process_queue();
    assert_eq!(
        q.used().idx().load(),
        used_before + 1,
        "{bufs:x?} not answered"
    );
    (f.status(), f.used(q, u64::from(used_before)).1)
}

#[test]
fn malformed_requests_get_ioerr_and_the_device_keeps_serving() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    let (i, o) = (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT);
    let read_512 = read_chain(512);
    // (what is wrong, request type, sector, chain): each is answered IOERR with used length 1.
    let cases: [(&str, u32, u64, &Bufs); 13] = [
        (
            "buffer outside guest memory (it ends past 2 MiB)",
            i,
            0,
            &[(HEADER, 16, 0), (0x1f_ff00, 0x1000, W), (STATUS, 1, W)],
        ),
        (
            "buffer whose end overflows",
            i,
            0,
            &[(HEADER, 16, 0), (u64::MAX - 511, 512, W), (STATUS, 1, W)],
        ),
        (
            "zero-length data buffer",
            i,
            0,
            &[(HEADER, 16, 0), (DATA, 0, W), (STATUS, 1, W)],
        ),
        (
            "a read whose data is device-readable",
            i,
            0,
            &[(HEADER, 16, 0), (DATA, 512, 0), (STATUS, 1, W)],
        ),
        (
            "a write whose data is writable",
            o,
            0,
            &[(HEADER, 16, 0), (DATA, 512, W), (STATUS, 1, W)],
        ),
        (
            "a readable buffer after a writable one",
            o,
            0,
            &[
                (HEADER, 16, 0),
                (DATA, 512, W),
                (DATA, 512, 0),
                (STATUS, 1, W),
            ],
        ),
        (
            "header too short",
            i,
            0,
            &[(HEADER, 8, 0), (DATA, 512, W), (STATUS, 1, W)],
        ),
        (
            "length not a multiple of 512",
            i,
            0,
            &[(HEADER, 16, 0), (DATA, 100, W), (STATUS, 1, W)],
        ),
        ("sector past the end", i, SECTORS, &read_512),
        (
            "a range that crosses the end",
            o,
            SECTORS - 1,
            &[(HEADER, 16, 0), (DATA, 1024, 0), (STATUS, 1, W)],
        ),
        (
            "sector * 512 overflows 64 bits",
            i,
            u64::MAX / 256,
            &read_512,
        ),
        ("sector + count wraps", i, u64::MAX, &read_512),
        (
            "GET_ID with a buffer smaller than 20 bytes",
            VIRTIO_BLK_T_GET_ID,
            0,
            &[(HEADER, 16, 0), (DATA, 8, W), (STATUS, 1, W)],
        ),
    ];
    for (what, kind, sector, chain) in cases {
        f.header(kind, sector);
        let got = outcome(&f, &mut block, &q, chain);
        assert_eq!(got, (VIRTIO_BLK_S_IOERR, 1), "{what}");
    }
    // An unknown request type is unsupported, not an I/O error.
    f.header(11, 0);
    assert_eq!(
        outcome(&f, &mut block, &q, &[(HEADER, 16, 0), (STATUS, 1, W)]),
        (VIRTIO_BLK_S_UNSUPP, 1)
    );

    assert_eq!(block.metrics.execute_fails.count(), 13);
    assert!(!block.core.interrupt.needs_reset());
    // The file is untouched and a good request still works.
    let content = std::fs::read(f.file.path()).unwrap();
    assert_eq!(content[0], 0);
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        outcome(&f, &mut block, &q, &read_chain(512)),
        (VIRTIO_BLK_S_OK, 513)
    );
}

#[test]
fn a_chain_longer_than_the_queue_needs_a_reset() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    // Descriptor 0 points to itself: an endless chain.
    let desc = Descriptor::new(HEADER, 16, VRING_DESC_F_NEXT as u16, 0);
    q.desc_table().store(0, RawDescriptor::from(desc)).unwrap();
    q.avail().ring().ref_at(0).unwrap().store(0);
    q.avail().idx().store(1);
    block.process_queue();
    assert!(block.core.interrupt.needs_reset());
    assert_eq!(q.used().idx().load(), 0);
    assert_eq!(block.metrics.needs_reset_count.count(), 1);
    // Nothing more is served until the reset gives the queue back.
    block.process_queue();
    assert_eq!(block.reset().len(), 1);
}

#[test]
fn a_chain_without_a_writable_status_byte_needs_a_reset() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    f.header(VIRTIO_BLK_T_IN, 0);
    f.submit(&q, &[(HEADER, 16, 0), (DATA, 512, 0)]);
    block.process_queue();
    assert!(block.core.interrupt.needs_reset());
    assert_eq!(q.used().idx().load(), 0);
}

#[test]
fn a_read_only_drive_refuses_writes_with_ioerr() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let config = BlockDeviceConfig {
        is_read_only: true,
        ..f.config()
    };
    let mut block = f.block(&config, &q);
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    f.header(VIRTIO_BLK_T_OUT, 0);
    f.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        outcome(
            &f,
            &mut block,
            &q,
            &[(HEADER, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]
        ),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(std::fs::read(f.file.path()).unwrap()[0], 0);
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        outcome(&f, &mut block, &q, &read_chain(512)),
        (VIRTIO_BLK_S_OK, 513)
    );
}

#[test]
fn throttled_requests_wait_for_the_timer_and_are_not_dropped() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let bucket = TokenBucketConfig {
        size: 1024,
        one_time_burst: None,
        refill_time: 100,
    };
    let config = BlockDeviceConfig {
        rate_limiter: Some(RateLimiterConfig {
            bandwidth: Some(bucket),
            ops: None,
        }),
        ..f.config()
    };
    let mut block = f.block(&config, &q);
    f.header(VIRTIO_BLK_T_IN, 0);
    f.submit(&q, &read_chain(1024));
    f.submit(&q, &read_chain(1024));
    block.process_queue();
    assert_eq!(q.used().idx().load(), 1, "the second read waits for tokens");
    assert!(block.limiter.is_blocked());
    assert_eq!(block.metrics.rate_limiter_throttled_events.count(), 1);
    std::thread::sleep(std::time::Duration::from_millis(120));
    block.limiter.on_timer().unwrap();
    block.process_queue();
    assert_eq!(q.used().idx().load(), 2);
    // Lifting the limit through an update.
    let off = TokenBucketConfig {
        size: 0,
        one_time_burst: None,
        refill_time: 0,
    };
    block.update_rate_limiter(&RateLimiterConfig {
        bandwidth: Some(off),
        ops: None,
    });
    assert_eq!(block.rate_limiter_config(), RateLimiterConfig::default());
}

#[test]
fn a_new_backing_file_changes_the_capacity_and_tells_the_driver() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), SECTORS);
    let bigger = tempfile::NamedTempFile::new().unwrap();
    bigger.as_file().set_len(64 * 512).unwrap();
    let generation = block.core.interrupt.config_generation();
    block.update_disk(bigger.path().to_str().unwrap()).unwrap();
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 64);
    assert_eq!(block.core.interrupt.config_generation(), generation + 1);
    assert!(block.update_disk("/nonexistent/disk.img").is_err());
    assert_eq!(block.metrics.update_fails.count(), 1);
}

#[test]
fn the_config_space_advertises_seg_max_and_size_max() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let block = f.block(&f.config(), &q);
    assert_ne!(block.core.avail_features & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_ne!(block.core.avail_features & (1 << VIRTIO_BLK_F_SIZE_MAX), 0);
    let mut word = [0u8; 4];
    block.read_config(8, &mut word);
    assert_eq!(u32::from_le_bytes(word), request::SIZE_MAX);
    block.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), request::SEG_MAX);
}

#[test]
fn a_request_larger_than_seg_max_times_size_max_is_refused_before_any_io() {
    let f = Fixture::new();
    // A disk large enough that only the size limit can refuse the request.
    f.file.as_file().set_len(64 << 20).unwrap();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut block = f.block(&f.config(), &q);
    let before = std::fs::read(f.file.path()).unwrap();
    // The attack: many descriptors over the same guest pages, adding up to more than the
    // device's limit (here 12 x 1.5 MiB = 18 MiB from a 2 MiB guest).
    f.header(VIRTIO_BLK_T_OUT, 0);
    let mut chain = vec![(HEADER, 16, 0)];
    chain.extend(std::iter::repeat_n((0u64, 0x18_0000u32, 0u16), 12));
    chain.push((STATUS, 1, W));
    assert_eq!(outcome(&f, &mut block, &q, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(block.metrics.invalid_reqs_count.count(), 1);
    assert_eq!(block.metrics.write_count.count(), 0);
    assert_eq!(std::fs::read(f.file.path()).unwrap(), before);
    // The device keeps serving.
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        outcome(&f, &mut block, &q, &read_chain(512)).0,
        VIRTIO_BLK_S_OK
    );
}

/// Handles the Async engine's completion events and the device's own queue kicks until
/// nothing is in flight (10 s at most; what the page cache served is answered during
/// `process_queue` already).
fn complete_async(block: &mut Block) {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The device's own kick (a chain waited for a slot) is served as the event loop would.
        if block.core.queue_events[0].read().is_ok() {
            block.process_queue();
            continue;
        }
        if block.engine.as_ref().unwrap().in_flight() == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no completion");
        let fd = block
            .engine
            .as_ref()
            .unwrap()
            .completion_event()
            .as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let _ = unsafe { libc::poll(&mut pfd, 1, 100) };
        block.on_completions();
    }
}

#[test]
fn an_async_drive_answers_reads_and_writes_when_they_complete() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut config = f.config();
    config.io_engine = IoEngine::Async;
    let mut block = f.block(&config, &q);
    assert_eq!(block.io_engine(), IoEngine::Async);

    f.header(VIRTIO_BLK_T_IN, 2);
    f.submit(&q, &read_chain(1024));
    block.process_queue();
    complete_async(&mut block);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(f.used(&q, 0), (0, 1025));
    let mut data = vec![0u8; 1024];
    f.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    let expected: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(data, expected);

    f.mem
        .write_slice(&[0xabu8; 512], GuestAddress(DATA))
        .unwrap();
    f.header(VIRTIO_BLK_T_OUT, 7);
    f.submit(&q, &[(HEADER, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
    block.process_queue();
    // A snapshot's wait: the write completes into the used ring before it returns.
    block.quiesce();
    assert_eq!(f.status(), VIRTIO_BLK_S_OK);
    assert_eq!(f.used(&q, 1), (3, 1));
    let content = std::fs::read(f.file.path()).unwrap();
    assert_eq!(&content[7 * 512..], &[0xabu8; 512][..]);
    let metrics = &block.metrics;
    assert_eq!(
        (metrics.read_count.count(), metrics.write_count.count()),
        (1, 1)
    );
}

#[test]
fn an_async_read_past_a_shrunk_file_gets_ioerr_at_completion() {
    let f = Fixture::new();
    let q = MockSplitQueue::new(&f.mem, 16);
    let mut config = f.config();
    config.io_engine = IoEngine::Async;
    let mut block = f.block(&config, &q);
    f.file.as_file().set_len(512).unwrap();
    f.header(VIRTIO_BLK_T_IN, 4);
    f.submit(&q, &read_chain(512));
    block.process_queue();
    complete_async(&mut block);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(f.used(&q, 0), (0, 1));
}

/// The used ring of [`PipeDrive`]'s queue (the mock puts its own over the second half of a
/// full available ring).
const PIPE_USED: u64 = 0x8000;

/// An active Async drive reading a pipe (its reads stay in flight until the test writes to
/// it) over a 16-entry queue holding two read chains, heads 0 and 2.
struct PipeDrive<'a> {
    q: MockSplitQueue<'a, GuestMemory>,
    block: Block,
    write_end: std::fs::File,
}

impl<'a> PipeDrive<'a> {
    fn new(f: &'a Fixture) -> Self {
        use std::os::fd::FromRawFd;
        let q = MockSplitQueue::new(&f.mem, 16);
        let mut config = f.config();
        config.io_engine = IoEngine::Async;
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(PIPE_USED))
            .unwrap();
        let mut block = Block::new(&config, Arc::new(BlockDeviceMetrics::new())).unwrap();
        block
            .activate(ActivateContext {
                mem: f.mem.clone(),
                queues: vec![queue],
                features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        let read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        // SAFETY: as above.
        let write_end = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        {
            use std::os::fd::AsRawFd;
            let engine = block.engine.as_ref().unwrap();
            engine.set_file(read_end.as_raw_fd()).unwrap();
        }
        block.disk = Disk::from_file_for_test(read_end, SECTORS);
        // A header, then 512 bytes of data and the status byte.
        f.header(VIRTIO_BLK_T_IN, 0);
        let descs = [
            RawDescriptor::from(Descriptor::new(HEADER, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 513, W, 0)),
            RawDescriptor::from(Descriptor::new(HEADER, 16, VRING_DESC_F_NEXT as u16, 3)),
            RawDescriptor::from(Descriptor::new(DATA + 0x1000, 513, W, 0)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        Self {
            q,
            block,
            write_end,
        }
    }

    /// Makes available entries `from..to`, heads 0 and 2 in turn (a head posted again while
    /// it is in flight, as a hostile driver may).
    fn post(&self, from: u16, to: u16) {
        for i in from..to {
            let head = if i % 2 == 0 { 0 } else { 2 };
            let slot = self.q.avail().ring().ref_at(usize::from(i % 16)).unwrap();
            slot.store(u16::to_le(head));
        }
        self.q.avail().idx().store(u16::to_le(to));
    }

    fn used_idx(&self, f: &Fixture) -> u16 {
        f.mem.read_obj(GuestAddress(PIPE_USED + 2)).unwrap()
    }

    fn in_flight(&self) -> usize {
        self.block.engine.as_ref().unwrap().in_flight()
    }
}

#[test]
fn an_async_drive_never_has_more_requests_in_flight_than_the_queue_size() {
    let f = Fixture::new();
    let mut p = PipeDrive::new(&f);
    p.post(0, 16);
    p.block.process_queue();
    while p.block.core.queue_events[0].read().is_ok() {
        p.block.process_queue();
    }
    assert_eq!(p.in_flight(), 16);
    p.post(16, 32);
    p.block.process_queue();
    // No more than the queue size: the next 16 wait in the ring.
    assert_eq!(p.in_flight(), 16);
    assert_eq!(p.used_idx(&f), 0);
    // Completions let them in.
    p.write_end.write_all(&[0x5a; 512 * 32]).unwrap();
    complete_async(&mut p.block);
    assert_eq!(p.used_idx(&f), 32);
    assert_eq!(p.block.metrics.read_count.count(), 32);
}

/// Forks; the child installs the vCPU threads' seccomp filter (a driver's reset runs on a vCPU
/// thread), resets `block` and exits 0 when the reset returned with `in_flight` requests still
/// in flight. Returns how the child ended.
fn reset_in_vcpu_filtered_child(block: &mut Block, in_flight: usize) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let filters = crate::seccomp::SeccompFilters::embedded();
    // SAFETY: the child only installs a filter built above, resets the device (no lock another
    // thread of the parent could hold: glibc's malloc is fork-safe) and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = if filters.apply(crate::seccomp::ThreadKind::Vcpu).is_err() {
            99
        } else {
            let queues = block.reset();
            let engine = block.engine.as_ref();
            let ok = queues.len() == 1
                && engine.is_some_and(|e| e.in_flight() == in_flight && e.orphans() == in_flight);
            i32::from(!ok)
        };
        // SAFETY: ends the child's one thread, so the child (the vCPU filter allows `exit`,
        // not `exit_group`).
        unsafe { libc::syscall(libc::SYS_exit, code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    std::process::ExitStatus::from_raw(status)
}

#[test]
fn a_reset_with_async_requests_blocked_in_flight_orphans_them_at_once_and_none_reaches_the_queue() {
    let f = Fixture::new();
    let mut p = PipeDrive::new(&f);
    p.post(0, 4);
    p.block.process_queue();
    assert_eq!(p.in_flight(), 4);
    // The attack: the driver resets while its reads are blocked (nothing is written to the
    // pipe until the reset has returned). The reset runs on the vCPU thread that holds the
    // device, under that thread's filter, which has no io_uring_enter: a reset that waited for
    // the ring would be killed, not just slow.
    let status = reset_in_vcpu_filtered_child(&mut p.block, 4);
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The same reset here: it returns with the reads still blocked, all of them orphaned.
    let queues = p.block.reset();
    assert_eq!(queues.len(), 1);
    let engine = p.block.engine.as_ref().unwrap();
    assert_eq!((engine.in_flight(), engine.orphans()), (4, 4));
    assert_eq!(p.used_idx(&f), 0);

    // The driver sets the queue up again and posts two reads with the heads of two orphans.
    p.q.avail().idx().store(0);
    let mut queue: virtio_queue::Queue = p.q.create_queue().unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(PIPE_USED))
        .unwrap();
    p.block
        .activate(ActivateContext {
            mem: f.mem.clone(),
            queues: vec![queue],
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
    p.post(0, 2);
    p.block.process_queue();
    assert_eq!(p.in_flight(), 6);
    // Every read finishes: only the two new ones reach the used ring.
    p.write_end.write_all(&[0x5a; 512 * 6]).unwrap();
    complete_async(&mut p.block);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.block.engine.as_ref().unwrap().orphans(), 0);
    assert_eq!(p.used_idx(&f), 2);
    assert_eq!(p.block.metrics.read_count.count(), 2);
}

#[test]
fn a_reset_drops_completions_the_kernel_posted_before_it_and_frees_their_slots() {
    let f = Fixture::new();
    let mut p = PipeDrive::new(&f);
    p.post(0, 4);
    p.block.process_queue();
    // The kernel finishes them; nobody reaps them before the driver's reset.
    p.write_end.write_all(&[0x5a; 512 * 4]).unwrap();
    p.block.reset();
    assert_eq!(p.used_idx(&f), 0);
    complete_async(&mut p.block);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.used_idx(&f), 0);
    assert_eq!(p.block.metrics.read_count.count(), 0);
}

#[test]
fn a_snapshot_or_a_file_change_waits_for_async_requests_in_flight_and_answers_them() {
    let f = Fixture::new();
    let mut p = PipeDrive::new(&f);
    p.post(0, 3);
    p.block.process_queue();
    assert_eq!(p.in_flight(), 3);
    p.write_end.write_all(&[0x5a; 512 * 3]).unwrap();
    p.block.quiesce();
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.used_idx(&f), 3);
    assert_eq!(p.block.metrics.read_count.count(), 3);
}

#[test]
fn reset_loops_with_async_reads_blocked_never_hold_more_than_the_queue_size_in_flight() {
    let f = Fixture::new();
    let mut p = PipeDrive::new(&f);
    let reactivate = |p: &mut PipeDrive| {
        p.q.avail().idx().store(0);
        let mut queue: virtio_queue::Queue = p.q.create_queue().unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(PIPE_USED))
            .unwrap();
        p.block
            .activate(ActivateContext {
                mem: f.mem.clone(),
                queues: vec![queue],
                features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
    };
    // The attack: a driver fills the ring with reads the backend never finishes, resets,
    // sets the queue up again and fills it again, over and over. Orphans keep their slots,
    // so the engine never holds more than one queue's worth: the new chains wait.
    p.post(0, 16);
    p.block.process_queue();
    assert_eq!(p.in_flight(), 16);
    for _ in 0..50 {
        p.block.reset();
        let engine = p.block.engine.as_ref().unwrap();
        assert_eq!((engine.in_flight(), engine.orphans()), (16, 16));
        reactivate(&mut p);
        p.post(0, 16);
        p.block.process_queue();
        while p.block.core.queue_events[0].read().is_ok() {
            p.block.process_queue();
        }
        assert_eq!(p.in_flight(), 16, "no slot beyond the queue size");
        assert_eq!(p.used_idx(&f), 0);
    }
    // The backend finishes the orphans: their slots take the waiting chains, which are
    // answered; no orphan reaches the used ring.
    p.write_end.write_all(&[0x5a; 512 * 32]).unwrap();
    complete_async(&mut p.block);
    let engine = p.block.engine.as_ref().unwrap();
    assert_eq!((engine.in_flight(), engine.orphans()), (0, 0));
    assert_eq!(p.used_idx(&f), 16);
    assert_eq!(p.block.metrics.read_count.count(), 16);
}
