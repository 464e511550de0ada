//! Memory files: 0600, never through a link, mapped private and hardened, and Diff files that
//! hold only the pages the guest wrote (real KVM).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::vstate::memory::create_guest_memory;
use crate::vstate::snapshot::test_kvm::{boot_vcpu, vm_or_skip};

const MIB: u64 = 1 << 20;

fn patterned(size: u64) -> GuestMemory {
    let mem = create_guest_memory(size, MemoryOptions::default()).unwrap();
    for page in 0..size / PAGE_SIZE {
        mem.write_obj(page ^ 0x5a5a_0000, GuestAddress(page * PAGE_SIZE))
            .unwrap();
    }
    mem
}

fn smaps_flags_of(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside && line.starts_with("VmFlags:") {
            return line.to_string();
        }
    }
    panic!("no mapping at {addr:#x}");
}

#[test]
fn full_memory_file_is_0600_and_maps_back_private_and_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let mem = patterned(8 * MIB);
    let written = write_memory(&mem, &path, MemoryDump::Full).unwrap();
    assert_eq!(written.pages, 8 * MIB / PAGE_SIZE);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 8 * MIB);

    let restored = map_memory(&path, 8 * MIB, MemoryOptions::default()).unwrap();
    for page in [0, 1, 777, 8 * MIB / PAGE_SIZE - 1] {
        let v: u64 = restored.read_obj(GuestAddress(page * PAGE_SIZE)).unwrap();
        assert_eq!(v, page ^ 0x5a5a_0000);
    }
    // Guest writes stay private to this process.
    restored.write_obj(0xffff_u64, GuestAddress(0)).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk[..8], 0x5a5a_0000_u64.to_le_bytes());
    let host = restored
        .iter()
        .next()
        .unwrap()
        .get_host_address(MemoryRegionAddress(0))
        .unwrap() as usize;
    let flags = smaps_flags_of(host);
    assert!(
        flags.contains(" dd"),
        "not excluded from core dumps: {flags}"
    );
    assert!(flags.contains(" dc"), "inherited by children: {flags}");
}

#[test]
fn mapping_a_file_does_not_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    // A 1 GiB sparse file: mapping it costs no I/O and no resident memory.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    let start = std::time::Instant::now();
    let mem = map_memory(&path, 1 << 30, MemoryOptions::default()).unwrap();
    let took = start.elapsed();
    let host = mem
        .iter()
        .next()
        .unwrap()
        .get_host_address(MemoryRegionAddress(0))
        .unwrap() as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut rss_kib = None;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, _)) = range.split_once('-') {
                if let Ok(a) = usize::from_str_radix(a, 16) {
                    inside = a == host;
                    continue;
                }
            }
        }
        if inside && line.starts_with("Rss:") {
            rss_kib = line
                .split_whitespace()
                .nth(1)
                .map(|v| v.parse::<u64>().unwrap());
        }
    }
    assert_eq!(rss_kib, Some(0), "pages were read at map time");
    println!("mapped a 1 GiB memory file in {took:?}");
}

#[test]
fn mapping_refuses_a_file_of_another_size_a_link_and_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    assert!(matches!(
        map_memory(&path, 8 * MIB, MemoryOptions::default()),
        Err(MemoryFileError::Size { .. })
    ));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(
        map_memory(&link, 4 * MIB, MemoryOptions::default()),
        Err(MemoryFileError::Io("open", _))
    ));
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(matches!(
        map_memory(&fifo, 4 * MIB, MemoryOptions::default()),
        Err(MemoryFileError::NotRegular)
    ));
    let huge = MemoryOptions {
        backing: crate::vstate::memory::Backing::Huge2M,
        lock: false,
    };
    assert!(matches!(
        map_memory(&path, 4 * MIB, huge),
        Err(MemoryFileError::Map(MemoryError::HugePagesFromFile))
    ));
}

#[test]
fn writing_never_follows_a_link_and_replaces_an_existing_file_with_a_0600_one() {
    let dir = tempfile::tempdir().unwrap();
    let mem = patterned(MIB);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = dir.path().join("mem");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    write_memory(&mem, &link, MemoryDump::Full).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let old = std::fs::File::open(&victim).unwrap();
    write_memory(&mem, &victim, MemoryDump::Full).unwrap();
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), MIB);
    assert_eq!(
        old.metadata().unwrap().len(),
        4,
        "the old file is replaced, not rewritten"
    );
}

