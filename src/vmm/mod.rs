//! The VMM: builds the VM from its resources, runs its vCPUs, and serves the event loop.

pub mod action;
pub mod builder;
pub mod clone_state;
pub mod console;
pub mod controller;
pub mod device_manager;
pub mod event_loop;
pub mod kernel;
pub mod machine_state;
pub mod restored_paths;
pub mod snapshot;
pub mod taps;
pub mod uffd_watch;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::devices::generation_id::GenerationState;
use crate::devices::i8042::I8042Device;
use crate::devices::serial::SerialDevice;
use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::vstate::exit::ExitCode;
use crate::vstate::snapshot::uffd::UffdBackend;
use crate::vstate::vcpu::{self, Vcpu, VcpuShared, Vcpus};
use crate::vstate::vm::Vm;

/// How long the VMM waits for vCPU threads to stop or park.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of starting or controlling a running VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event loop failed.
    #[error("The event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// A vCPU could not start.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// The vCPUs did not park in time.
    #[error("The vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The VM could not be built or started.
    #[error(transparent)]
    Start(#[from] controller::StartError),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A device could not take the request.
    #[error("Device error: {0}")]
    Device(#[source] std::io::Error),
}

/// A built VM whose vCPUs have not started.
pub struct Vmm {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    shared: Arc<VcpuShared>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    seccomp: Arc<SeccompFilters>,
    /// What the guest reads on the generation ID page.
    generation: GenerationState,
    /// The Uffd handler's connection and the VMM's copy of the userfaultfd, for a VM loaded
    /// with the Uffd memory backend.
    uffd: Option<UffdBackend>,
}

/// A VM whose vCPU threads run (or are paused).
pub struct RunningVm {
    /// Kept open for the life of the VM.
    _vm: Vm,
    vcpus: Vcpus,
    shared: Arc<VcpuShared>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    paused: bool,
    generation: GenerationState,
    /// Kept open for the life of the VM (see `vstate::snapshot::uffd`), after the vCPUs stop.
    _uffd: Option<UffdBackend>,
}

impl Vmm {
    /// Starts the vCPU threads (each installs its own filter and is held), then installs
    /// the VMM thread's filter, then releases the vCPUs together. Threads exist before the
    /// VMM thread is filtered, so its filter needs no thread-creation syscalls.
    pub fn start(self) -> Result<RunningVm, RunError> {
        self.launch(true)
    }

    /// As `start`, with the vCPUs released (`run`) or left paused.
    pub fn launch(self, run: bool) -> Result<RunningVm, RunError> {
        vcpu::install_kick_handler()?;
        let mut vcpus = Vcpus::new();
        let mut failure = None;
        for vcpu in self.vcpus {
            if let Err(e) = vcpu.spawn(&mut vcpus, self.shared.clone(), self.seccomp.clone()) {
                failure = Some(RunError::from(e));
                break;
            }
        }
        // INVARIANT: the VMM thread is filtered before any vCPU runs guest code.
        if failure.is_none() {
            // Its filter has no io_uring_setup: a drive built from now on is an error.
            crate::devices::virtio::block::uring::seal_thread();
            failure = self
                .seccomp
                .apply(ThreadKind::Vmm)
                .err()
                .map(RunError::from);
        }
        if let Some(e) = failure {
            // End the threads already held without running the guest.
            self.shared.request_exit(ExitCode::VmmError);
            vcpus.stop(VCPU_STOP_TIMEOUT);
            return Err(e);
        }
        if run {
            log::info!("Starting {} vCPU(s)", vcpus.len());
            vcpus.resume();
        }
        Ok(RunningVm {
            _vm: self.vm,
            vcpus,
            shared: self.shared,
            serial: self.serial,
            i8042: self.i8042,
            paused: !run,
            generation: self.generation,
            _uffd: self.uffd,
        })
    }
}

impl RunningVm {
    /// The serial console, for input.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// What the guest reads on the generation ID page.
    pub fn generation(&self) -> &GenerationState {
        &self.generation
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Takes every vCPU out of KVM_RUN and holds it there.
    pub fn pause(&mut self) -> Result<(), RunError> {
        if !self.vcpus.pause(VCPU_STOP_TIMEOUT) {
            self.vcpus.resume();
            return Err(RunError::PauseTimeout(VCPU_STOP_TIMEOUT));
        }
        self.paused = true;
        Ok(())
    }

    /// Lets the vCPUs run again.
    pub fn resume(&mut self) {
        self.vcpus.resume();
        self.paused = false;
    }

    /// Types Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), RunError> {
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del()
            .map_err(RunError::Device)
    }

    /// Stops every vCPU thread, then closes the VM; returns how many threads did not stop
    /// in time.
    pub fn stop(self) -> usize {
        let started = Instant::now();
        let left = self.vcpus.stop(VCPU_STOP_TIMEOUT);
        let stopped = started.elapsed();
        drop(self._vm);
        log::debug!(
            "vCPUs stopped in {} us; closing the VM (KVM's teardown) took {} us",
            stopped.as_micros(),
            (started.elapsed() - stopped).as_micros()
        );
        left
    }
}
