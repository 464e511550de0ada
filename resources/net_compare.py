#!/usr/bin/env python3
"""The network figure of the benchmark command (resources/bench.sh), side by side: the probe
guest on a tap in a network namespace made here (host 10.0.0.1, guest 10.0.0.2; nothing
leaves the namespace), under Palisade with its firewall off and with 10 / 1,000 / 10,000 rules
(the traffic matches the last ones) and, when a Firecracker binary is given, under Firecracker
(which has no firewall), alternating: every round boots each VMM once per figure, in an order
that rotates from round to round. Root, stdlib only.

    net_compare.py PROBE_ELF PALISADE_BIN [FIRECRACKER_BIN] [--runs N] [--frames F]
                   [--rules 10 1000 10000] [--pings P] [--json OUT] [--before BIN]

--before BIN adds another Palisade binary (an earlier build) with its firewall off and with
1,000 rules to the same rounds, for a before/after comparison under the same load.

Per boot, for 64- and 1514-byte frames (Ethernet header to the end of the UDP payload):
- guest->host: the probe's net-tx sends F UDP datagrams to a closed port on the host;
- host->guest: a sender in the namespace (sendmmsg, 64 datagrams a call) floods UDP port 5000
  from when the probe's net-rx is ready; net-rx counts F datagrams (or stops after 10 s);
- frames/s and Mbit/s as the guest's TSC times them;
- device-thread CPU per frame: the run time of the VMM's threads that never run the guest
  (its event loop, where both VMMs emulate virtio-net; the vCPU threads are left out, since
  the kernel counts the guest's own time as theirs and splits it from the exits' only in
  10 ms ticks), from the probe being ready (net-tx) or the sender starting (net-rx) to the
  guest halting after its count (the `idle` scenario), /proc/PID/task/*/schedstat, over the
  frames the guest sent or received.
And ping latency: the host pings (a raw ICMP socket) the probe's net-echo P times, 10 ms
apart; the median RTT (the probe answers the echo from its polling loop).
Prints medians over N rounds with their spread (half the interquartile range, in % of the
median) and Palisade / Firecracker ratios; --json writes every sample.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe"))
import vsock_peer  # noqa: E402  (Guest: serial lines, wait_for, stop)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (the rows of resources/bench_table.py)

vsock_peer.TIMEOUT = 120
HOST, GUEST, GUEST_MAC = "10.0.0.1", "10.0.0.2", "06:00:0a:00:00:02"
PORT = 5000
FRAMES = (64, 1514)
OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4, UDP headers

# Floods GUEST:PORT with argv[1]-byte UDP payloads, 64 datagrams per sendmmsg(2) call (ctypes:
# one Python call per 64 frames, so the sender outruns the VMMs it measures); errors (a full
# queue, an ICMP error reported back) are ignored.
SENDER = """
import ctypes, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]
size = int(sys.argv[1])
buf = ctypes.create_string_buffer(b"x" * size, size)
iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
msgs = (MMsgHdr * 64)()
for m in msgs:
    m.hdr.iov = ctypes.pointer(iov)
    m.hdr.iovlen = 1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("GUEST", PORT))
fd = s.fileno()
while True:
    libc.sendmmsg(fd, msgs, 64, 0)
""".replace("GUEST", GUEST).replace("PORT", str(PORT))


# Pings GUEST argv[1] times, 10 ms apart, from a raw ICMP socket (no ping binary needed);
# prints each RTT in microseconds, or "lost".
PINGER = """
import os, select, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    return ~((s & 0xffff) + (s >> 16)) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
for seq in range(int(sys.argv[1])):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + bytes(56)
    pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    t0 = time.perf_counter()
    s.sendto(pkt, ("GUEST", 0))
    rtt = None
    while rtt is None:
        left = 1.0 - (time.perf_counter() - t0)
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        reply = s.recv(2048)
        t, _, _, rid, rseq = struct.unpack("!BBHHH", reply[20:28])
        if t == 0 and rid == ident and rseq == seq:
            rtt = (time.perf_counter() - t0) * 1e6
    print("lost" if rtt is None else "%.1f" % rtt, flush=True)
    time.sleep(0.01)