#[test]
fn dirty_runs_cover_exactly_the_set_bits() {
    let bitmap = [0b1011_0001u64, 1 << 63];
    assert_eq!(
        dirty_runs(&bitmap, 128),
        vec![(0, 1), (4, 2), (7, 1), (127, 1)]
    );
    assert_eq!(dirty_runs(&[u64::MAX], 10), vec![(0, 10)]);
    assert_eq!(dirty_runs(&[], 10), vec![]);
}

/// 64-bit code at CODE: `mov byte [TARGET], 0x42; out 0x10, al`.
const CODE: u64 = 0x10_000;
const TARGET: u64 = 0x20_000;
const UNTRACKED: u64 = 0x30_000;

#[test]
fn diff_file_holds_only_the_pages_the_guest_wrote() {
    let Some(vm) = vm_or_skip("diff_file_holds_only_the_pages_the_guest_wrote") else {
        return;
    };
    let size = 4 * MIB;
    let mem = create_guest_memory(size, MemoryOptions::default()).unwrap();
    vm.register_memory_tracked(&mem, true).unwrap();
    let fd = boot_vcpu(&vm, 0, 1);
    let mut code = vec![0xc6, 0x04, 0x25];
    code.extend_from_slice(&(TARGET as u32).to_le_bytes());
    code.extend_from_slice(&[0x42, 0xe6, 0x10]);
    mem.write_slice(&code, GuestAddress(CODE)).unwrap();
    regs::setup_regs(&fd, CODE, EntryMode::Linux64).unwrap();
    regs::setup_sregs(&mem, &fd, EntryMode::Linux64).unwrap();
    clear_dirty_log(vm.fd(), &mem).unwrap();
    // The VMM's own writes are not in KVM's log.
    mem.write_obj(0x77_u8, GuestAddress(UNTRACKED)).unwrap();

    let mut fd = fd;
    match fd.run().unwrap() {
        kvm_ioctls::VcpuExit::IoOut(0x10, _) => {}
        other => panic!("unexpected exit {other:?}"),
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(TARGET)).unwrap(), 0x42);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    let written = write_memory(
        &mem,
        &path,
        MemoryDump::Diff {
            vm: vm.fd(),
            extra: None,
        },
    )
    .unwrap();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len() as u64, size);
    assert_eq!(file[TARGET as usize], 0x42);
    assert_eq!(
        file[UNTRACKED as usize], 0,
        "a page the guest never wrote was written"
    );
    assert_eq!(
        file[CODE as usize], 0,
        "a page the guest only read was written"
    );
    // The target page, and at most the page tables whose accessed/dirty bits KVM set.
    assert!(
        (1..=8).contains(&written.pages),
        "{} pages written",
        written.pages
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "diff file is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    println!("diff wrote {} pages", written.pages);

    // The log was cleared by the read: a second Diff writes nothing, and VMM writes can be
    // added with `extra`.
    let mut extra = vec![vec![0u64; (size / PAGE_SIZE / 64) as usize]];
    extra[0][(UNTRACKED / PAGE_SIZE / 64) as usize] |= 1 << (UNTRACKED / PAGE_SIZE % 64);
    let again = write_memory(
        &mem,
        &path,
        MemoryDump::Diff {
            vm: vm.fd(),
            extra: Some(&extra),
        },
    )
    .unwrap();
    assert_eq!(again.pages, 1);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file[UNTRACKED as usize], 0x77);
    assert_eq!(file[TARGET as usize], 0x42);
}

#[test]
fn diff_onto_a_file_of_another_size_is_refused() {
    let Some(vm) = vm_or_skip("diff_onto_a_file_of_another_size_is_refused") else {
        return;
    };
    let mem = create_guest_memory(2 * MIB, MemoryOptions::default()).unwrap();
    vm.register_memory_tracked(&mem, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    std::fs::write(&path, [1u8; 4096]).unwrap();
    assert!(matches!(
        write_memory(
            &mem,
            &path,
            MemoryDump::Diff {
                vm: vm.fd(),
                extra: None
            }
        ),
        Err(MemoryFileError::Size { .. })
    ));
}
