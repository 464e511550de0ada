//! The responder driven with raw frames from a hand-built guest (etherparse): ARP, a whole
//! TCP exchange, V2 tokens, SYN floods, frames that are not MMDS traffic.

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use serde_json::json;

use super::*;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

fn stack_with(version: MmdsVersion, key: u8, iface: &str, t0: Instant) -> MmdsStack {
    let mut config = MmdsNetConfig::new(iface);
    config.version = version;
    let data = Arc::new(RwLock::new(json!({
        "latest": {"meta-data": {"instance-id": "i-1234", "tags": {"a": "b"}}},
        "age": 43
    })));
    MmdsStack::new(config, TokenKey::from_bytes([key; 32]), data, 7, t0).unwrap()
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn arp_reply() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&DEFAULT_IPV4.octets());
    f
}

thread_local!(static IN_STACK: std::cell::Cell<Duration> = const {
    std::cell::Cell::new(Duration::ZERO)
});

/// `f`, its time added to what this thread spent in the stack (the measurement reads it).
fn timed<R>(f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    IN_STACK.with(|c| c.set(c.get() + start.elapsed()));
    r
}

/// The time this thread spent in the stack since the last call.
fn take_stack_time() -> Duration {
    IN_STACK.with(|c| c.replace(Duration::ZERO))
}

fn drain(stack: &mut MmdsStack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| timed(|| stack.pop_guest_frame())).collect()
}

/// A guest-side TCP client: tracks sequence numbers, collects what the server sends.
struct Client {
    port: u16,
    dst_mac: [u8; 6],
    seq: u32,
    ack: u32,
    received: Vec<u8>,
    fin: bool,
    rst: bool,
    ttls: Vec<u8>,
}

impl Client {
    fn new(port: u16) -> Self {
        Self {
            port,
            dst_mac: DEFAULT_MAC,
            seq: 1000,
            ack: 0,
            received: Vec::new(),
            fin: false,
            rst: false,
            ttls: Vec::new(),
        }
    }

    fn segment(&self, syn: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(GUEST_MAC, self.dst_mac)
            .ipv4(GUEST_IP, DEFAULT_IPV4.octets(), 64)
            .tcp(self.port, 80, self.seq, 64240);
        if syn {
            b = b.syn();
        } else {
            b = b.ack(self.ack);
        }
        if fin {
            b = b.fin();
        }
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    /// Sends a segment and takes in every answer (acknowledging data and FIN).
    fn send(&mut self, stack: &mut MmdsStack, now: Instant, syn: bool, fin: bool, data: &[u8]) {
        let frame = self.segment(syn, fin, data);
        let verdict = timed(|| stack.handle_guest_frame(&frame, now));
        assert_eq!(verdict, Verdict::Consumed);
        self.seq = self
            .seq
            .wrapping_add(data.len() as u32 + u32::from(syn) + u32::from(fin));
        self.receive(stack, now);
    }

    fn receive(&mut self, stack: &mut MmdsStack, now: Instant) {
        loop {
            let frames = drain(stack);
            if frames.is_empty() {
                return;
            }
            let mut must_ack = false;
            for f in frames {
                if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] {
                    // The stack asks for the guest's MAC: answer as a guest kernel would.
                    assert_eq!(&f[38..42], &GUEST_IP);
                    timed(|| stack.handle_guest_frame(&arp_reply(), now));
                    continue;
                }
                let p = SlicedPacket::from_ethernet(&f).unwrap();
                let Some(NetSlice::Ipv4(ip)) = p.net else {
                    continue;
                };
                self.ttls.push(ip.header().ttl());
                let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                    continue;
                };
                if tcp.destination_port() != self.port {
                    continue;
                }
                if tcp.rst() {
                    self.rst = true;
                    continue;
                }
                if tcp.syn() {
                    self.ack = tcp.sequence_number().wrapping_add(1);
                    must_ack = true;
                    continue;
                }
                if tcp.sequence_number() == self.ack {
                    self.received.extend_from_slice(tcp.payload());
                    self.ack = self.ack.wrapping_add(tcp.payload().len() as u32);
                    if tcp.fin() {
                        self.ack = self.ack.wrapping_add(1);
                        self.fin = true;
                    }
                    must_ack |= !tcp.payload().is_empty() || tcp.fin();
                }
            }
            if must_ack {
                let frame = self.segment(false, false, b"");
                timed(|| stack.handle_guest_frame(&frame, now));
            }
        }
    }

    /// Handshake, request, the answer up to the server's FIN, our FIN.
    fn exchange(&mut self, stack: &mut MmdsStack, now: Instant, request: &str) -> String {
        // A guest kernel resolves the MMDS address first (and the stack learns its MAC).
        timed(|| stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), now));
        drain(stack);
        self.send(stack, now, true, false, b"");
        assert_ne!(self.ack, 0, "no SYN-ACK");
        self.send(stack, now, false, false, request.as_bytes());
        assert!(self.fin, "the server closes after its answer");
        self.send(stack, now, false, true, b"");
        String::from_utf8(self.received.clone()).unwrap()
    }
}

