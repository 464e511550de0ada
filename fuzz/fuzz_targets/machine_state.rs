//! A state file's body decoded as the whole `MachineState`, then every check a load runs
//! before it needs KVM: the machine configuration, the device configurations (each drive's
//! file replaced by one scratch file, so the input never names a host path that is opened),
//! the clone state (i8042, rate limiters against their configured buckets, the generation's
//! room for one more restore) and its use (the i8042 and the next generation built), every
//! virtio transport restored onto a fresh entropy device over a small guest memory (the
//! DRIVER_OK checks of an active one included), a balloon built from the state's
//! configuration with the last transport restored onto it and its run-time state restored
//! (a restored balloon holds no page outside guest RAM and no `actual` past it), and the vCPU
//! and VM state checks. None may panic. Input: the body (postcard), wrapped here in a valid unkeyed header and tag.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade::devices::i8042::I8042Device;
use palisade::devices::virtio::balloon::Balloon;
use palisade::devices::virtio::mmio::MmioTransport;
use palisade::devices::virtio::rng::{EntropyConfig, Rng};
use palisade::metrics::{BalloonDeviceMetrics, EntropyDeviceMetrics};
use palisade::snapshot::auth::tag;
use palisade::snapshot::format::HEADER_LEN;
use palisade::snapshot::{MemoryIdentity, StateFile};
use palisade::vmm::machine_state::{DeviceConfigs, MachineState};
use palisade::vstate::exit::ExitRequest;
use palisade::vstate::memory::{create_guest_memory, Backing, GuestMemory, MemoryOptions};
use palisade::vstate::snapshot::Host;

/// Bytes of the guest memory transports are restored over.
const GUEST_MEMORY: u64 = 2 << 20;
/// Transports restored per input at most (a state file holds at most 19).
const MAX_TRANSPORTS: usize = 20;

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

/// One scratch file every drive points at (under TMPDIR: the run's scratch dir).
fn scratch_disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("machine_state-{}.img", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        path
    })
}

fn guest_memory() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| {
        let opts = MemoryOptions {
            backing: Backing::Normal,
            lock: false,
            track_dirty_pages: false,
        };
        create_guest_memory(GUEST_MEMORY, opts).unwrap()
    })
}

fn wrap(body: &[u8]) -> Vec<u8> {
    let memory = MemoryIdentity {
        size: 128 << 20,
        sha256: None,
    };
    let mut file = StateFile::encode(&(), None, &memory).unwrap();
    file.truncate(HEADER_LEN);
    file[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(body);
    let t = tag(None, &[&file]);
    file.extend_from_slice(&t);
    file
}

fn check_transports(state: &MachineState) {
    for saved in state.transports.iter().take(MAX_TRANSPORTS) {
        let metrics = Arc::new(EntropyDeviceMetrics::default());
        let rng = Rng::new(&EntropyConfig::default(), metrics).unwrap();
        let rng = Arc::new(Mutex::new(rng));
        let mut transport = MmioTransport::new(rng, guest_memory().clone()).unwrap();
        let valid = transport.validate(saved).is_ok();
        let restored = transport.restore(saved);
        assert!(
            valid || restored.is_err(),
            "restore took what validate refused"
        );
    }
}

/// The balloon of `state` (built from its configuration), its transport restored from the
/// last saved one, then its run-time state.
fn check_balloon(state: &MachineState) {
    let Ok(configs) = serde_json::from_str::<DeviceConfigs>(&state.device_configs) else {
        return;
    };
    let (Some(config), Some(saved), Some(transport)) =
        (configs.balloon, &state.balloon, state.transports.last())
    else {
        return;
    };
    let metrics = Arc::new(BalloonDeviceMetrics::default());
    let Ok(balloon) = Balloon::new(&config, metrics) else {
        return;
    };
    let balloon = Arc::new(Mutex::new(balloon));
    let Ok(mut mmio) = MmioTransport::new(balloon.clone(), guest_memory().clone()) else {
        return;
    };
    if mmio.restore(transport).is_err() {
        return;
    }
    let mut balloon = balloon.lock().unwrap();
    if balloon.restore_state(saved).is_ok() {
        let pages = (GUEST_MEMORY >> 12) as u32;
        assert!(balloon.inflated_pages() <= pages);
        assert!(balloon.actual_pages() <= pages);
    }
}

fn check_devices(state: &MachineState) {
    let Ok(mut configs) = serde_json::from_str::<DeviceConfigs>(&state.device_configs) else {
        let _ = state.device_configs(None);
        return;
    };
    for drive in &mut configs.drives {
        drive.path_on_host = scratch_disk().to_string_lossy().into_owned();
    }
    let mut local = state.clone();
    local.device_configs = serde_json::to_string(&configs).unwrap();
    let Ok(checked) = local.device_configs(None) else {
        return;
    };
    if state.validate_clone_state(&checked).is_ok() {
        let exit = Arc::new(ExitRequest::new().unwrap());
        let i8042 = I8042Device::from_state(exit, &state.i8042).unwrap();
        assert_eq!(i8042.state(), state.i8042);
        let next = state.generation.next().unwrap();
        assert_eq!(next.counter, state.generation.counter + 1);
        assert_ne!(next.id, state.generation.id);
    }
}

fuzz_target!(|data: &[u8]| {
    let file = wrap(data);
    let Ok(opened) = StateFile::open(&file, None) else {
        return;
    };
    let Ok(state) = opened.state::<MachineState>() else {
        return;
    };
    let _ = state.machine_config();
    check_devices(&state);
    check_transports(&state);
    check_balloon(&state);
    let host = host();
    let _ = state.vm.validate();
    for (i, vcpu) in state.vcpus.iter().enumerate().take(256) {
        let _ = vcpu.validate(i as u8, &host);
    }
});
