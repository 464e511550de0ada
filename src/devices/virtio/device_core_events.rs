//! The event-loop chores of a [`DeviceCore`]: a queue notification, a rate limiter's timer,
//! watching the events, what a drain leaves to do (the used-buffer interrupt, the self-kick,
//! needs-reset), and the whole event side of a device with one queue under one limiter.

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use virtio_queue::Queue;

use super::{Active, DeviceCore};
use crate::devices::virtio::queue::{needs_interrupt, DrainEnd};
use crate::metrics::Counter;
use crate::rate_limiter::RateLimiter;

impl<const N: usize> DeviceCore<N> {
    /// Queue `index` was notified: counts it in `count` and consumes the notification
    /// (a failure counts as an event failure).
    pub fn on_queue_event(&self, index: usize, count: &Counter) {
        count.inc();
        self.on_queue_event_uncounted(index);
    }

    /// Reads queue `index`'s notification, for a queue whose notifications are not counted
    /// (a failure counts as an event failure).
    pub fn on_queue_event_uncounted(&self, index: usize) {
        if self
            .queue_events
            .get(index)
            .is_none_or(|e| e.read().is_err())
        {
            self.counters.event_fails().inc();
        }
    }

    /// Notifies queue `index` from the device itself (to come back to it after the other
    /// events); a failure counts as an event failure.
    pub fn kick(&self, index: usize) {
        if self
            .queue_events
            .get(index)
            .is_none_or(|e| e.write(1).is_err())
        {
            self.counters.event_fails().inc();
        }
    }

    /// Raises the used-buffer interrupt; a failure counts as an event failure.
    pub fn signal_used(&self) {
        if self.interrupt.signal_used_queue().is_err() {
            self.counters.event_fails().inc();
        }
    }

    /// A rate limiter's timer fired: counts it in `count` and rearms the limiter (a failure
    /// is logged and counts as an event failure). The caller then serves the queue it unblocks.
    pub fn on_limiter_timer(&self, limiter: &mut RateLimiter, count: &Counter) {
        count.inc();
        if let Err(e) = limiter.on_timer() {
            self.counters.event_fails().inc();
            log::error!("{}: {e}", self.label.who);
        }
    }

    /// An event the device did not register.
    pub fn on_unexpected_event(&self, data: u32) {
        log::warn!("{}: unexpected event {data}", self.label.who);
    }

    /// Registers the device's events with the event loop; a failure is logged.
    pub fn watch(&self, ops: &mut EventOps, list: impl IntoIterator<Item = Events>) {
        for events in list {
            if let Err(e) = ops.add(events) {
                log::error!("{}: cannot watch its events: {e:?}", self.label.who);
            }
        }
    }

    /// The active queues, unless the device waits for a reset or `limiter` holds it back
    /// (counted in `throttled` when given).
    pub fn serving(
        &mut self,
        limiter: &RateLimiter,
        throttled: Option<&Counter>,
    ) -> Option<&mut Active<N>> {
        if self.interrupt.needs_reset() {
            return None;
        }
        if limiter.is_blocked() {
            throttled.inspect(|c| c.inc());
            return None;
        }
        self.active.as_mut()
    }

    /// What every device does once it drained queue `index`: raises the used-buffer interrupt
    /// when the driver wants one, comes back after the other events when the budget ran out,
    /// stops serving when the guest broke the queue. Returns `end` for the device's own
    /// bookkeeping.
    pub fn finish_drain(&mut self, index: usize, end: DrainEnd, used_any: bool) -> DrainEnd {
        if let Some(active) = self.active.as_mut() {
            let wants = |q: &mut Queue| needs_interrupt(q, &active.mem);
            if used_any && active.queues.get_mut(index).is_some_and(wants) {
                self.signal_used();
            }
        }
        match &end {
            DrainEnd::Budget => self.kick(index),
            DrainEnd::Broken(e) => self.enter_needs_reset(e),
            DrainEnd::Empty | DrainEnd::Throttled => {}
        }
        end
    }

    /// The guest broke a queue: the device stops serving until the driver resets it. Counted
    /// and logged (rate limited) once per entry: a second broken queue found before the
    /// driver's reset (a net device's RX and TX workers may both find one) is not another.
    pub fn enter_needs_reset(&self, why: &dyn std::fmt::Display) {
        if !self.interrupt.set_needs_reset() {
            return;
        }
        self.counters.needs_reset_count().inc();
        if let Some(n) = self.needs_reset_log.hit() {
            let queue = if N == 1 { "its queue" } else { "a queue" };
            let who = &self.label.who;
            log::warn!("{who}: the guest broke {queue} ({why}); device needs a reset ({n} so far)");
        }
    }
}

/// The event data of a device with one queue under one rate limiter.
const EVENT_QUEUE: u32 = 0;
const EVENT_LIMITER: u32 = 1;

/// The events of a device with one queue under one rate limiter (a drive, the entropy device).
impl DeviceCore<1> {
    /// Registers the queue's notification and `limiter`'s timer with the event loop.
    pub fn watch_queue_and_limiter(&self, ops: &mut EventOps, limiter: &RateLimiter) {
        let queue = Events::with_data(&self.queue_events[0], EVENT_QUEUE, EventSet::IN);
        let timer = Events::with_data(limiter, EVENT_LIMITER, EventSet::IN);
        self.watch(ops, [queue, timer]);
    }

    /// Handles an event [`Self::watch_queue_and_limiter`] registered: a notification (counted
    /// in `queue_count`) or the timer (counted in `limiter_count`, the limiter rearmed). True
    /// when the queue is to be served now.
    pub fn on_queue_or_limiter_event(
        &self,
        data: u32,
        limiter: &mut RateLimiter,
        queue_count: &Counter,
        limiter_count: &Counter,
    ) -> bool {
        match data {
            EVENT_QUEUE => self.on_queue_event(0, queue_count),
            EVENT_LIMITER => self.on_limiter_timer(limiter, limiter_count),
            other => {
                self.on_unexpected_event(other);
                return false;
            }
        }
        true
    }
}

/// Implements `MutEventSubscriber` for a device with one queue under one rate limiter (fields
/// `core: DeviceCore<1>`, `limiter` and `metrics`, a `process_queue` method), given the names
/// of its counters of queue notifications and of timer expirations:
/// `queue_and_limiter_events!(Rng, entropy_event_count, rate_limiter_event_count);`.
macro_rules! queue_and_limiter_events {
    ($device:ty, $queue_count:ident, $timer_count:ident) => {
        impl ::event_manager::MutEventSubscriber for $device {
            fn process(
                &mut self,
                events: ::event_manager::Events,
                _ops: &mut ::event_manager::EventOps,
            ) {
                let (queue, timer) = (&self.metrics.$queue_count, &self.metrics.$timer_count);
                let data = events.data();
                let core = &self.core;
                if core.on_queue_or_limiter_event(data, &mut self.limiter, queue, timer) {
                    self.process_queue();
                }
            }

            fn init(&mut self, ops: &mut ::event_manager::EventOps) {
                self.core.watch_queue_and_limiter(ops, &self.limiter);
            }
        }
    };
}
pub(crate) use queue_and_limiter_events;
