//! The VMM: builds the VM, runs its vCPUs and its event loop until the guest ends.

pub mod builder;
pub mod console;
pub mod kernel;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::i8042::I8042Device;
use crate::devices::serial::SerialDevice;
use crate::vstate::exit::{ExitCode, ExitRequest};
use crate::vstate::vcpu::{self, Vcpu, VcpuShared};
use crate::vstate::vm::Vm;

/// How long the VMM waits for vCPU threads to stop before it exits anyway.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of running the VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event loop failed.
    #[error("The event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// A vCPU could not start.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
}

/// A built VM.
pub struct Vmm {
    /// Kept open for the life of the VM.
    #[allow(dead_code)]
    vm: Vm,
    vcpus: Vec<Vcpu>,
    shared: Arc<VcpuShared>,
    serial: Arc<Mutex<SerialDevice>>,
    #[allow(dead_code)]
    i8042: Arc<Mutex<I8042Device>>,
}

/// Wakes the event loop when someone asks the VM to end.
struct ExitWatcher(Arc<ExitRequest>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            log::error!("Cannot watch the exit event: {e}");
        }
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

impl Vmm {
    /// Starts every vCPU together and runs the event loop until the VM ends; returns the
    /// process exit code.
    pub fn run(self) -> Result<i32, RunError> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(RunError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(self.shared.exit.clone()))));
        let _raw_terminal = console::RawTerminal::enable().inspect(|_| {
            manager.add_subscriber(Arc::new(Mutex::new(console::ConsoleInput::new(
                self.serial.clone(),
            ))));
        });

        vcpu::install_kick_handler()?;
        let barrier = Arc::new(Barrier::new(self.vcpus.len() + 1));
        let mut handles = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            match vcpu.start(self.shared.clone(), barrier.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Release the threads already waiting, then stop them.
                    self.shared.exit.request(ExitCode::VmmError);
                    barrier.wait();
                    vcpu::stop_vcpus(&self.shared, handles, VCPU_STOP_TIMEOUT);
                    return Err(e.into());
                }
            }
        }
        log::info!("Starting {} vCPU(s)", handles.len());
        barrier.wait();

        while self.shared.exit.code().is_none() {
            manager.run().map_err(RunError::EventLoop)?;
        }
        let code = self.shared.exit.code().unwrap_or(ExitCode::VmmError as i32);
        let left = vcpu::stop_vcpus(&self.shared, handles, VCPU_STOP_TIMEOUT);
        if left > 0 {
            log::warn!("{left} vCPU thread(s) did not stop in time");
        }
        log::info!("VM ended; exit code {code}");
        Ok(code)
    }
}
