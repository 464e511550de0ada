//! Memory files: 0600, never through a link, mapped private and hardened, and Diff files that
//! hold only the pages the guest wrote (real KVM).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::vstate::dirty::DirtyLog;
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
        ..Default::default()
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

/// 64-bit code at CODE: `mov byte [TARGET], 0x42; out 0x10, al`.
const CODE: u64 = 0x10_000;
const TARGET: u64 = 0x20_000;
const BY_THE_VMM: u64 = 0x30_000;

fn tracked(size: u64) -> GuestMemory {
    let opts = MemoryOptions {
        track_dirty_pages: true,
        ..Default::default()
    };
    create_guest_memory(size, opts).unwrap()
}

#[test]
fn diff_file_holds_only_the_pages_the_guest_and_the_vmm_wrote() {
    let test = "diff_file_holds_only_the_pages_the_guest_and_the_vmm_wrote";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    let size = 4 * MIB;
    let mem = tracked(size);
    vm.register_memory(&mem).unwrap();
    let fd = boot_vcpu(&vm, 0, 1);
    let mut code = vec![0xc6, 0x04, 0x25];
    code.extend_from_slice(&(TARGET as u32).to_le_bytes());
    code.extend_from_slice(&[0x42, 0xe6, 0x10]);
    mem.write_slice(&code, GuestAddress(CODE)).unwrap();
    regs::setup_regs(&fd, CODE, EntryMode::Linux64).unwrap();
    regs::setup_sregs(&mem, &fd, EntryMode::Linux64).unwrap();
    // The boot writes (code, page tables) are a first snapshot's business.
    DirtyLog::take(vm.fd(), &mem).unwrap();
    // A VMM write (a device filling a guest buffer): KVM never sees it, the bitmap does.
    mem.write_obj(0x77_u8, GuestAddress(BY_THE_VMM)).unwrap();

    let mut fd = fd;
    match fd.run().unwrap() {
        kvm_ioctls::VcpuExit::IoOut(0x10, _) => {}
        other => panic!("unexpected exit {other:?}"),
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(TARGET)).unwrap(), 0x42);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    let log = DirtyLog::take(vm.fd(), &mem).unwrap();
    let written = write_memory(&mem, &path, MemoryDump::Diff(&log)).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len() as u64, size);
    assert_eq!(file[TARGET as usize], 0x42);
    assert_eq!(
        file[BY_THE_VMM as usize], 0x77,
        "the VMM's write is missing"
    );
    assert_eq!(
        file[CODE as usize], 0,
        "a page the guest only read was written"
    );
    // The two pages, and at most the page tables whose accessed/dirty bits KVM set.
    assert!(
        (2..=8).contains(&written.pages),
        "{} pages written",
        written.pages
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "diff file is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );

    // Both logs were cleared by the take: the next one is empty.
    let again = DirtyLog::take(vm.fd(), &mem).unwrap();
    assert_eq!(again.pages(), 0);
    assert_eq!(
        write_memory(&mem, &path, MemoryDump::Diff(&again))
            .unwrap()
            .pages,
        0
    );
}

#[test]
fn a_diff_onto_a_copy_of_the_full_file_yields_the_full_image() {
    let test = "a_diff_onto_a_copy_of_the_full_file_yields_the_full_image";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    let size = 4 * MIB;
    let mem = tracked(size);
    vm.register_memory(&mem).unwrap();
    for page in 0..size / PAGE_SIZE {
        mem.write_obj(page, GuestAddress(page * PAGE_SIZE)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, merged) = (dir.path().join("base"), dir.path().join("merged"));
    write_memory(&mem, &base, MemoryDump::Full).unwrap();
    DirtyLog::take(vm.fd(), &mem).unwrap();
    std::fs::copy(&base, &merged).unwrap();
    for page in [3, 4, 700, size / PAGE_SIZE - 1] {
        mem.write_obj(page + 1_000_000, GuestAddress(page * PAGE_SIZE))
            .unwrap();
    }
    let log = DirtyLog::take(vm.fd(), &mem).unwrap();
    assert_eq!(log.pages(), 4);
    let written = write_memory(&mem, &merged, MemoryDump::Diff(&log)).unwrap();
    assert_eq!(written.pages, 4);
    let full = dir.path().join("full");
    write_memory(&mem, &full, MemoryDump::Full).unwrap();
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&full).unwrap()
    );
}

#[test]
fn diff_onto_a_file_of_another_size_or_open_to_others_is_refused() {
    let test = "diff_onto_a_file_of_another_size_or_open_to_others_is_refused";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    let mem = tracked(2 * MIB);
    vm.register_memory(&mem).unwrap();
    let log = DirtyLog::take(vm.fd(), &mem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diff");
    std::fs::write(&path, [1u8; 4096]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        write_memory(&mem, &path, MemoryDump::Diff(&log)),
        Err(MemoryFileError::Size { .. })
    ));
    let open = dir.path().join("open");
    std::fs::write(&open, []).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        write_memory(&mem, &open, MemoryDump::Diff(&log)),
        Err(MemoryFileError::Mode(0o644))
    ));
    assert_eq!(std::fs::metadata(&open).unwrap().len(), 0, "it was written");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(
        write_memory(&mem, &link, MemoryDump::Diff(&log)),
        Err(MemoryFileError::Io("open", _))
    ));
}
