//! The snapshot state file: header, tag, postcard body, then the vCPU and VM state checks.
//! Never panics nor allocates beyond the bounds. Input: one mode byte, then bytes. Mode bit 0
//! clear: the bytes are a whole state file, opened with the fixed key (bit 1 clear) or without
//! a key (bit 1 set); a file that opens must re-encode to the same bytes. Mode bit 0 set: the
//! bytes are a state body, wrapped here in a valid header and tag, so that the decoder and the
//! validation behind the tag are reached; a state that decodes must encode and decode again
//! to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::snapshot::auth::tag;
use palisade::snapshot::format::HEADER_LEN;
use palisade::snapshot::{MemoryIdentity, SnapshotKey, StateFile};
use palisade::vstate::snapshot::{Host, VcpuState, VmState};

type Machine = (VmState, Vec<VcpuState>);

const KEY: &[u8; 32] = b"palisade fuzz key 0123456789abcd";

fn host() -> Host {
    Host {
        msrs: vec![
            0x10,
            0x3a,
            0x174,
            0x175,
            0x176,
            0x1a0,
            0x277,
            0x6e0,
            0xc000_0081,
        ],
        xsave_words: 1024,
        cpuid_leaves: vec![(0, 0), (1, 0), (7, 0), (0xd, 0), (0xd, 1), (0x8000_0000, 0)],
    }
}

fn check(machine: &Machine) {
    let host = host();
    let _ = machine.0.validate();
    for (i, vcpu) in machine.1.iter().enumerate() {
        let _ = vcpu.validate(i as u8, &host);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let key = SnapshotKey::new(KEY).ok();
    let key = if mode & 2 == 0 { key.as_ref() } else { None };
    let memory = MemoryIdentity {
        size: 128 << 20,
        sha256: None,
    };
    if mode & 1 == 0 {
        let Ok(file) = StateFile::open(bytes, key) else {
            return;
        };
        if let Ok(machine) = file.state::<Machine>() {
            check(&machine);
            let again = StateFile::encode(&machine, key, &file.memory).unwrap();
            assert_eq!(again, bytes);
        }
        return;
    }
    // Wrap the body in a valid header and tag.
    let mut file = StateFile::encode(&(), key, &memory).unwrap();
    file.truncate(HEADER_LEN);
    file[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    file.extend_from_slice(bytes);
    let t = tag(key, &[&file]);
    file.extend_from_slice(&t);
    let Ok(opened) = StateFile::open(&file, key) else {
        return;
    };
    if let Ok(machine) = opened.state::<Machine>() {
        check(&machine);
        let first = StateFile::encode(&machine, key, &memory).unwrap();
        let decoded: Machine = StateFile::open(&first, key).unwrap().state().unwrap();
        let second = StateFile::encode(&decoded, key, &memory).unwrap();
        assert_eq!(first, second);
    }
});