fn status_of(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").unwrap().1
}

#[test]
fn arp_for_the_mmds_address_is_answered_with_the_mmds_mac() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let verdict = stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    assert_eq!(verdict, Verdict::Consumed);
    let frames = drain(&mut stack);
    assert_eq!(frames.len(), 1);
    let reply = &frames[0];
    assert_eq!(&reply[0..6], &GUEST_MAC);
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[22..28], &DEFAULT_MAC, "sender MAC");
    assert_eq!(&reply[28..32], &DEFAULT_IPV4.octets(), "sender IP");
    assert_eq!(&reply[38..42], &GUEST_IP, "target IP");
}

#[test]
fn frames_not_for_the_mmds_service_pass_untouched() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(GUEST_MAC, [0xaa; 6])
        .ipv4(GUEST_IP, [8, 8, 8, 8], 64)
        .udp(1000, 53)
        .write(&mut udp, b"query")
        .unwrap();
    let mut other_port = Vec::new();
    PacketBuilder::ethernet2(GUEST_MAC, DEFAULT_MAC)
        .ipv4(GUEST_IP, DEFAULT_IPV4.octets(), 64)
        .tcp(1000, 443, 1, 100)
        .syn()
        .write(&mut other_port, b"")
        .unwrap();
    let frames = [
        udp,
        other_port,
        arp_request([10, 0, 0, 1]),
        vec![],
        vec![0; 13],
    ];
    for f in &frames {
        assert_eq!(stack.handle_guest_frame(f, t0), Verdict::Pass);
    }
    assert_eq!(stack.pending_guest_frames(), 0);
    assert_eq!(stack.counters().frames_in, 0);
}

#[test]
fn v1_get_over_tcp_returns_json_with_ttl_one_and_closes() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V1, 1, "eth0", t0);
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    drain(&mut stack);
    let mut client = Client::new(40000);
    let response = client.exchange(
        &mut stack,
        t0,
        "GET /latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("Content-Type: application/json"));
    let body: serde_json::Value = serde_json::from_str(body_of(&response)).unwrap();
    assert_eq!(body, json!({"instance-id": "i-1234", "tags": {"a": "b"}}));
    assert!(!client.ttls.is_empty());
    assert!(client.ttls.iter().all(|&t| t == 1), "{:?}", client.ttls);
    assert_eq!(stack.counters().answers_ok, 1);
}

#[test]
fn get_without_accept_json_is_the_imds_listing() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V1, 1, "eth0", t0);
    let mut client = Client::new(40001);
    let response = client.exchange(&mut stack, t0, "GET /latest/meta-data/ HTTP/1.0\r\n\r\n");
    assert_eq!(body_of(&response), "instance-id\ntags/");
    let mut client = Client::new(40002);
    let response = client.exchange(&mut stack, t0, "GET /age HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&response), 501);
}

#[test]
fn v2_get_without_a_token_is_401() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let mut client = Client::new(40003);
    let response = client.exchange(&mut stack, t0, "GET /latest HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&response), 401);
    assert!(body_of(&response).starts_with("No MMDS token provided."));
    assert_eq!(stack.counters().answers_unauthorized, 1);
}

fn put_token(stack: &mut MmdsStack, port: u16, t0: Instant, extra: &str) -> String {
    let mut client = Client::new(port);
    client.exchange(
        stack,
        t0,
        &format!(
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n{extra}\r\n"
        ),
    )
}

