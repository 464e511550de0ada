//! `vsock-hostile`: packets a well-behaved driver never sends, each followed by a good
//! connection to CID 2 port `probe.port` (which the host must accept: cases on an
//! established connection need that listener too). After each case the guest watches its RX
//! queue for 300 ms for packets to the case's local port. One row per case:
//! `probe: vsock-hostile case CASE saw=OBSERVED good=ok|fail`, where OBSERVED is `rst`
//! (the device reset the connection), `nothing`, `response`, `rw`, `shutdown`,
//! `credit-update`, `credit-request`, `op-other`, `short-rx-len-0`,
//! `short-rx-len-le-20`, `short-rx-len-over-20`, `short-rx-overflow`, `short-rx-kept` (the
//! 20-byte RX buffer case), `needs-reset` (the device asked for a reset;
//! the probe re-initialises it), `no-connection` (the case's own connection was
//! refused) or `stuck` (the device never used the chain, ~10 s); the flood case adds
//! `flood_packets=N`. Then `probe: vsock-hostile ok cases=N` or
//! `probe: vsock-hostile fail failed=N cases=N` (failed: good=fail).

use crate::serial::{put_str, ResultLine};
use crate::virtio::vsock::{
    Hdr, HDR, HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, SCRATCH, TYPE_STREAM,
};
use crate::virtio::{dma, STATUS_NEEDS_RESET};
use crate::vsock_stream::{self, passed, Params, Stack};
use crate::zero_page::BootInfo;

pub const NAME: &str = "vsock-hostile";
const HDR_AT: u64 = SCRATCH;
const DATA_AT: u64 = SCRATCH + 0x1000;
const DATA_MAX: u32 = 0x10_0000;
/// Local ports of the hand-made packets (the stack's own start at 49152).
const FIRST_CASE_PORT: u32 = 40000;

struct Ctx {
    s: Stack,
    p: Params,
    /// Extra text for the row (the flood's packet count).
    extra: u64,
}

/// Sends `h` with a data descriptor of `data_len` bytes (none when None); false when the
/// device never used the chain.
fn raw(ctx: &mut Ctx, h: &Hdr, data_len: Option<u32>) -> bool {
    dma::write_bytes(HDR_AT, &h.encode());
    ctx.s.vs.send_raw((HDR_AT, HDR as u32), data_len.map(|len| (DATA_AT, len)))
}

/// A header from a port no connection uses.
fn loose(ctx: &Ctx, port: u32, op: u16) -> Hdr {
    Hdr {
        src_cid: ctx.s.vs.cid,
        dst_cid: HOST_CID,
        src_port: port,
        dst_port: ctx.p.port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Hdr::default()
    }
}

/// What came for local port `port` in 300 ms: RST first, else the lowest op seen.
fn observe(ctx: &mut Ctx, port: u32) -> &'static str {
    let until = ctx.p.deadline_ms(300);
    let mut seen = 0u32;
    while !passed(until) {
        if let Some(pkt) = ctx.s.vs.recv() {
            if pkt.hdr.dst_port == port {
                seen |= 1 << pkt.hdr.op.min(31);
            }
        }
    }
    if seen & (1 << 3) != 0 {
        return "rst";
    }
    match seen.trailing_zeros() {
        32 => "nothing",
        1 => "request",
        2 => "response",
        4 => "shutdown",
        5 => "rw",
        6 => "credit-update",
        7 => "credit-request",
        _ => "op-other",
    }
}

fn loose_case(ctx: &mut Ctx, port: u32, edit: fn(&mut Hdr), data: Option<u32>) -> &'static str {
    let mut h = loose(ctx, port, OP_REQUEST);
    edit(&mut h);
    if !raw(ctx, &h, data) {
        return "stuck";
    }
    let saw = observe(ctx, port);
    if saw == "response" {
        // The device took the bad REQUEST: end that connection cleanly.
        let rst = Hdr { op: OP_RST, ..loose(ctx, port, OP_RST) };
        ctx.s.vs.send(&rst, &[]);
        ctx.s.vs.flush();
    }
    saw
}

