//! The balloon's shared device state with two queues (inflate, deflate) or three (and the
//! statistics queue, when `stats_polling_interval_s` is not 0): one [`DeviceCore`] of either
//! size behind one type, and [`each_core!`] to run the same code on whichever it is.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::super::device_core::{DeviceCore, SharedCore};
use super::super::interrupt::Interrupt;
use super::super::{ActivateContext, ActivateError};

/// The core of a balloon without or with the statistics queue.
pub enum BalloonCore {
    /// Inflate and deflate queues.
    Plain(DeviceCore<2>),
    /// Inflate, deflate and statistics queues.
    Stats(DeviceCore<3>),
}

/// Runs `$body` with `$c` bound to the [`DeviceCore`] inside `$core`, whatever its size.
macro_rules! each_core {
    ($core:expr, $c:ident => $body:expr) => {
        match $core {
            $crate::devices::virtio::balloon::core::BalloonCore::Plain($c) => $body,
            $crate::devices::virtio::balloon::core::BalloonCore::Stats($c) => $body,
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
