//! The balloon on the event loop: its config space, its reset, the notifications of its
//! queues, and the statistics queue with its polling timer.

use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

use super::core::{each_core, BalloonCore, QueueRoles, Role};
use super::snapshot::ram_pages;
use super::stats::read_stats;
use super::Balloon;
use crate::devices::virtio::chain;
use crate::devices::virtio::device_core::{core_accessors, CoreDevice, SharedCore};
use crate::devices::virtio::queue::{
    charge_descriptors, drain, ChainOutcome, DrainEnd, QueueError, DESCRIPTOR_COST,
};

/// The event data of the statistics timer (the queues use their index).
const EVENT_STATS_TIMER: u32 = 100;

impl Balloon {
    /// Arms the statistics timer with the current interval (a failure counts as an event
    /// failure).
    pub(super) fn arm_stats_timer(&mut self) {
        let period = Duration::from_secs(u64::from(self.stats_interval_s));
        if let Some(timer) = self.stats_timer.as_mut() {
            if timer.reset(period, Some(period)).is_err() {
                self.metrics.event_fails.inc();
            }
        }
    }

    /// The statistics queue was notified: reads each new buffer and keeps the last good one
    /// until the next request; a buffer it replaces, and every refused one, goes back at once.
    pub fn process_stats_queue(&mut self) {
        let Some(index) = self.core.active_roles().and_then(|r| r.stats) else {
            return;
        };
        let (held, stats, segments) = (&mut self.stats_head, &mut self.stats, &mut self.segments);
        let metrics = &*self.metrics;
        each_core!(&mut self.core, core => {
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
            let mut give_back = Vec::new();
            let (mut end, mut used_any) = drain(queue, mem, |queue: &Queue, head| {
                let desc_table = GuestAddress(queue.desc_table());
                if let Err(e) = chain::read_chain(mem, desc_table, queue.size(), head, segments) {
                    return ChainOutcome::Broken(e.into());
                }
                if !read_stats(mem, segments, stats) {
                    metrics.stats_update_fails.inc();
                    return charge_descriptors(ChainOutcome::Used(0), segments.len());
                }
                metrics.stats_updates_count.inc();
                if let Some(old) = held.replace(head) {
                    give_back.push(old);
                }
                ChainOutcome::Taken {
                    moved: (segments.len() as u64).saturating_mul(DESCRIPTOR_COST),
                }
            });
            for head in give_back {
                match queue.add_used(mem, head, 0) {
                    Ok(()) => used_any = true,
                    Err(e) => end = DrainEnd::Broken(QueueError::Used(e)),
                }
            }
            core.finish_drain(index, end, used_any);
        })
    }

    /// The polling timer fired (its expirations read, so it does not fire again at once).
    fn on_stats_timer(&mut self) {
        if let Some(timer) = self.stats_timer.as_mut() {
            let _ = timer.wait();
        }
        self.request_stats();
    }

    /// The polling interval passed: the held buffer goes back to ask for fresh values.
    pub fn request_stats(&mut self) {
        let Some(index) = self.core.active_roles().and_then(|r| r.stats) else {
            return;
        };
        let held = &mut self.stats_head;
        each_core!(&mut self.core, core => {
            if core.interrupt.needs_reset() {
                return;
            }
            let Some(active) = core.active.as_mut() else {
                return;
            };
            let (Some(queue), Some(head)) = (active.queues.get_mut(index), held.take()) else {
                return;
            };
            let end = match queue.add_used(&active.mem, head, 0) {
                Ok(()) => DrainEnd::Empty,
                Err(e) => DrainEnd::Broken(QueueError::Used(e)),
            };
            core.finish_drain(index, end, true);
        })
    }
}

impl CoreDevice for Balloon {
    const DEVICE_TYPE: u32 = VIRTIO_ID_BALLOON;
    core_accessors!(core: BalloonCore);

    /// `num_pages` at 0, `actual` at 4, `free_page_hint_cmd_id` at 8 (little-endian u32s).
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; 12];
        space[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        space[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        space[8..].copy_from_slice(&self.hinting.host_cmd.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&space, offset, data);
    }

    /// Only `actual` is the driver's to write, as one 4-byte write of at most the guest's
    /// RAM pages, once the device is active (so a snapshot never holds a value its restore
    /// refuses).
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        let pages = each_core!(&self.core, c => c.active.as_ref().map(|a| ram_pages(&a.mem)));
        match (<[u8; 4]>::try_from(data).map(u32::from_le_bytes), pages) {
            (Ok(actual), Some(pages)) if offset == 4 && u64::from(actual) <= pages => {
                self.actual_pages = actual;
            }
            _ => self.metrics.execute_fails.inc(),
        }
    }

    fn resetting(&mut self) {
        // The driver starts again from an empty balloon; pages it gave stay given back.
        self.ledger = None;
        self.actual_pages = 0;
        self.stats_head = None;
        self.hinting = Default::default();
    }

    fn queues_in_use(&self, features: u64) -> usize {
        QueueRoles::of(features & self.core.avail_features()).count()
    }
}

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data == EVENT_STATS_TIMER {
            return self.on_stats_timer();
        }
        let index = data as usize;
        let role = self
            .core
            .active_roles()
            .map_or(Role::Unused, |r| r.role(index));
        let metrics = &self.metrics;
        let count = match role {
            Role::Pages(0) => Some(&metrics.inflate_count),
            Role::Pages(_) => Some(&metrics.deflate_count),
            // The other queues count what they read, not notifications.
            _ => None,
        };
        let known = each_core!(&self.core, c => {
            let known = index < c.queue_events.len();
            match (known, count) {
                (true, Some(count)) => c.on_queue_event(index, count),
                (true, None) => c.on_queue_event_uncounted(index),
                (false, _) => c.on_unexpected_event(data),
            }
            known
        });
        if !known {
            return;
        }
        match role {
            Role::Pages(index) => self.process_queue(index),
            Role::Stats => self.process_stats_queue(),
            Role::Hint => self.process_hint_queue(),
            Role::Report => self.process_report_queue(),
            // A queue the accepted features leave unused: its notification was read.
            Role::Unused => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut list: Vec<Events> = each_core!(&self.core, c => c
            .queue_events
            .iter()
            .enumerate()
            .map(|(i, e)| Events::with_data(e, i as u32, EventSet::IN))
            .collect());
        if let Some(timer) = &self.stats_timer {
            list.push(Events::with_data(timer, EVENT_STATS_TIMER, EventSet::IN));
        }
        each_core!(&self.core, c => c.watch(ops, list));
        self.arm_stats_timer();
    }
}