""".replace("GUEST", GUEST)


def rules_json(n):
    """n rules: n - 2 denies on other ports, then the allow the UDP traffic matches and the one
    the pings match."""
    rules = [{"action": "deny", "proto": "udp", "ports": str(10000 + i), "cidr": "10.0.0.0/24"}
             for i in range(n - 2)]
    rules.append({"action": "allow", "proto": "udp", "cidr": "10.0.0.0/24"})
    rules.append({"action": "allow", "proto": "icmp", "cidr": "10.0.0.0/24"})
    return rules


class Vmm(vsock_peer.Guest):
    """One VMM in the namespace with the probe on tap0; the serial lines in `lines`."""

    def __init__(self, setup, ns, elf, boot_args, workdir):
        kind, _, binary, rules = setup
        iface = {"iface_id": "eth0", "host_dev_name": "tap0"}
        if rules:
            iface["guest_mac"] = GUEST_MAC
            iface["firewall"] = {"allowed_ips": [GUEST + "/32"], "egress": rules_json(rules),
                                 "ingress": rules_json(rules), "default_egress": "deny"}
        config = {
            "boot-source": {"kernel_image_path": elf,
                            "boot_args": f"console=ttyS0 reboot=k panic=1 probe.ip={GUEST}/24 "
                                         f"probe.peer={HOST}:9 probe.tsc_mhz={benchlib.tsc_mhz()} "
                                         + boot_args},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "network-interfaces": [iface],
        }
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        cmd = ["ip", "netns", "exec", ns, binary, "--no-api", "--config-file", path]
        if kind == "firecracker":
            cmd += ["--level", "Warning"]
        # `ip netns exec` execs the VMM: wait4 on this pid is the VMM's own rusage.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").strip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def cpu_seconds(self):
        """CPU time so far of the VMM's threads that never ran the guest (the event loop that
        emulates the devices, the API thread: where both VMMs do the network work), from the
        scheduler's run time in ns. vCPU threads are left out: the kernel counts the guest's
        own run time as theirs, and takes it apart from the exits' only in 10 ms ticks (so a
        short run could come out negative)."""
        total = 0.0
        task_dir = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task_dir):
            with open(f"{task_dir}/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is stat's field 3: guest_time is field 43.
            if int(fields[40]) == 0:
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e9
        return total


def boot(setup, ns, elf, boot_args, body):
    """Boots `setup` with `boot_args`, runs body(vm), returns what it returns; on a failure
    prints the serial output."""
    # The guest's MAC differs between setups (the firewall ones set guest_mac): forget it.
    subprocess.run(["ip", "netns", "exec", ns, "ip", "neigh", "flush", "dev", "tap0"], check=True)
    with tempfile.TemporaryDirectory() as d:
        vm = Vmm(setup, ns, elf, boot_args, d)
        try:
            return body(vm)
        except Exception:
            sys.stderr.write(f"{setup[1]}:\n" + "\n".join(x for x in vm.lines if x) + "\n")
            raise
        finally:
            vm.stop()


def throughput(setup, ns, elf, direction, frame, frames):
    """{fps, mbit, cpu_us} of one boot."""
    payload = frame - OVERHEAD
    if direction == "tx":
        args = f"probe.run=net-tx,idle probe.count={frames} probe.size={payload}"
    else:
        args = f"probe.run=net-rx,idle probe.count={frames} probe.port={PORT} probe.secs=10"

    def body(vm):
        sender = None
        try:
            vm.wait_for("probe: ready")
            start = vm.cpu_seconds()
            if direction == "rx":
                vm.wait_for("probe: net-rx ready")
                start = vm.cpu_seconds()
                sender = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                           SENDER, str(payload)])
            name = "net-tx" if direction == "tx" else "net-rx"
            _, line = vm.wait_for(f"probe: {name} ok")
        finally:
            if sender:
                sender.kill()
                sender.wait()
        vm.wait_for("probe: idle ok")  # the guest halts: the VMM's CPU is that of the frames
        cpu = vm.cpu_seconds() - start
        f = vsock_peer.fields(line)
        n = int(f["sent" if direction == "tx" else "received"])
        usecs = max(int(f["usecs"]), 1)
        return {"fps": n / (usecs / 1e6), "mbit": n * frame * 8 / usecs, "cpu_us": cpu * 1e6 / n}

    return boot(setup, ns, elf, args, body)


def ping_latency(setup, ns, elf, pings):
    """{rtt_us}: the median RTT of `pings` host pings to the probe's net-echo."""

    def body(vm):
        vm.wait_for("probe: net-echo ready")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PINGER,
                              str(pings)], capture_output=True, text=True, check=False).stdout
        rtts = [float(x) for x in out.split() if x != "lost"]
        if len(rtts) < pings // 2:
            raise RuntimeError(f"only {len(rtts)} of {pings} pings answered:\n{out}")
        return {"rtt_us": statistics.median(rtts)}

    return boot(setup, ns, elf, f"probe.run=net-echo probe.secs=120 probe.port={PORT}", body)


