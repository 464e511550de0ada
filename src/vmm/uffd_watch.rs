//! Watches the connection to the Uffd page fault handler of a VM loaded with the Uffd memory
//! backend. The handler keeps it open while it serves; when it closes (the handler exited or
//! crashed), the VMM says so once in its log: from then on a vCPU that touches a page the
//! handler never served waits until the VM is stopped, and the log line is how an operator
//! learns why. Only hang-ups are watched (never input), so a handler that writes to the
//! connection cannot keep the VMM thread busy.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

/// The event-loop side of a Uffd handler's connection.
pub struct HandlerWatch {
    socket: UnixStream,
    path: PathBuf,
    closed: bool,
}

impl HandlerWatch {
    /// Watches `socket` (a duplicate of the VMM's end of the connection to `path`).
    pub fn new(socket: UnixStream, path: PathBuf) -> Self {
        Self {
            socket,
            path,
            closed: false,
        }
    }
}

impl MutEventSubscriber for HandlerWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let events = Events::new(&self.socket, EventSet::READ_HANG_UP | EventSet::HANG_UP);
        if let Err(e) = ops.add(events) {
            log::warn!("Cannot watch the page fault handler's connection: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if !self.closed {
            self.closed = true;
            log::error!(
                "The page fault handler at {} closed its connection: pages it has not served \
                 can no longer be filled, and a vCPU that touches one waits until the VM is \
                 stopped",
                self.path.display()
            );
        }
        let _ = ops.remove(events);
    }
}
