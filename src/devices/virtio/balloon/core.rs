//! The balloon's shared device state with two queues (inflate, deflate) and up to three
//! optional ones (statistics, free page hinting, free page reporting, in that order, each
//! when its feature is offered): one [`DeviceCore`] of any of these sizes behind one type, and
//! [`each_core!`] to run the same code on whichever it is.
//!
//! Which queue is which follows the features the driver ACCEPTED, as virtio 1.x 5.5.2 and
//! Linux number them: an optional queue the driver declined takes no index, so a driver that
//! declines statistics but takes reporting has its reporting queue at index 2
//! ([`QueueRoles`]). The queues past the accepted ones are left unset by the driver and never
//! served.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::super::device_core::{DeviceCore, SharedCore};
use super::super::interrupt::Interrupt;
use super::super::queue::{drain, ChainOutcome};
use super::super::{ActivateContext, ActivateError};
use crate::vstate::memory::GuestMemory;

use super::{
    VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};

/// Which queue index serves which optional queue, for a set of features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRoles {
    /// The statistics queue.
    pub stats: Option<usize>,
    /// The free page hinting queue.
    pub hint: Option<usize>,
    /// The free page reporting queue.
    pub report: Option<usize>,
}

/// What a queue index is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Inflate (0) or deflate (1).
    Pages(usize),
    /// The statistics queue.
    Stats,
    /// The free page hinting queue.
    Hint,
    /// The free page reporting queue.
    Report,
    /// No queue the accepted features use.
    Unused,
}

impl QueueRoles {
    /// The queues of `features`: inflate and deflate, then each optional queue present.
    pub fn of(features: u64) -> Self {
        let mut next = 2;
        let mut take = |bit: u64| {
            (features & bit != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        Self {
            stats: take(VIRTIO_BALLOON_F_STATS_VQ),
            hint: take(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            report: take(VIRTIO_BALLOON_F_PAGE_REPORTING),
        }
    }

    /// The number of queues.
    pub fn count(&self) -> usize {
        2 + [self.stats, self.hint, self.report]
            .iter()
            .filter(|q| q.is_some())
            .count()
    }

    /// What queue `index` is for.
    pub fn role(&self, index: usize) -> Role {
        match index {
            0 | 1 => Role::Pages(index),
            i if Some(i) == self.stats => Role::Stats,
            i if Some(i) == self.hint => Role::Hint,
            i if Some(i) == self.report => Role::Report,
            _ => Role::Unused,
        }
    }
}

/// The core of a balloon by its number of queues.
pub enum BalloonCore {
    /// Inflate and deflate queues.
    Two(DeviceCore<2>),
    /// And one optional queue.
    Three(DeviceCore<3>),
    /// And two.
    Four(DeviceCore<4>),
    /// And all three.
    Five(DeviceCore<5>),
}

/// Runs `$body` with `$c` bound to the [`DeviceCore`] inside `$core`, whatever its size.
macro_rules! each_core {
    ($core:expr, $c:ident => $body:expr) => {
        match $core {
            $crate::devices::virtio::balloon::core::BalloonCore::Two($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Three($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Four($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Five($c) => $body,
        }
    };
}
pub(crate) use each_core;

impl SharedCore for BalloonCore {
    fn name(&self) -> &str {
        each_core!(self, c => c.name())
    }

    fn avail_features(&self) -> u64 {
        each_core!(self, c => c.avail_features())
    }

    fn queue_max_sizes(&self) -> &[u16] {
        each_core!(self, c => c.queue_max_sizes())
    }

    fn queue_events(&self) -> &[EventFd] {
        each_core!(self, c => SharedCore::queue_events(c))
    }

    fn interrupt(&self) -> &Arc<Interrupt> {
        each_core!(self, c => SharedCore::interrupt(c))
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        each_core!(self, c => c.activate(ctx))
    }

    fn reset(&mut self) -> Vec<Queue> {
        each_core!(self, c => c.reset())
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        each_core!(self, c => c.active_queues())
    }
}

impl BalloonCore {
    /// The roles of the queues the driver accepted; none while inactive.
    pub fn active_roles(&self) -> Option<QueueRoles> {
        each_core!(self, c => c
            .active
            .as_ref()
            .map(|a| QueueRoles::of(a.features & c.avail_features)))
    }
}

/// Serves queue `index` of `core` with `chain` (one call per request, given guest memory, the
/// queue and the request's head), at most one drain's worth, then finishes the drain; nothing
/// while the device waits for a reset or is inactive.
pub fn serve<const N: usize>(
    core: &mut DeviceCore<N>,
    index: usize,
    mut chain: impl FnMut(&GuestMemory, &Queue, u16) -> ChainOutcome,
) {
    if core.interrupt.needs_reset() {
        return;
    }
    let Some(active) = core.active.as_mut() else {
        return;
    };
    let mem = &active.mem;
    let Some(queue) = active.queues.get_mut(index) else {
        return;
    };
    let (end, used_any) = drain(queue, mem, |queue, head| chain(mem, queue, head));
    core.finish_drain(index, end, used_any);
}
