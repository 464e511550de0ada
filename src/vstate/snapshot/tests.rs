//! The whole foundation on real KVM: a running guest is paused, its vCPU, VM and memory
//! saved through an authenticated state file and a memory file, and restored into a new VM
//! (memory mapped, not read) in the order the wiring slice must follow; the clone continues
//! where the guest stopped, and the original keeps running on its own.

use std::fs::File;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::snapshot::{MemoryIdentity, SnapshotKey, StateFile};
use crate::vstate::memory::{create_guest_memory, MemoryOptions};
use crate::vstate::snapshot::test_kvm::{boot_vcpu, vm_or_skip};
use crate::vstate::vm::Vm;

const SIZE: u64 = 4 << 20;
const CODE: u64 = 0x10_000;
const COUNTER: u64 = 0x20_000;
const PORT: u16 = 0x10;

/// `loop: inc rbx; inc qword [COUNTER]; mov rax, [COUNTER]; out PORT, al; jmp loop`.
fn guest_code() -> Vec<u8> {
    let mut c = vec![0x48, 0xff, 0xc3];
    c.extend_from_slice(&[0x48, 0xff, 0x04, 0x25]);
    c.extend_from_slice(&(COUNTER as u32).to_le_bytes());
    c.extend_from_slice(&[0x48, 0x8b, 0x04, 0x25]);
    c.extend_from_slice(&(COUNTER as u32).to_le_bytes());
    c.extend_from_slice(&[0xe6, PORT as u8]);
    let back = -(c.len() as i8 + 2);
    c.extend_from_slice(&[0xeb, back as u8]);
    c
}

/// Runs until the guest's next OUT and returns the byte it wrote.
fn next_out(fd: &mut VcpuFd) -> u8 {
    match fd.run().unwrap() {
        VcpuExit::IoOut(PORT, data) => data[0],
        other => panic!("unexpected exit {other:?}"),
    }
}

/// Completes the pending OUT without running guest code: KVM finishes an I/O exit only on
/// the next KVM_RUN, so a vCPU is in a consistent state only after one (here with
/// immediate_exit set, as a kick does).
fn settle(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(1);
    let err = fd.run().unwrap_err();
    assert_eq!(err.errno(), libc::EINTR);
    fd.set_kvm_immediate_exit(0);
}

#[test]
fn a_running_guest_continues_after_restore_into_a_new_vm_from_mapped_memory() {
    let Some(vm1) =
        vm_or_skip("a_running_guest_continues_after_restore_into_a_new_vm_from_mapped_memory")
    else {
        return;
    };
    let host = Host::probe(vm1.kvm()).unwrap();
    let mem1 = create_guest_memory(SIZE, MemoryOptions::default()).unwrap();
    vm1.register_memory(&mem1).unwrap();
    let mut fd1 = boot_vcpu(&vm1, 0, 1);
    mem1.write_slice(&guest_code(), GuestAddress(CODE)).unwrap();
    regs::setup_regs(&fd1, CODE, EntryMode::Linux64).unwrap();
    regs::setup_sregs(&mem1, &fd1, EntryMode::Linux64).unwrap();
    for want in 1..=3 {
        assert_eq!(next_out(&mut fd1), want);
    }
    settle(&mut fd1);

    // Save: vCPUs, then the VM, then memory; the state file binds the memory file.
    let dir = tempfile::tempdir().unwrap();
    let (state_path, mem_path) = (dir.path().join("state"), dir.path().join("mem"));
    let machine = (
        VmState::capture(vm1.fd()).unwrap(),
        vec![VcpuState::capture(&fd1, 0, &host).unwrap()],
    );
    write_memory(&mem1, &mem_path, MemoryDump::Full).unwrap();
    let identity = MemoryIdentity::of_file(&File::open(&mem_path).unwrap(), true).unwrap();
    let key = SnapshotKey::new(&[0x42; 32]).unwrap();
    let bytes = StateFile::encode(&machine, Some(&key), &identity).unwrap();
    StateFile::write(&state_path, &bytes).unwrap();

    // Restore in a new VM: check the files, map memory, register it, restore each vCPU, then
    // the VM.
    let start = std::time::Instant::now();
    let bytes = StateFile::read(&state_path).unwrap();
    let mem_file = File::open(&mem_path).unwrap();
    let opened = StateFile::open(&bytes, Some(&key)).unwrap();
    opened.check_memory_file(&mem_file).unwrap();
    let checked = start.elapsed();
    let (vm_state, vcpu_states): (VmState, Vec<VcpuState>) = opened.state().unwrap();
    let vm2 = Vm::new().unwrap();
    let mem2 = map_memory_file(&mem_file, opened.memory.size, MemoryOptions::default()).unwrap();
    vm2.register_memory(&mem2).unwrap();
    let mut fd2 = vm2.fd().create_vcpu(0).unwrap();
    vcpu_states[0].restore(&fd2, 0, &host).unwrap();
    vm_state.restore(vm2.fd(), false).unwrap();
    println!(
        "restore of a {} MiB guest took {:?}, of which reading and checking the files \
         (HMAC, SHA-256 of memory) {checked:?}",
        SIZE >> 20,
        start.elapsed()
    );

    // The clone continues where the guest stopped, and so does the original, apart.
    for want in 4..=6 {
        assert_eq!(next_out(&mut fd2), want);
    }
    assert_eq!(fd2.get_regs().unwrap().rbx, 6);
    assert_eq!(next_out(&mut fd1), 4);
    assert_eq!(mem1.read_obj::<u64>(GuestAddress(COUNTER)).unwrap(), 4);
    assert_eq!(mem2.read_obj::<u64>(GuestAddress(COUNTER)).unwrap(), 6);
    // The clone's writes stayed private: the memory file still holds the saved counter.
    let on_disk = std::fs::read(&mem_path).unwrap();
    assert_eq!(on_disk[COUNTER as usize], 3);
}
