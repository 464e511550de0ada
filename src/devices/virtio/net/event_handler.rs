//! The interface on the VMM thread's event loop: queue notifications, the tap becoming
//! readable, the two rate limiters' timers, and the firewall's maintenance timer (connection
//! expiry and the flow log, every `MAINTENANCE_PERIOD`).

use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use palisade_firewall::MAINTENANCE_PERIOD;
use vmm_sys_util::epoll::EventSet;

use super::{Net, RX, TX};
use crate::devices::virtio::device_core::limiter_timer_event;

const EVENT_RX_QUEUE: u32 = 0;
const EVENT_TX_QUEUE: u32 = 1;
const EVENT_TAP: u32 = 2;
const EVENT_RX_LIMITER: u32 = 3;
const EVENT_TX_LIMITER: u32 = 4;
const EVENT_MAINTENANCE: u32 = 5;

impl Net {
    /// The firewall's periodic work.
    pub fn run_maintenance(&mut self) {
        let _ = self.maintenance.wait();
        let Some(firewall) = self.firewall.as_mut() else {
            return;
        };
        if let Err(e) = firewall.expire_and_log(Instant::now()) {
            self.metrics.flow_log_fails.inc();
            if let Some(n) = self.logs.tap_error.hit() {
                log::warn!("Interface {}: {e} ({n} so far)", self.id);
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EVENT_RX_QUEUE => {
                self.metrics.rx_queue_event_count.inc();
                self.core.read_queue_event(RX, &self.metrics.event_fails);
                self.process_rx();
            }
            EVENT_TX_QUEUE => {
                self.metrics.tx_queue_event_count.inc();
                self.core.read_queue_event(TX, &self.metrics.event_fails);
                self.process_tx();
                // Replies to what was just sent are often already in the tap.
                self.process_rx();
            }
            EVENT_TAP => {
                self.metrics.rx_tap_event_count.inc();
                self.process_rx();
            }
            EVENT_RX_LIMITER => {
                let m = &self.metrics;
                let (events, fails) = (&m.rx_event_rate_limiter_count, &m.event_fails);
                let who = format_args!("Interface {}", self.id);
                limiter_timer_event(&mut self.rx_limiter, events, fails, &who);
                self.process_rx();
            }
            EVENT_TX_LIMITER => {
                let m = &self.metrics;
                let (events, fails) = (&m.tx_rate_limiter_event_count, &m.event_fails);
                let who = format_args!("Interface {}", self.id);
                limiter_timer_event(&mut self.tx_limiter, events, fails, &who);
                self.process_tx();
            }
            EVENT_MAINTENANCE => self.run_maintenance(),
            other => log::warn!("Interface {}: unexpected event {other}", self.id),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if self.firewall.is_some() {
            if let Err(e) = self
                .maintenance
                .reset(MAINTENANCE_PERIOD, Some(MAINTENANCE_PERIOD))
            {
                log::error!("Interface {}: cannot arm the firewall timer: {e}", self.id);
            }
        }
        let list = [
            Events::with_data(&self.core.queue_events[RX], EVENT_RX_QUEUE, EventSet::IN),
            Events::with_data(&self.core.queue_events[TX], EVENT_TX_QUEUE, EventSet::IN),
            Events::with_data(
                &self.tap,
                EVENT_TAP,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            Events::with_data(&self.rx_limiter, EVENT_RX_LIMITER, EventSet::IN),
            Events::with_data(&self.tx_limiter, EVENT_TX_LIMITER, EventSet::IN),
            Events::with_data(&self.maintenance, EVENT_MAINTENANCE, EventSet::IN),
        ];
        for events in list {
            if let Err(e) = ops.add(events) {
                log::error!("Interface {}: cannot watch its events: {e:?}", self.id);
            }
        }
    }
}