/// Opens a real connection (with `buf_alloc`), sends the edited header with `data` bytes.
fn conn_case(ctx: &mut Ctx, buf_alloc: u32, edit: fn(&mut Hdr), data: Option<u32>) -> &'static str {
    let saved = ctx.s.buf_alloc;
    ctx.s.buf_alloc = buf_alloc;
    let opened = ctx.s.connect_wait(ctx.p.port, ctx.p.deadline_ms(2000));
    ctx.s.buf_alloc = saved;
    let Ok(i) = opened else { return "no-connection" };
    let mut h = ctx.s.hdr(&ctx.s.conns[i], OP_RW, 0);
    edit(&mut h);
    if !raw(ctx, &h, data) {
        return "stuck";
    }
    let port = ctx.s.conns[i].local_port;
    let saw = observe(ctx, port);
    ctx.s.close(i);
    saw
}

/// Advertises buf_alloc 0, then sends 4 MiB in 64 KiB RW packets, ignoring the host's credit.
fn flood(ctx: &mut Ctx) -> &'static str {
    let opened = {
        let saved = ctx.s.buf_alloc;
        ctx.s.buf_alloc = 0;
        let r = ctx.s.connect_wait(ctx.p.port, ctx.p.deadline_ms(2000));
        ctx.s.buf_alloc = saved;
        r
    };
    let Ok(i) = opened else { return "no-connection" };
    let mut h = ctx.s.hdr(&ctx.s.conns[i], OP_RW, 64 * 1024);
    for _ in 0..64 {
        if !raw(ctx, &h, Some(64 * 1024)) {
            return "stuck";
        }
        ctx.extra += 1;
        h.buf_alloc = 0;
    }
    let port = ctx.s.conns[i].local_port;
    let saw = observe(ctx, port);
    ctx.s.close(i);
    saw
}

/// An RX buffer of 20 bytes (shorter than a header) between good ones, with a canary after
/// it; 48 CREDIT_REQUESTs make the device write 48 CREDIT_UPDATEs, so it reaches the buffer.
/// Observed: `short-rx-len-N` (returned with used length N), `short-rx-overflow` (the canary
/// was written), `short-rx-kept` (not returned).
fn rx_buffer_short(ctx: &mut Ctx) -> &'static str {
    let Ok(i) = ctx.s.connect_wait(ctx.p.port, ctx.p.deadline_ms(2000)) else { return "no-connection" };
    let buf = DATA_AT + 0x10_0000;
    dma::write_bytes(buf, &[0xaa; 256]);
    ctx.s.vs.post_rx_raw(buf, 20);
    for _ in 0..48 {
        ctx.s.credit_request(i);
    }
    let until = ctx.p.deadline_ms(300);
    while !passed(until) {
        let _ = ctx.s.poll();
    }
    ctx.s.close(i);
    if dma::slice(buf + 20, 236).iter().any(|&b| b != 0xaa) {
        return "short-rx-overflow";
    }
    match ctx.s.vs.raw_rx_used {
        None => "short-rx-kept",
        Some(0) => "short-rx-len-0",
        Some(n) if n <= 20 => "short-rx-len-le-20",
        Some(_) => "short-rx-len-over-20",
    }
}

struct Case {
    name: &'static str,
    run: fn(&mut Ctx, u32) -> &'static str,
}