#[test]
fn v2_token_flow_reads_metadata_and_aws_header_names_work() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let response = put_token(&mut stack, 40004, t0, "");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("X-metadata-token-ttl-seconds: 60\r\n"));
    let token = body_of(&response).to_string();
    for (port, name) in [
        (40005, "X-metadata-token"),
        (40006, "X-aws-ec2-metadata-token"),
    ] {
        let mut client = Client::new(port);
        let response = client.exchange(
            &mut stack,
            t0,
            &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{name}: {token}\r\n\r\n"),
        );
        assert_eq!(status_of(&response), 200, "{response}");
        assert_eq!(body_of(&response), "i-1234");
    }
    // After the TTL the token is refused.
    let later = t0 + Duration::from_secs(61);
    let mut client = Client::new(40007);
    let response = client.exchange(
        &mut stack,
        later,
        &format!("GET /latest HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
    );
    assert_eq!(status_of(&response), 401);
    assert_eq!(body_of(&response), "MMDS token not valid.");
}

#[test]
fn token_from_another_vm_key_or_interface_is_401() {
    let t0 = Instant::now();
    let mut issuer = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let token = body_of(&put_token(&mut issuer, 40008, t0, "")).to_string();
    for (key, iface) in [(2, "eth0"), (1, "eth1")] {
        let mut stack = stack_with(MmdsVersion::V2, key, iface, t0);
        let mut client = Client::new(40009);
        let response = client.exchange(
            &mut stack,
            t0,
            &format!("GET /latest HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
        );
        assert_eq!(status_of(&response), 401, "key {key} iface {iface}");
    }
}

#[test]
fn token_put_with_x_forwarded_for_is_refused() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let response = put_token(&mut stack, 40010, t0, "X-Forwarded-For: 1.2.3.4\r\n");
    assert_eq!(status_of(&response), 400);
    assert_eq!(
        body_of(&response),
        "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"
    );
}

#[test]
fn token_ttl_out_of_bounds_is_400_and_other_methods_405() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    let mut client = Client::new(40011);
    let response = client.exchange(
        &mut stack,
        t0,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21601\r\n\r\n",
    );
    assert_eq!(status_of(&response), 400);
    assert!(body_of(&response).starts_with("Invalid time to live value provided for token: 21601."));
    let mut client = Client::new(40012);
    let response = client.exchange(&mut stack, t0, "DELETE /latest HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&response), 405);
    assert!(response.contains("Allow: GET, PUT\r\n"));
}

#[test]
fn syn_flood_is_bounded_to_the_socket_count_and_counted() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    drain(&mut stack);
    let mut syn_acks = 0;
    let mut rsts = 0;
    for i in 0..100u16 {
        let client = Client::new(50000 + i);
        let frame = client.segment(true, false, b"");
        assert_eq!(stack.handle_guest_frame(&frame, t0), Verdict::Consumed);
        for f in drain(&mut stack) {
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            if let Some(TransportSlice::Tcp(tcp)) = p.transport {
                if tcp.rst() {
                    rsts += 1;
                } else if tcp.syn() {
                    syn_acks += 1;
                }
            }
        }
    }
    assert_eq!(syn_acks, MAX_CONNECTIONS);
    assert_eq!(rsts, 100 - MAX_CONNECTIONS);
    assert_eq!(stack.counters().syn_refused, (100 - MAX_CONNECTIONS) as u64);
    // The half-open connections are freed at their deadline; a new client is served.
    let later = t0 + CONN_DEADLINE + Duration::from_secs(1);
    stack.poll(later);
    stack.poll(later);
    drain(&mut stack);
    let mut client = Client::new(40013);
    let response = client.exchange(&mut stack, later, "GET /latest HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&response), 401);
}

#[test]
fn oversized_request_head_is_400_not_unbounded() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V1, 1, "eth0", t0);
    let mut client = Client::new(40014);
    let request = format!("GET / HTTP/1.1\r\nX-Junk: {}\r\n\r\n", "a".repeat(6000));
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    drain(&mut stack);
    client.send(&mut stack, t0, true, false, b"");
    for chunk in request.as_bytes().chunks(1000) {
        if client.fin {
            break;
        }
        client.send(&mut stack, t0, false, false, chunk);
    }
    assert!(
        client.fin,
        "the server answers and closes before the head ends"
    );
    let response = String::from_utf8(client.received.clone()).unwrap();
    assert_eq!(status_of(&response), 400, "{response}");
}

