//! Refusals of the state file parser, one test each, and the round trip.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    regs: Vec<u64>,
    name: String,
}

fn sample() -> Sample {
    Sample {
        regs: vec![1, 2, 0xdead_beef],
        name: "vcpu0".into(),
    }
}

fn key() -> SnapshotKey {
    SnapshotKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
}

fn mem() -> MemoryIdentity {
    MemoryIdentity {
        size: 128 << 20,
        sha256: None,
    }
}

fn encoded() -> Vec<u8> {
    StateFile::encode(&sample(), Some(&key()), &mem()).unwrap()
}

fn open(bytes: &[u8]) -> Result<Sample, FormatError> {
    StateFile::open(bytes, Some(&key()))?.state()
}

/// Rewrites the tag so that a change to the header passes authentication with the key: the
/// check that follows the tag is then what refuses it.
fn retag(bytes: &mut [u8]) {
    let split = bytes.len() - TAG_LEN;
    let tag = auth::tag(Some(&key()), &[&bytes[..split]]);
    bytes[split..].copy_from_slice(&tag);
}

#[test]
fn state_round_trips_with_a_key_and_without() {
    assert_eq!(open(&encoded()).unwrap(), sample());
    let plain = StateFile::encode(&sample(), None, &mem()).unwrap();
    let file = StateFile::open(&plain, None).unwrap();
    assert!(!file.keyed);
    assert_eq!(file.memory, mem());
    assert_eq!(file.state::<Sample>().unwrap(), sample());
}

#[test]
fn every_flipped_bit_is_refused() {
    let good = encoded();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(open(&bad).is_err(), "flip at byte {i} accepted");
    }
}

#[test]
fn tampered_state_is_refused_as_bad_tag() {
    let mut bad = encoded();
    bad[HEADER_LEN + 1] ^= 1;
    assert!(matches!(open(&bad), Err(FormatError::BadTag)));
}

#[test]
fn another_key_is_refused_as_bad_tag() {
    let other = SnapshotKey::new(&[9; 32]).unwrap();
    assert!(matches!(
        StateFile::open(&encoded(), Some(&other)),
        Err(FormatError::BadTag)
    ));
}

#[test]
fn keyed_file_without_the_key_is_refused() {
    assert!(matches!(
        StateFile::open(&encoded(), None),
        Err(FormatError::KeyRequired)
    ));
}

#[test]
fn unkeyed_file_is_refused_when_a_key_is_given() {
    let plain = StateFile::encode(&sample(), None, &mem()).unwrap();
    assert!(matches!(
        StateFile::open(&plain, Some(&key())),
        Err(FormatError::NotAuthenticated)
    ));
}