const CASES: &[Case] = &[
    Case { name: "src-cid-wrong", run: |c, port| loose_case(c, port, |h| h.src_cid += 1000, None) },
    Case { name: "src-cid-host", run: |c, port| loose_case(c, port, |h| h.src_cid = HOST_CID, None) },
    Case { name: "dst-cid-other-guest", run: |c, port| loose_case(c, port, |h| h.dst_cid = h.src_cid + 1, None) },
    Case { name: "dst-cid-any", run: |c, port| loose_case(c, port, |h| h.dst_cid = 0xffff_ffff, None) },
    Case { name: "dst-cid-hypervisor", run: |c, port| loose_case(c, port, |h| h.dst_cid = 0, None) },
    Case { name: "type-seqpacket", run: |c, port| loose_case(c, port, |h| h.kind = 2, None) },
    Case { name: "type-zero", run: |c, port| loose_case(c, port, |h| h.kind = 0, None) },
    Case { name: "op-unknown-no-conn", run: |c, port| loose_case(c, port, |h| h.op = 42, None) },
    Case {
        name: "rw-no-connection",
        run: |c, port| {
            loose_case(
                c,
                port,
                |h| {
                    h.op = OP_RW;
                    h.len = 16;
                },
                Some(16),
            )
        },
    },
    Case { name: "response-unsolicited", run: |c, port| loose_case(c, port, |h| h.op = OP_RESPONSE, None) },
    Case {
        name: "hdr-short",
        run: |c, port| {
            let h = loose(c, port, OP_REQUEST);
            dma::write_bytes(HDR_AT, &h.encode());
            if !c.s.vs.send_raw((HDR_AT, 20), None) {
                return "stuck";
            }
            observe(c, port)
        },
    },
    Case { name: "op-unknown", run: |c, _| conn_case(c, 64 * 1024, |h| h.op = 42, None) },
    Case { name: "rw-len-without-data", run: |c, _| conn_case(c, 64 * 1024, |h| h.len = 64, None) },
    Case { name: "rw-len-beyond-chain", run: |c, _| conn_case(c, 64 * 1024, |h| h.len = 4096, Some(100)) },
    Case { name: "rw-oversized-1mib", run: |c, _| conn_case(c, 64 * 1024, |h| h.len = DATA_MAX, Some(DATA_MAX)) },
    Case { name: "rw-len-max", run: |c, _| conn_case(c, 64 * 1024, |h| h.len = u32::MAX, Some(4096)) },
    Case {
        name: "credit-fwd-cnt-lie",
        run: |c, _| {
            conn_case(
                c,
                64 * 1024,
                |h| {
                    h.op = OP_CREDIT_UPDATE;
                    h.fwd_cnt = 0x7fff_0000;
                    h.buf_alloc = u32::MAX;
                },
                None,
            )
        },
    },
    Case { name: "buf-alloc-zero-flood", run: |c, _| flood(c) },
    Case { name: "rx-buffer-short", run: |c, _| rx_buffer_short(c) },
];

pub fn run(boot: &BootInfo) {
    let p = Params::parse(boot);
    let s = match vsock_stream::open(boot) {
        Ok(s) => s,
        Err(e) => return ResultLine::fail(NAME.as_bytes()).text(e).end(),
    };
    dma::zero(DATA_AT, u64::from(DATA_MAX));
    let mut ctx = Ctx { s, p, extra: 0 };
    let (mut cases, mut failed) = (0u64, 0u64);
    for (n, case) in CASES.iter().enumerate() {
        ctx.extra = 0;
        let mut saw = (case.run)(&mut ctx, FIRST_CASE_PORT + n as u32);
        if ctx.s.vs.dev.status() & STATUS_NEEDS_RESET != 0 {
            saw = "needs-reset";
            match vsock_stream::open(boot) {
                Ok(s) => ctx.s = s,
                Err(e) => return ResultLine::fail(NAME.as_bytes()).text("reopen").text(e).end(),
            }
        }
        let good = match ctx.s.connect_wait(ctx.p.port, ctx.p.deadline_ms(2000)) {
            Ok(i) => {
                ctx.s.close(i);
                true
            }
            Err(_) => false,
        };
        ctx.s.vs.drain_tx();
        cases += 1;
        failed += u64::from(!good);
        put_str("probe: vsock-hostile case ");
        put_str(case.name);
        put_str(" saw=");
        put_str(saw);
        put_str(if good { " good=ok" } else { " good=fail" });
        if ctx.extra > 0 {
            ResultLine.dec("flood_packets", ctx.extra).end();
        } else {
            put_str("\n");
        }
    }
    if failed > 0 {
        return ResultLine::fail(NAME.as_bytes()).dec("failed", failed).dec("cases", cases).end();
    }
    ResultLine::ok(NAME.as_bytes()).dec("cases", cases).end();
}