#[test]
fn config_that_would_panic_smoltcp_is_refused() {
    let t0 = Instant::now();
    let data = Arc::new(RwLock::new(json!({})));
    let mut config = MmdsNetConfig::new("eth0");
    config.hop_limit = 0;
    let key = TokenKey::from_bytes([0; 32]);
    let err = MmdsStack::new(config, key.clone(), data.clone(), 0, t0).unwrap_err();
    assert_eq!(err, MmdsNetError::HopLimit);
    let mut config = MmdsNetConfig::new("eth0");
    config.mac = [0xff; 6];
    let err = MmdsStack::new(config, key.clone(), data.clone(), 0, t0).unwrap_err();
    assert_eq!(err, MmdsNetError::Mac);
    let mut config = MmdsNetConfig::new("eth0");
    config.ipv4_address = Ipv4Addr::BROADCAST;
    assert!(MmdsStack::new(config, key, data, 0, t0).is_err());
}

#[test]
fn hop_limit_is_configurable_and_a_request_via_the_gateway_mac_is_still_answered() {
    let t0 = Instant::now();
    let mut config = MmdsNetConfig::new("eth0");
    config.version = MmdsVersion::V1;
    config.hop_limit = 64;
    let data = Arc::new(RwLock::new(json!({"k": "v"})));
    let mut stack = MmdsStack::new(config, TokenKey::from_bytes([1; 32]), data, 7, t0).unwrap();
    let mut client = Client::new(40015);
    // A guest without a route to 169.254.169.254 sends it to its gateway's MAC.
    client.dst_mac = [0xaa; 6];
    let response = client.exchange(&mut stack, t0, "GET /k HTTP/1.1\r\n\r\n");
    assert_eq!(body_of(&response), "v");
    assert!(client.ttls.iter().all(|&t| t == 64), "{:?}", client.ttls);
}

#[test]
fn a_put_and_patch_to_the_store_after_the_stack_started_are_what_the_guest_reads() {
    let t0 = Instant::now();
    let mut store = crate::mmds::MmdsStore::default();
    store.put(json!({"v": 1})).unwrap();
    let mut config = MmdsNetConfig::new("eth0");
    config.version = MmdsVersion::V1;
    let mut stack =
        MmdsStack::new(config, TokenKey::from_bytes([1; 32]), store.shared(), 7, t0).unwrap();
    let get = "GET /v HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: application/json\r\n\r\n";
    let response = Client::new(40001).exchange(&mut stack, t0, get);
    assert_eq!(body_of(&response), "1", "{response}");
    store.put(json!({"v": 2})).unwrap();
    let response = Client::new(40002).exchange(&mut stack, t0, get);
    assert_eq!(body_of(&response), "2", "{response}");
    store.patch(&json!({"v": {"w": 3}})).unwrap();
    let response = Client::new(40003).exchange(&mut stack, t0, get);
    assert_eq!(body_of(&response), r#"{"w":3}"#, "{response}");
}

/// Captures the audit lines of stacks whose sink is [`capture::sink`], per test thread.
mod capture {
    use std::cell::RefCell;

    thread_local!(static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) });

    /// An audit sink that keeps the line for [`take`].
    pub fn sink(line: &str) {
        LINES.with(|l| l.borrow_mut().push(line.to_string()));
    }

    /// The lines captured on this thread so far.
    pub fn take() -> Vec<String> {
        LINES.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}

fn audit_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("mmds request: "))
        .collect()
}

