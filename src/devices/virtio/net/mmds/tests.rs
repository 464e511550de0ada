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

fn drain(stack: &mut MmdsStack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| stack.pop_guest_frame()).collect()
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
        assert_eq!(stack.handle_guest_frame(&frame, now), Verdict::Consumed);
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
                    stack.handle_guest_frame(&arp_reply(), now);
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
                stack.handle_guest_frame(&frame, now);
            }
        }
    }

    /// Handshake, request, the answer up to the server's FIN, our FIN.
    fn exchange(&mut self, stack: &mut MmdsStack, now: Instant, request: &str) -> String {
        // A guest kernel resolves the MMDS address first (and the stack learns its MAC).
        stack.handle_guest_frame(&arp_request(DEFAULT_IPV4.octets()), now);
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
