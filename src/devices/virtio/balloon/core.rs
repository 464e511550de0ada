//! The balloon's shared device state with two queues (inflate, deflate), three or four (the
//! statistics queue when `stats_polling_interval_s` is not 0, then the free page reporting
//! queue when `free_page_reporting`): one [`DeviceCore`] of any of these sizes behind one type,
//! and [`each_core!`] to run the same code on whichever it is.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::super::device_core::{DeviceCore, SharedCore};
use super::super::interrupt::Interrupt;
use super::super::{ActivateContext, ActivateError};

/// The core of a balloon by its number of queues.
pub enum BalloonCore {
    /// Inflate and deflate queues.
    Two(DeviceCore<2>),
    /// And the statistics or the reporting queue.
    Three(DeviceCore<3>),
    /// And both.
    Four(DeviceCore<4>),
}

/// Runs `$body` with `$c` bound to the [`DeviceCore`] inside `$core`, whatever its size.
macro_rules! each_core {
    ($core:expr, $c:ident => $body:expr) => {
        match $core {
            $crate::devices::virtio::balloon::core::BalloonCore::Two($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Three($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Four($c) => $body,
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