#[test]
fn each_answered_request_gives_one_audit_line_with_the_token_age_never_the_token_or_values() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    stack.set_audit_sink(capture::sink);
    let token = {
        let token = body_of(&put_token(&mut stack, 41000, t0, "")).to_string();
        let later = t0 + Duration::from_secs(7);
        let get = format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"
        );
        let response = Client::new(41001).exchange(&mut stack, later, &get);
        assert_eq!(body_of(&response), "i-1234");
        let bad = "GET /latest HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n";
        Client::new(41002).exchange(&mut stack, later, bad);
        let long = format!("GET /{}%0a HTTP/1.1\r\n\r\n", "p".repeat(300));
        Client::new(41003).exchange(&mut stack, later, &long);
        Client::new(41004).exchange(&mut stack, later, "GET /\x01 HTTP/1.1\r\n\r\n");
        token
    };
    let lines = capture::take();
    let audit = audit_lines(&lines);
    assert_eq!(audit.len(), 5, "{lines:#?}");
    assert_eq!(
        audit[0],
        "mmds request: iface=eth0 method=PUT path=/latest/api/token status=200 suppressed=0"
    );
    assert_eq!(
        audit[1],
        "mmds request: iface=eth0 method=GET path=/latest/meta-data/instance-id status=200 \
         token_age_s=7 suppressed=0"
    );
    assert_eq!(
        audit[2],
        "mmds request: iface=eth0 method=GET path=/latest status=401 suppressed=0"
    );
    // A long path is cut at 128 bytes; a request line httparse refuses is logged as `-`.
    assert!(audit[3].contains(&format!(" path=/{}... status=401", "p".repeat(127))));
    assert_eq!(
        audit[4],
        "mmds request: iface=eth0 method=- path=- status=400 suppressed=0"
    );
    for line in &lines {
        assert!(!line.contains(&token) && !line.contains("i-1234"), "{line}");
    }
}

#[test]
fn audit_lines_over_the_vm_budget_are_suppressed_and_counted_in_the_next_one() {
    let t0 = Instant::now();
    let lines_bucket = crate::rate_limiter::TokenBucketConfig {
        size: 2,
        one_time_burst: None,
        refill_time: 3_600_000,
    };
    let mut config = MmdsNetConfig::new("eth0");
    config.limits = MmdsLimits::new(
        &crate::rate_limiter::RateLimiterConfig::default(),
        &lines_bucket,
    );
    let limits = config.limits.clone();
    let data = Arc::new(RwLock::new(json!({})));
    let mut stack = MmdsStack::new(config, TokenKey::from_bytes([1; 32]), data, 7, t0).unwrap();
    stack.set_audit_sink(capture::sink);
    for port in 0..5 {
        Client::new(41100 + port).exchange(&mut stack, t0, "GET / HTTP/1.1\r\n\r\n");
    }
    let lines = capture::take();
    assert_eq!(audit_lines(&lines).len(), 2, "{lines:#?}");
    assert_eq!(
        stack.counters().answers_unauthorized,
        5,
        "every request is counted"
    );
    // The budget is the VM's: another interface's line is suppressed too (the line that
    // the next token allows says how many were: limits.rs tests it).
    assert_eq!(limits.audit_line(), None);
}

/// Two interfaces of one VM sharing a request limit of `size` connections.
fn two_interfaces_limited_to(size: u64, t0: Instant) -> (MmdsStack, MmdsStack) {
    let ops = crate::rate_limiter::TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time: 3_600_000,
    };
    let limits = MmdsLimits::new(
        &crate::rate_limiter::RateLimiterConfig {
            bandwidth: None,
            ops: Some(ops),
        },
        &limits::AUDIT_LINE_BUDGET,
    );
    let data = Arc::new(RwLock::new(json!({"k": "v"})));
    let key = TokenKey::from_bytes([1; 32]);
    let stack = |iface: &str| {
        let mut config = MmdsNetConfig::new(iface);
        config.version = MmdsVersion::V1;
        config.limits = limits.clone();
        MmdsStack::new(config, key.clone(), data.clone(), 7, t0).unwrap()
    };
    (stack("eth0"), stack("eth1"))
}

#[test]
fn syns_over_the_vm_request_limit_are_dropped_unanswered_counted_and_shared_by_interfaces() {
    let t0 = Instant::now();
    let (mut eth0, mut eth1) = two_interfaces_limited_to(3, t0);
    let get = "GET /k HTTP/1.1\r\n\r\n";
    assert_eq!(
        body_of(&Client::new(42000).exchange(&mut eth0, t0, get)),
        "v"
    );
    assert_eq!(
        body_of(&Client::new(42001).exchange(&mut eth1, t0, get)),
        "v"
    );
    assert_eq!(
        body_of(&Client::new(42002).exchange(&mut eth0, t0, get)),
        "v"
    );
    for stack in [&mut eth0, &mut eth1] {
        let syn = Client::new(42003).segment(true, false, b"");
        assert_eq!(stack.handle_guest_frame(&syn, t0), Verdict::Consumed);
        assert!(drain(stack).is_empty(), "no SYN-ACK, no RST: dropped");
        assert_eq!(stack.counters().rate_limited, 1);
        assert_eq!(stack.counters().syn_refused, 0);
    }
    assert_eq!(eth0.counters().answers_ok + eth1.counters().answers_ok, 3);
}

