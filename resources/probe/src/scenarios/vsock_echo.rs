//! `vsock-echo`: listens on vsock port `probe.port`, accepts host connections (up to 8 at
//! once, more are closed at once) and sends every byte back, with real flow control: each
//! connection advertises a 64 KiB buffer and counts bytes as consumed once echoed. Runs
//! until `probe.count` connections have ended or `probe.secs` passed.
//! `probe: vsock-echo ready cid=N port=P`, per connection
//! `probe: vsock-echo accept peer_port=X` and, when it ends,
//! `probe: vsock-echo conn peer_port=X bytes=N crc32=XXXXXXXX end=shutdown|reset|closed`,
//! then `probe: vsock-echo ok conns=N bytes=B` (`fail` when no connection ended). Each event
//! from the event queue (a transport reset after a snapshot restore) prints
//! `probe: vsock-echo event id=N cid=C` (the CID read again).

use crate::crc32::Crc32;
use crate::serial::{put_str, ResultLine};
use crate::virtio::dma;
use crate::virtio::vsock::{SCRATCH, SHUTDOWN_SEND};
use crate::vsock_stream::{self, passed, Event, Params, Stack, State};
use crate::zero_page::BootInfo;

use super::blk::put_hex32;

pub const NAME: &str = "vsock-echo";
const SLOTS: usize = 8;
const RING: u32 = 64 * 1024;

/// Bytes received and not yet echoed, per connection slot.
struct Rings {
    start: [u32; SLOTS],
    len: [u32; SLOTS],
    crc: [Crc32; SLOTS],
}

fn ring_addr(i: usize, offset: u32) -> u64 {
    SCRATCH + i as u64 * u64::from(RING) + u64::from(offset % RING)
}

impl Rings {
    fn push(&mut self, i: usize, data: &[u8]) {
        self.crc[i].update(data);
        let mut at = self.start[i].wrapping_add(self.len[i]);
        for part in data.chunks(4096) {
            let first = part.len().min((RING - at % RING) as usize);
            dma::write_bytes(ring_addr(i, at), &part[..first]);
            dma::write_bytes(ring_addr(i, 0), &part[first..]);
            at = at.wrapping_add(part.len() as u32);
        }
        self.len[i] += data.len() as u32;
    }

    /// Sends what the peer's credit allows; returns false when nothing could go.
    fn pump(&mut self, s: &mut Stack, i: usize) -> bool {
        let mut moved = false;
        while self.len[i] > 0 {
            let offset = self.start[i] % RING;
            let n = self.len[i].min(RING - offset).min(4096);
            let n = s.send(i, dma::slice(ring_addr(i, offset), n as usize));
            if n == 0 {
                break;
            }
            self.start[i] = self.start[i].wrapping_add(n as u32);
            self.len[i] -= n as u32;
            s.consumed(i, n);
            moved = true;
        }
        moved
    }
}

fn report(s: &Stack, i: usize, crc: &Crc32, end: &str) {
    put_str("probe: vsock-echo conn");
    let line = ResultLine.dec("peer_port", u64::from(s.conns[i].peer_port)).dec("bytes", s.conns[i].rx_bytes);
    put_str(" crc32=");
    put_hex32(crc.finish());
    put_str(" end=");
    put_str(end);
    line.end();
}

pub fn run(boot: &BootInfo) {
    let p = Params::parse(boot);
    let mut s = match vsock_stream::open(boot) {
        Ok(s) => s,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    s.listen_port = p.port;
    s.buf_alloc = RING;
    put_str("probe: vsock-echo ready");
    ResultLine.dec("cid", s.vs.cid).dec("port", u64::from(p.port)).end();
    let mut rings = Rings { start: [0; SLOTS], len: [0; SLOTS], crc: [(); SLOTS].map(|_| Crc32::new()) };
    let deadline = p.deadline_ms(p.secs * 1000);
    let (mut ended, mut bytes) = (0u64, 0u64);
    let mut spins = 0u32;
    let mut events = s.vs.events;
    while ended < p.count && !passed(deadline) {
        let event = s.poll();
        if s.vs.events != events {
            events = s.vs.events;
            put_str("probe: vsock-echo event");
            ResultLine.dec("id", u64::from(s.vs.last_event)).dec("cid", s.vs.cid).end();
        }
        match event {
            Event::Accepted(i) if i >= SLOTS => s.close(i),
            Event::Accepted(i) => {
                rings.start[i] = 0;
                rings.len[i] = 0;
                rings.crc[i] = Crc32::new();
                put_str("probe: vsock-echo accept");
                ResultLine.dec("peer_port", u64::from(s.conns[i].peer_port)).end();
            }
            Event::Data(i, data) if i < SLOTS => {
                rings.push(i, data);
                rings.pump(&mut s, i);
            }
            Event::Ended(i) if i < SLOTS => {
                let end = if s.conns[i].state == State::Reset { "reset" } else { "shutdown" };
                report(&s, i, &rings.crc[i], end);
                bytes += s.conns[i].rx_bytes;
                ended += 1;
                s.release(i);
            }
            _ => {}
        }
        spins = spins.wrapping_add(1);
        for i in 0..SLOTS {
            if s.conns[i].state != State::Open {
                continue;
            }
            if rings.len[i] > 0 && !rings.pump(&mut s, i) && spins.is_multiple_of(65536) && s.conns[i].credit() == 0 {
                s.credit_request(i);
            }
            if rings.len[i] == 0 && s.conns[i].peer_shutdown & SHUTDOWN_SEND != 0 {
                report(&s, i, &rings.crc[i], "closed");
                bytes += s.conns[i].rx_bytes;
                ended += 1;
                s.close(i);
            }
        }
        s.vs.flush();
    }
    s.vs.drain_tx();
    ResultLine::start(NAME.as_bytes(), ended > 0).dec("conns", ended).dec("bytes", bytes).end();
}
