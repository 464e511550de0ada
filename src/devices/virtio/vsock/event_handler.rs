//! The device on the VMM thread's event loop: the three queue notifications, the listener on
//! `uds_path`, every host socket (edge-triggered) and every connection's rate limiter timer
//! (registered as they come, removed before they are closed), the device limiter's timer, and
//! a periodic timer that ends connections whose guest did not answer in time.

use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::muxer::{ListenerWatch, Peer, Watch};
use super::{Vsock, EVQ, RX, TX};

const EVENT_RX_QUEUE: u32 = 0;
const EVENT_TX_QUEUE: u32 = 1;
const EVENT_EV_QUEUE: u32 = 2;
const EVENT_LISTENER: u32 = 3;
const EVENT_LIMITER: u32 = 4;
const EVENT_SWEEP: u32 = 5;
/// Peer `t`'s socket is `FIRST_PEER_EVENT + 2t`, its limiter timer the next number.
const FIRST_PEER_EVENT: u32 = 16;
/// How often late connections are looked for.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);

pub(super) fn peer_event(token: u32, watch: Watch) -> u32 {
    FIRST_PEER_EVENT + 2 * token + u32::from(watch == Watch::Limiter)
}

impl Vsock {
    /// A host socket or connection timer event, by its event-loop data.
    pub fn on_peer_event(&mut self, data: u32, set: EventSet) {
        let Some(n) = data.checked_sub(FIRST_PEER_EVENT) else {
            return;
        };
        let token = n / 2;
        if n % 2 == 1 {
            self.metrics.rate_limiter_event_count.inc();
            self.muxer.on_limiter_timer(token);
        } else {
            self.metrics.conn_event_count.inc();
            let readable = set.intersects(EventSet::IN | EventSet::READ_HANG_UP);
            let error = set.intersects(EventSet::ERROR | EventSet::HANG_UP);
            self.muxer
                .on_peer_event(token, readable, set.contains(EventSet::OUT), error);
        }
        self.process_rx();
    }

    /// Ends connections whose guest did not answer in time (`now` as a parameter for tests).
    pub fn sweep(&mut self, now: Instant) {
        self.muxer.sweep(now);
        self.process_rx();
    }

    /// Watches the listener again after `accept` failed (fds may have come back since).
    fn watch_listener_again(&mut self, ops: &mut EventOps) {
        if self.muxer.listener_watch != ListenerWatch::Unwatched {
            return;
        }
        let events = Events::with_data(&self.muxer.listener, EVENT_LISTENER, EventSet::IN);
        match ops.add(events) {
            Ok(()) => self.muxer.listener_watch = ListenerWatch::Watched,
            Err(e) => {
                self.metrics.event_fails.inc();
                log::error!("vsock: cannot watch the listener again: {e:?}");
            }
        }
    }

    /// Starts watching the fds of new peers and stops watching (then closes) ended ones;
    /// stops watching the listener when `accept` failed.
    fn sync_watches(&mut self, ops: &mut EventOps) {
        if self.muxer.listener_watch == ListenerWatch::Unwatch {
            self.muxer.listener_watch = match ops.remove(Events::empty(&self.muxer.listener)) {
                Ok(()) => ListenerWatch::Unwatched,
                // Still watched: the next failed accept asks again.
                Err(_) => ListenerWatch::Watched,
            };
        }
        for peer in self.muxer.removed.drain(..) {
            // Never watched when it ended in the same turn it came: nothing to remove then.
            let _ = ops.remove(Events::empty(peer.stream()));
            if let Peer::Conn(c) = &peer {
                let _ = ops.remove(Events::empty(&c.limiter));
            }
        }
        for (token, watch) in std::mem::take(&mut self.muxer.added) {
            let data = peer_event(token, watch);
            let events = match (self.muxer.peer(token), watch) {
                (Some(peer), Watch::Stream) => {
                    let set = EventSet::IN
                        | EventSet::OUT
                        | EventSet::READ_HANG_UP
                        | EventSet::EDGE_TRIGGERED;
                    Events::with_data(peer.stream(), data, set)
                }
                (Some(Peer::Conn(c)), Watch::Limiter) => {
                    Events::with_data(&c.limiter, data, EventSet::IN)
                }
                _ => continue,
            };
            if let Err(e) = ops.add(events) {
                self.metrics.event_fails.inc();
                log::error!("vsock: cannot watch a connection: {e:?}");
            }
        }
    }

    /// Drops the fds of ended peers without an event loop (tests).
    #[cfg(test)]
    pub fn forget_watches(&mut self) {
        self.muxer.removed.clear();
        self.muxer.added.clear();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EVENT_RX_QUEUE => {
                self.core
                    .on_queue_event(RX, &self.metrics.rx_queue_event_count);
                self.process_rx();
            }
            EVENT_TX_QUEUE => {
                self.core
                    .on_queue_event(TX, &self.metrics.tx_queue_event_count);
                self.process_tx();
                self.process_rx();
            }
            EVENT_EV_QUEUE => {
                // The driver's event buffers wait for a transport reset (after a restore), or
                // come back once it handled one.
                self.core
                    .on_queue_event(EVQ, &self.metrics.ev_queue_event_count);
                self.process_evq();
                // A new event buffer may say that the driver handled the transport reset.
                self.process_rx();
            }
            EVENT_LISTENER => {
                self.metrics.conn_event_count.inc();
                self.muxer.accept();
            }
            EVENT_LIMITER => {
                let count = &self.metrics.rate_limiter_event_count;
                self.core.on_limiter_timer(&mut self.limiter, count);
                self.process_tx();
                self.process_rx();
            }
            EVENT_SWEEP => {
                let _ = self.sweep_timer.wait();
                self.watch_listener_again(ops);
                self.sweep(Instant::now());
            }
            data => self.on_peer_event(data, events.event_set()),
        }
        self.sync_watches(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.sweep_timer.reset(SWEEP_PERIOD, Some(SWEEP_PERIOD)) {
            self.metrics.event_fails.inc();
            log::error!("vsock: cannot arm the connection timer: {e}");
        }
        let q = &self.core.queue_events;
        let list = [
            Events::with_data(&q[RX], EVENT_RX_QUEUE, EventSet::IN),
            Events::with_data(&q[TX], EVENT_TX_QUEUE, EventSet::IN),
            Events::with_data(&q[EVQ], EVENT_EV_QUEUE, EventSet::IN),
            Events::with_data(&self.muxer.listener, EVENT_LISTENER, EventSet::IN),
            Events::with_data(&self.limiter, EVENT_LIMITER, EventSet::IN),
            Events::with_data(&self.sweep_timer, EVENT_SWEEP, EventSet::IN),
        ];
        for events in list {
            if let Err(e) = ops.add(events) {
                self.metrics.event_fails.inc();
                log::error!("vsock: cannot watch its events: {e:?}");
            }
        }
        self.sync_watches(ops);
    }
}