#[test]
fn every_mmds_counter_is_published_to_the_interface_metrics() {
    use crate::metrics::NetDeviceMetrics;

    let t0 = Instant::now();
    // Room for the two requests, one trickling connection and the half-open ones.
    let (mut stack, _) = two_interfaces_limited_to(MAX_CONNECTIONS as u64 + 3, t0);
    let m = Arc::new(NetDeviceMetrics::new());
    stack.set_metrics(m.clone());
    let ok = Client::new(43000).exchange(&mut stack, t0, "GET /k HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&ok), 200);
    let err = Client::new(43001).exchange(&mut stack, t0, "GET /none HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&err), 404);
    // A fragment and a frame too big for the input buffer are dropped.
    let mut fragment = Client::new(43002).segment(true, false, b"");
    fragment[14 + 6] = 0x20;
    stack.handle_guest_frame(&fragment, t0);
    let mut huge = Client::new(43003).segment(false, false, b"");
    huge.resize(device::MAX_RX_FRAME + 1, 0);
    stack.handle_guest_frame(&huge, t0);
    // A client that trickles its request a byte at a time is cut at the deadline.
    let mut slow = Client::new(43004);
    slow.send(&mut stack, t0, true, false, b"");
    for secs in [4, 8] {
        slow.send(
            &mut stack,
            t0 + Duration::from_secs(secs),
            false,
            false,
            b"G",
        );
    }
    let at_deadline = t0 + CONN_DEADLINE + Duration::from_millis(500);
    slow.send(&mut stack, at_deadline, false, false, b"E");
    assert!(slow.rst, "aborted");
    // Half-open connections fill every slot: the next SYN is refused (RST).
    for i in 0..MAX_CONNECTIONS as u16 + 1 {
        let syn = Client::new(43100 + i).segment(true, false, b"");
        stack.handle_guest_frame(&syn, at_deadline);
    }
    // ARP requests nobody drains: the guest-bound queue fills.
    for _ in 0..TX_QUEUE_FRAMES + 5 {
        stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), at_deadline);
    }
    drain(&mut stack);
    // Once the half-open ones time out, a SYN finds a slot but the VM's limit is spent.
    let later = at_deadline + CONN_DEADLINE;
    stack.poll(later);
    drain(&mut stack);
    let syn = Client::new(43200).segment(true, false, b"");
    stack.handle_guest_frame(&syn, later);
    let c = stack.counters();
    let published = [
        (m.mmds_answers_ok.count(), c.answers_ok, 1),
        (m.mmds_answers_error.count(), c.answers_error, 1),
        (m.mmds_fragments.count(), c.fragments, 1),
        (m.mmds_frames_too_big.count(), c.frames_too_big, 1),
        (m.mmds_syn_refused.count(), c.syn_refused, 1),
        (m.mmds_rate_limited.count(), c.rate_limited, 1),
        (m.mmds_deadline_aborts.count(), c.deadline_aborts, 1),
    ];
    for (i, (metric, counter, expected)) in published.into_iter().enumerate() {
        assert_eq!((metric, counter), (expected, expected), "row {i}: {c:?}");
    }
    assert!(
        c.queue_full > 0 && m.mmds_queue_full.count() == c.queue_full,
        "{c:?}"
    );
    assert_eq!(m.mmds_answers_unauthorized.count(), c.answers_unauthorized);
}

#[test]
fn stray_segments_beyond_the_vm_frame_limit_are_dropped_before_the_stack() {
    let t0 = Instant::now();
    // One request a VM: 64 frames.
    let (mut stack, _) = two_interfaces_limited_to(1, t0);
    // The guest's ARP (one frame of the budget) teaches the stack its MAC.
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    let mut rsts = drain(&mut stack).len();
    for i in 0..99u16 {
        // An ACK for no connection: smoltcp would answer each with an RST.
        let stray = Client::new(44000 + i).segment(false, false, b"x");
        assert_eq!(stack.handle_guest_frame(&stray, t0), Verdict::Consumed);
        rsts += drain(&mut stack).len();
    }
    assert_eq!(rsts, limits::FRAMES_PER_REQUEST as usize);
    assert_eq!(
        stack.counters().rate_limited,
        100 - limits::FRAMES_PER_REQUEST
    );
    assert_eq!(stack.counters().frames_in, 100);
}

