//! The VMM thread's epoll loop: API requests, the exit request, console input and the
//! periodic metrics flush, all on one thread that owns the VM state.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::action::{ActionResult, VmmAction};
use super::console::{self, RawTerminal};
use super::controller::Controller;
use super::RunError;
use crate::vstate::exit::{ExitCode, ExitRequest};

/// How often metrics are flushed, as Firecracker does.
const METRICS_PERIOD: Duration = Duration::from_secs(60);

const EVENT_EXIT: u32 = 0;
const EVENT_API: u32 = 1;
const EVENT_STDIN: u32 = 2;
const EVENT_METRICS: u32 = 3;

/// The VMM end of the API channel: requests in, answers out, an event to wake up.
pub struct ApiChannel {
    /// Actions parsed by the api thread.
    pub requests: Receiver<VmmAction>,
    /// Answers, one per action, in order.
    pub responses: Sender<ActionResult>,
    /// Written by the api thread after each request.
    pub event: EventFd,
}

struct VmmEvents {
    controller: Controller,
    exit: Arc<ExitRequest>,
    api: Option<ApiChannel>,
    metrics_timer: Option<TimerFd>,
    console: Option<RawTerminal>,
    console_checked: bool,
}

impl VmmEvents {
    fn handle_api(&mut self) {
        let Some(api) = &self.api else { return };
        let _ = api.event.read();
        while let Ok(action) = api.requests.try_recv() {
            let result = self.controller.handle(action);
            if api.responses.send(result).is_err() {
                log::error!("The api thread is gone; its answer is dropped");
            }
        }
    }

    /// Starts forwarding stdin to the serial port once a VM runs and stdin is a terminal.
    fn watch_console(&mut self, ops: &mut EventOps) {
        if self.console_checked || self.controller.running().is_none() {
            return;
        }
        self.console_checked = true;
        if let Some(raw) = RawTerminal::enable() {
            let stdin = std::io::stdin();
            if let Err(e) = ops.add(Events::with_data(&stdin, EVENT_STDIN, EventSet::IN)) {
                log::warn!("Cannot watch stdin for console input: {e}");
            }
            self.console = Some(raw);
        }
    }
}

impl MutEventSubscriber for VmmEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EVENT_EXIT => {
                let _ = self.exit.event().read();
            }
            EVENT_API => self.handle_api(),
            EVENT_STDIN => {
                let keep = self
                    .controller
                    .running()
                    .is_some_and(|vm| console::forward_input(vm.serial()));
                if !keep || events.event_set().contains(EventSet::HANG_UP) {
                    let _ = ops.remove(events);
                }
            }
            EVENT_METRICS => {
                if let Some(timer) = self.metrics_timer.as_mut() {
                    let _ = timer.wait();
                }
                if let Err(e) = crate::metrics::flush() {
                    log::warn!("Periodic metrics flush failed: {e}");
                }
            }
            other => log::warn!("Unexpected event {other}"),
        }
        self.watch_console(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let add = |ops: &mut EventOps, fd: &dyn AsRawFd, data: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                log::error!("Cannot watch event {data}: {e}");
            }
        };
        add(ops, self.exit.event(), EVENT_EXIT);
        if let Some(api) = &self.api {
            add(ops, &api.event, EVENT_API);
        }
        if let Some(timer) = &self.metrics_timer {
            add(ops, timer, EVENT_METRICS);
        }
        self.watch_console(ops);
    }
}

fn metrics_timer() -> Option<TimerFd> {
    let mut timer = TimerFd::new()
        .inspect_err(|e| log::warn!("No periodic metrics flush: {e}"))
        .ok()?;
    timer
        .reset(METRICS_PERIOD, Some(METRICS_PERIOD))
        .inspect_err(|e| log::warn!("No periodic metrics flush: {e}"))
        .ok()?;
    Some(timer)
}

/// Serves the devices of a VM that has just started (InstanceStart, or the boot from a config
/// file): the controller hands them over once, and each subscriber registers its events.
fn add_device_subscribers(
    manager: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    events: &Arc<Mutex<VmmEvents>>,
) {
    let new = events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .controller
        .take_new_subscribers();
    for subscriber in new {
        manager.add_subscriber(subscriber);
    }
}

/// Runs the event loop until the VM ends; stops the vCPUs and returns the exit code.
///
/// With `boot`, the VM starts at once (from a config file), after the loop's own resources
/// exist: the VMM thread's seccomp filter, installed at start, allows no new epoll or timer.
pub fn run(
    mut controller: Controller,
    exit: Arc<ExitRequest>,
    api: Option<ApiChannel>,
    boot: bool,
) -> Result<i32, RunError> {
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(RunError::EventLoop)?;
    let metrics_timer = metrics_timer();
    if boot {
        controller.start_vm()?;
        // Firecracker's line, which tools wait for.
        log::info!("Successfully started microvm that was configured from one single json");
    }
    let events = Arc::new(Mutex::new(VmmEvents {
        controller,
        exit: exit.clone(),
        api,
        metrics_timer,
        console: None,
        console_checked: false,
    }));
    // A first line at once, as Firecracker does, with the start-up figures.
    if let Err(e) = crate::metrics::flush() {
        log::warn!("Metrics flush failed: {e}");
    }
    manager.add_subscriber(events.clone());
    add_device_subscribers(&mut manager, &events);
    while exit.code().is_none() {
        manager.run().map_err(RunError::EventLoop)?;
        add_device_subscribers(&mut manager, &events);
    }
    let code = exit.code().unwrap_or(ExitCode::VmmError as i32);
    let mut events = events.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(vm) = events.controller.take_running() {
        let left = vm.stop();
        if left > 0 {
            log::warn!("{left} vCPU thread(s) did not stop in time");
        }
    }
    // Restore the terminal before the process exits.
    events.console.take();
    if let Err(e) = crate::metrics::flush() {
        log::warn!("Final metrics flush failed: {e}");
    }
    log::info!("VM ended; exit code {code}");
    if let Some(at) = exit.requested_at() {
        log::debug!(
            "VMM time from the exit request to the end of the VM: {} us",
            at.elapsed().as_micros()
        );
    }
    Ok(code)
}