#[test]
fn every_truncation_is_refused() {
    let good = encoded();
    for len in 0..good.len() {
        assert!(
            matches!(open(&good[..len]), Err(FormatError::Truncated { .. })),
            "truncation to {len} not refused as truncated"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bad = encoded();
    bad.push(0);
    assert!(matches!(open(&bad), Err(FormatError::TrailingBytes(1))));
}

#[test]
fn foreign_file_is_refused() {
    let mut bad = encoded();
    bad[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    assert!(matches!(open(&bad), Err(FormatError::ForeignFile)));
    let json = br#"{"vm_state": 0, "padding": "........................................................................................"}"#;
    assert!(matches!(open(json), Err(FormatError::ForeignFile)));
}

#[test]
fn other_version_is_refused() {
    let mut bad = encoded();
    bad[8..12].copy_from_slice(&2u32.to_le_bytes());
    retag(&mut bad);
    assert!(matches!(
        open(&bad),
        Err(FormatError::UnsupportedVersion { found: 2 })
    ));
}

#[test]
fn unknown_flags_and_reserved_bits_are_refused() {
    let mut bad = encoded();
    bad[12] |= 4;
    retag(&mut bad);
    assert!(matches!(open(&bad), Err(FormatError::BadHeader(_))));
    let mut bad = encoded();
    bad[70] = 1;
    retag(&mut bad);
    assert!(matches!(open(&bad), Err(FormatError::BadHeader(_))));
    let mut bad = encoded();
    bad[40] = 1; // A memory hash without its flag.
    retag(&mut bad);
    assert!(matches!(open(&bad), Err(FormatError::BadHeader(_))));
}

#[test]
fn oversized_state_length_is_refused_before_allocation() {
    let mut bad = encoded();
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(open(&bad), Err(FormatError::TooLarge(u64::MAX))));
    bad[16..24].copy_from_slice(&(MAX_STATE_LEN + 1).to_le_bytes());
    assert!(matches!(open(&bad), Err(FormatError::TooLarge(_))));
}

#[test]
fn authentic_state_of_the_wrong_shape_is_refused() {
    let other = StateFile::encode(&(7u8, 9u8), Some(&key()), &mem()).unwrap();
    assert!(matches!(open(&other), Err(FormatError::Malformed(_))));
    let longer = StateFile::encode(&(sample(), 1u32), Some(&key()), &mem()).unwrap();
    assert!(matches!(open(&longer), Err(FormatError::UndecodedBytes(_))));
}

#[test]
fn huge_vector_length_inside_an_authentic_state_fails_without_allocating_it() {
    // A varint length of 2^60 elements in an otherwise valid, tagged file.
    let mut body = vec![0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
    body.push(0);
    let mut bytes = StateFile::encode(&(), Some(&key()), &mem()).unwrap();
    bytes.truncate(HEADER_LEN);
    bytes[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&[0; TAG_LEN]);
    retag(&mut bytes);
    assert!(matches!(open(&bytes), Err(FormatError::Malformed(_))));
}

#[test]
fn memory_file_of_another_size_is_refused() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[1; 8192]).unwrap();
    let id = MemoryIdentity::of_file(&f, false).unwrap();
    let bytes = StateFile::encode(&sample(), Some(&key()), &id).unwrap();
    assert_eq!(
        StateFile::decode::<Sample>(&bytes, Some(&key()), &f).unwrap(),
        sample()
    );
    f.write_all(&[1]).unwrap();
    assert!(matches!(
        StateFile::decode::<Sample>(&bytes, Some(&key()), &f),
        Err(FormatError::MemoryMismatch("size differs"))
    ));
}

#[test]
fn memory_file_with_other_contents_is_refused_when_hashed() {
    use std::os::unix::fs::FileExt;
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[1; 8192]).unwrap();
    let id = MemoryIdentity::of_file(&f, true).unwrap();
    let bytes = StateFile::encode(&sample(), Some(&key()), &id).unwrap();
    assert!(StateFile::decode::<Sample>(&bytes, Some(&key()), &f).is_ok());
    f.write_all_at(&[2], 4096).unwrap();
    assert!(matches!(
        StateFile::decode::<Sample>(&bytes, Some(&key()), &f),
        Err(FormatError::MemoryMismatch("contents differ"))
    ));
}

#[test]
fn state_file_is_created_0600_and_an_existing_one_is_replaced_whole() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, b"an older state file").unwrap();
    let old = std::fs::File::open(&path).unwrap();
    StateFile::write(&path, &encoded()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(open(&StateFile::read(&path).unwrap()).unwrap(), sample());
    assert_eq!(
        old.metadata().unwrap().len(),
        19,
        "the old file was replaced, not rewritten"
    );
    // Prepared but not committed: the file at the path is untouched, no temp is left.
    let pending = StateFile::prepare(&path, b"garbage").unwrap();
    drop(pending);
    assert_eq!(open(&StateFile::read(&path).unwrap()).unwrap(), sample());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn reading_refuses_oversized_files_links_and_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_LEN + 1).unwrap();
    assert!(matches!(
        StateFile::read(&big),
        Err(FormatError::TooLarge(_))
    ));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&big, &link).unwrap();
    assert!(matches!(
        StateFile::read(&link),
        Err(FormatError::Io("open", _))
    ));
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(matches!(
        StateFile::read(&fifo),
        Err(FormatError::BadHeader("not a regular file"))
    ));
}

#[test]
fn header_describes_a_keyed_file_without_the_key_but_checks_its_shape() {
    let header = StateFile::header(&encoded()).unwrap();
    assert_eq!(header.version, FORMAT_VERSION);
    assert!(header.keyed);
    assert_eq!(header.memory, mem());
    let mut short = encoded();
    short.pop();
    assert!(matches!(
        StateFile::header(&short),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn unverified_state_decodes_a_keyed_file_without_the_key_but_refuses_a_bad_shape() {
    assert_eq!(
        StateFile::unverified_state::<Sample>(&encoded()).unwrap(),
        sample()
    );
    let mut short = encoded();
    short.pop();
    assert!(matches!(
        StateFile::unverified_state::<Sample>(&short),
        Err(FormatError::Truncated { .. })
    ));
    // A state section that holds more than the type: refused, not half-read.
    let longer = StateFile::encode(&(sample(), 7u8), Some(&key()), &mem()).unwrap();
    assert!(matches!(
        StateFile::unverified_state::<Sample>(&longer),
        Err(FormatError::UndecodedBytes(_))
    ));
}