/// Not a check: prints what the VMM thread spends on MMDS traffic, per guest frame and per
/// request, for the report and README. Run it optimised:
/// `cargo test --release --lib measure_mmds_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run by hand with --release"]
fn measure_mmds_cost_per_frame_and_request() {
    let t0 = Instant::now();
    let unlimited = MmdsLimits::new(
        &crate::rate_limiter::RateLimiterConfig::default(),
        &limits::AUDIT_LINE_BUDGET,
    );
    let fresh = |version| {
        let mut config = MmdsNetConfig::new("eth0");
        config.version = version;
        config.limits = unlimited.clone();
        let data = Arc::new(RwLock::new(json!({
            "latest": {"meta-data": {"instance-id": "i-1234", "iam": {"security-credentials":
                {"role": {"AccessKeyId": "A".repeat(20), "SecretAccessKey": "S".repeat(40),
                          "Token": "T".repeat(800)}}}}},
            // About the default store limit (51200 bytes): the largest answer there is.
            "big": "x".repeat(50_000)
        })));
        MmdsStack::new(config, TokenKey::from_bytes([1; 32]), data, 7, t0).unwrap()
    };
    let report = |what: &str, n: u32, elapsed: Duration| {
        println!(
            "{what}: {:.2} us each ({n} in {elapsed:?})",
            elapsed.as_secs_f64() * 1e6 / f64::from(n)
        );
    };
    // Whole requests, every guest frame of them included.
    let role = "/latest/meta-data/iam/security-credentials/role";
    for (version, name, path, n) in [
        (MmdsVersion::V1, "V1 GET of 1 KB", role, 2000u32),
        (MmdsVersion::V2, "V2 GET of 1 KB", role, 2000),
        (MmdsVersion::V2, "V2 GET of 50 KB", "/big", 200),
    ] {
        let mut stack = fresh(version);
        let token = body_of(&put_token(&mut stack, 1000, t0, "")).to_string();
        let get = format!(
            "GET {path} HTTP/1.1\r\nAccept: application/json\r\nX-metadata-token: {token}\r\n\r\n"
        );
        let frames_before = stack.counters().frames_in;
        take_stack_time();
        let start = Instant::now();
        for i in 0..n {
            let response = Client::new(2000 + (i % 20000) as u16).exchange(&mut stack, t0, &get);
            assert_eq!(status_of(&response), 200);
        }
        let elapsed = start.elapsed();
        let in_stack = take_stack_time();
        let frames = stack.counters().frames_in - frames_before;
        report(
            &format!(
                "{name} request, in the stack ({} guest frames each)",
                frames / u64::from(n)
            ),
            n,
            in_stack,
        );
        report(
            &format!("{name} request, with the test's client"),
            n,
            elapsed,
        );
    }
    // Single frames that open nothing.
    let n = 100_000u32;
    let mut stack = fresh(MmdsVersion::V2);
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    drain(&mut stack);
    let stray = Client::new(3000).segment(false, false, b"x");
    let start = Instant::now();
    for _ in 0..n {
        stack.handle_guest_frame(&stray, t0);
        drain(&mut stack);
    }
    report("stray segment answered by RST", n, start.elapsed());
    let arp = arp_request(DEFAULT_IPV4.octets());
    let start = Instant::now();
    for _ in 0..n {
        stack.handle_guest_frame(&arp, t0);
        drain(&mut stack);
    }
    report("ARP request answered", n, start.elapsed());
    for i in 0..MAX_CONNECTIONS as u16 {
        stack.handle_guest_frame(&Client::new(4000 + i).segment(true, false, b""), t0);
    }
    drain(&mut stack);
    let syn = Client::new(5000).segment(true, false, b"");
    let start = Instant::now();
    for _ in 0..n {
        stack.handle_guest_frame(&syn, t0);
        drain(&mut stack);
    }
    report("SYN refused, every slot taken", n, start.elapsed());
    let (mut limited, _) = two_interfaces_limited_to(1, t0);
    for _ in 0..limits::FRAMES_PER_REQUEST {
        limited.handle_guest_frame(&stray, t0);
    }
    drain(&mut limited);
    let start = Instant::now();
    for _ in 0..n {
        limited.handle_guest_frame(&stray, t0);
    }
    report("frame over the VM frame limit, dropped", n, start.elapsed());
    let other = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(GUEST_MAC, [0xaa; 6])
            .ipv4(GUEST_IP, [8, 8, 8, 8], 64)
            .udp(1000, 53)
            .write(&mut f, b"query")
            .unwrap();
        f
    };
    let start = Instant::now();
    for _ in 0..n {
        stack.handle_guest_frame(&other, t0);
    }
    report("frame that is not MMDS traffic, passed", n, start.elapsed());
}

