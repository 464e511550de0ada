//! The interface on the VMM thread's event loop: queue notifications, the tap becoming
//! readable, the two rate limiters' timers, and the maintenance timer every
//! `MAINTENANCE_PERIOD` (the firewall's connection expiry and flow log, the MMDS responder's
//! TCP timers).

use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use palisade_firewall::MAINTENANCE_PERIOD;
use vmm_sys_util::epoll::EventSet;

use super::{Net, RX, TX};

const EVENT_RX_QUEUE: u32 = 0;
const EVENT_TX_QUEUE: u32 = 1;
const EVENT_TAP: u32 = 2;
const EVENT_RX_LIMITER: u32 = 3;
const EVENT_TX_LIMITER: u32 = 4;
const EVENT_MAINTENANCE: u32 = 5;

impl Net {
    /// The firewall's and the MMDS responder's periodic work.
    pub fn run_maintenance(&mut self) {
        let _ = self.maintenance.wait();
        if let Some(stack) = self.mmds.as_mut() {
            // Retransmissions, time-outs and connection deadlines; what it sends goes now.
            stack.poll(Instant::now());
            if stack.pending_guest_frames() > 0 {
                self.process_rx();
            }
        }
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
        let m = &self.metrics;
        match events.data() {
            EVENT_RX_QUEUE => {
                self.core.on_queue_event(RX, &m.rx_queue_event_count);
                self.process_rx();
            }
            EVENT_TX_QUEUE => {
                self.core.on_queue_event(TX, &m.tx_queue_event_count);
                self.process_tx();
                // Replies to what was just sent are often already in the tap.
                self.process_rx();
            }
            EVENT_TAP => {
                m.rx_tap_event_count.inc();
                self.process_rx();
            }
            EVENT_RX_LIMITER => {
                let count = &m.rx_event_rate_limiter_count;
                self.core.on_limiter_timer(&mut self.rx_limiter, count);
                self.process_rx();
            }
            EVENT_TX_LIMITER => {
                let count = &m.tx_rate_limiter_event_count;
                self.core.on_limiter_timer(&mut self.tx_limiter, count);
                self.process_tx();
                if self.mmds.is_some() {
                    // MMDS answers to what was just sent.
                    self.process_rx();
                }
            }
            EVENT_MAINTENANCE => self.run_maintenance(),
            other => self.core.on_unexpected_event(other),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if self.firewall.is_some() || self.mmds.is_some() {
            if let Err(e) = self
                .maintenance
                .reset(MAINTENANCE_PERIOD, Some(MAINTENANCE_PERIOD))
            {
                log::error!("Interface {}: cannot arm the firewall timer: {e}", self.id);
            }
        }
        let tap_edges = EventSet::IN | EventSet::EDGE_TRIGGERED;
        let list = [
            Events::with_data(&self.core.queue_events[RX], EVENT_RX_QUEUE, EventSet::IN),
            Events::with_data(&self.core.queue_events[TX], EVENT_TX_QUEUE, EventSet::IN),
            Events::with_data(&self.tap, EVENT_TAP, tap_edges),
            Events::with_data(&self.rx_limiter, EVENT_RX_LIMITER, EventSet::IN),
            Events::with_data(&self.tx_limiter, EVENT_TX_LIMITER, EventSet::IN),
            Events::with_data(&self.maintenance, EVENT_MAINTENANCE, EventSet::IN),
        ];
        self.core.watch(ops, list);
    }
}