def spread(xs):
    """Half the interquartile range in % of the median."""
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    return 50 * (q[2] - q[0]) / statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe")
    ap.add_argument("palisade")
    ap.add_argument("firecracker", nargs="?")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--rules", type=int, nargs="*", default=[10, 1000, 10000])
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--before", help="an earlier Palisade binary to measure in the same rounds")
    a = ap.parse_args()
    if any(n < 2 for n in a.rules):
        ap.error("--rules: at least 2 (the UDP and the ICMP allow)")
    elf = os.path.abspath(a.probe)
    setups = [("palisade", "firewall off", os.path.abspath(a.palisade), 0)]
    setups += [("palisade", f"{n} rules", os.path.abspath(a.palisade), n) for n in a.rules]
    if a.before:
        before = os.path.abspath(a.before)
        setups += [("palisade", "before: off", before, 0),
                   ("palisade", "before: 1000 rules", before, 1000)]
    if a.firecracker:
        setups.append(("firecracker", "Firecracker", os.path.abspath(a.firecracker), 0))
    figures = [(d, fr) for fr in FRAMES for d in ("tx", "rx")]
    ns = f"palnet{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    samples = {s[1]: {} for s in setups}
    load = [os.getloadavg()[0]]
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                        f"ip tuntap add dev tap0 mode tap && ip addr add {HOST}/24 dev tap0 && "
                        "ip link set tap0 up && ip link set lo up"], check=True)
        for r in range(a.runs):
            order = setups[r % len(setups):] + setups[:r % len(setups)]
            for d, fr in figures:
                for s in order:
                    res = throughput(s, ns, elf, d, fr, a.frames)
                    for k, v in res.items():
                        samples[s[1]].setdefault(f"{d}{fr}_{k}", []).append(v)
            for s in order:
                samples[s[1]].setdefault("ping_rtt_us", []).append(
                    ping_latency(s, ns, elf, a.pings)["rtt_us"])
            load.append(os.getloadavg()[0])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    report(a, setups, samples, load)


def report(a, setups, samples, load):
    names = [s[1] for s in setups]
    rows = []
    for d, fr in [(d, fr) for fr in FRAMES for d in ("tx", "rx")]:
        way = "guest->host" if d == "tx" else "host->guest"
        rows += [(f"{d}{fr}_fps", f"{way} {fr} B kframes/s", 1e-3, True),
                 (f"{d}{fr}_mbit", f"{way} {fr} B Mbit/s", 1, True),
                 (f"{d}{fr}_cpu_us", f"{way} {fr} B device-thread CPU us/frame", 1, False)]
    rows.append(("ping_rtt_us", "ping RTT us", 1, False))
    print(f"virtio-net, probe guest on a tap, 1 vCPU, release builds, {a.frames} frames per "
          f"boot, medians of {a.runs} alternating rounds (+-: half the IQR in %), load average "
          f"{min(load):.1f}-{max(load):.1f}")
    fc = "Firecracker" in names
    head = f"{'':34}" + "".join(f"{n:>18}" for n in names)
    if fc:
        head += f"{'off/FC':>8}{'1000/FC':>8}"
    print(head)
    med = {n: {k: statistics.median(v) for k, v in samples[n].items()} for n in names}
    for key, label, scale, higher_better in rows:
        line = f"{label:34}"
        for n in names:
            line += f"{med[n][key] * scale:11.2f} +-{spread(samples[n][key]):3.0f}%"
        if fc:
            for n in ("firewall off", "1000 rules"):
                if n in med:
                    line += f"{med[n][key] / med['Firecracker'][key]:8.2f}"
                else:
                    line += f"{'-':>8}"
        print(line)
    if fc:
        print("(ratios Palisade / Firecracker: above 1 is faster for throughput, slower for CPU "
              "per frame and RTT)")
    if a.json:
        # The table's Palisade is the one with 1,000 rules (the goal's), or the firewall off
        # when 1,000 rules were not measured; every setup's samples stay in the file.
        pal = "1000 rules" if "1000 rules" in samples else "firewall off"
        table = [benchlib.row("5", f"{label} ({pal})", "", [v * scale for v in
                                                              samples[pal][key]],
                              [v * scale for v in samples.get("Firecracker", {}).get(key, [])],
                              "higher" if higher_better else "lower")
                 for key, label, scale, higher_better in rows]
        benchlib.write_rows(a.json, "net_compare", table, runs=a.runs, frames=a.frames,
                            load_range=[min(load), max(load)], samples=samples, medians=med)


if __name__ == "__main__":
    main()