#[test]
fn a_connection_reset_in_syn_received_frees_its_socket_with_a_fresh_deadline() {
    let t0 = Instant::now();
    let mut stack = stack_with(MmdsVersion::V2, 1, "eth0", t0);
    stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0);
    drain(&mut stack);
    // Eight half-open connections take every socket.
    for port in 30000..30000 + MAX_CONNECTIONS as u16 {
        let mut c = Client::new(port);
        stack.handle_guest_frame(&c.segment(true, false, b""), t0);
        drain(&mut stack);
        c.seq += 1;
        // The guest resets each (RST|ACK, as an ACK-carrying RST is not taken by a listening
        // socket ahead of it): the socket listens again.
        let rst = PacketBuilder::ethernet2(GUEST_MAC, DEFAULT_MAC)
            .ipv4(GUEST_IP, DEFAULT_IPV4.octets(), 64)
            .tcp(c.port, 80, c.seq, 0)
            .rst()
            .ack(0);
        let mut frame = Vec::new();
        rst.write(&mut frame, b"").unwrap();
        stack.handle_guest_frame(&frame, t0 + Duration::from_secs(9));
        drain(&mut stack);
    }
    // New connections 9 s after the first ones opened get every socket, and keep them past
    // the first ones' deadline: theirs counts from their own opening.
    let t1 = t0 + Duration::from_secs(9);
    let mut second: Vec<Client> = (0..MAX_CONNECTIONS as u16)
        .map(|i| Client::new(40000 + i))
        .collect();
    for c in &mut second {
        c.send(&mut stack, t1, true, false, b"");
        assert!(c.ack != 0 && !c.rst, "port {} refused", c.port);
    }
    let t2 = t0 + Duration::from_secs(12);
    stack.poll(t2);
    for c in &mut second {
        c.receive(&mut stack, t2);
        assert!(!c.rst, "port {} aborted 3 s after it opened", c.port);
    }
    assert_eq!(stack.counters().deadline_aborts, 0);
}

/// smoltcp 0.12's socket timeout (documented for unacknowledged data and keep-alive) also
/// ends a connection that is merely idle: its check runs at every poll against the time of
/// the guest's last segment, whatever is in flight. So an idle connection (handshake only)
/// and a stalled one (half a head) are reset 5 s after the guest's last segment, well before
/// the 10 s deadline.
#[test]
fn an_idle_or_stalled_connection_is_reset_5_s_after_the_guests_last_segment() {
    for head in [&b""[..], b"GET /lat"] {
        let t0 = Instant::now();
        let mut stack = stack_with(MmdsVersion::V1, 1, "eth0", t0);
        timed(|| stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), t0));
        drain(&mut stack);
        let mut client = Client::new(44001);
        client.send(&mut stack, t0, true, false, b"");
        assert_ne!(client.ack, 0, "established");
        // The guest's last segment: its ACK of the SYN-ACK, or 2 s later half a head.
        let last = if head.is_empty() {
            t0
        } else {
            let t1 = t0 + Duration::from_secs(2);
            client.send(&mut stack, t1, false, false, head);
            t1
        };
        for (after_ms, reset) in [(4_900, false), (5_000, true)] {
            let at = last + Duration::from_millis(after_ms);
            stack.poll(at);
            client.receive(&mut stack, at);
            assert_eq!(client.rst, reset, "{head:?} {after_ms} ms after");
        }
        assert_eq!(stack.counters().deadline_aborts, 0, "not the 10 s deadline");
    }
}
