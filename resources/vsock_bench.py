#!/usr/bin/env python3
"""The vsock part of the benchmark command (resources/bench.sh): the probe guest's
`vsock-echo` then `vsock-bench` scenarios under Palisade (no policy, and a policy that lists
the ports and sets per-connection and device rate limiters far above what one connection
moves) and, when a Firecracker binary is given, under Firecracker, in the same run and
alternating (one boot of each per round), stdlib only.

    vsock_bench.py PROBE_ELF PALISADE_BIN [FIRECRACKER_BIN] [--runs N] [--mib M] [--connects K]

Per boot:
- host-initiated connect latency: K host clients, one after the other, each timed from its
  `CONNECT 5000\\n` to the `OK <port>\\n` (the guest's vsock-echo accepted), then closed;
- guest-initiated connect latency: vsock-bench's `connect_usecs` (REQUEST to RESPONSE, guest TSC);
- throughput: vsock-bench sends M MiB to the host listener at `<uds_path>_5000` in 16 KiB
  packets (guest->host), then the host sends M MiB back (host->guest); the guest's TSC times
  both (`tx_kib_s`, `rx_kib_s`).
Prints the median of every figure over N boots per VMM, and the Palisade / Firecracker ratio.
The host side of vsock-bench is resources/probe/vsock_peer.py's.
"""
import argparse
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe"))
import vsock_peer  # noqa: E402  (the probe's host side: Guest, host_connect, run_bench)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (the rows of resources/bench_table.py)

PORT = 5000
vsock_peer.TIMEOUT = 300  # a slow VMM is a figure, not an error
# High enough never to bind one connection: 64 GiB/s and 16 M packets/s per bucket.
NOT_BINDING = {"bandwidth": {"size": 1 << 33, "refill_time": 125},
               "ops": {"size": 1 << 21, "refill_time": 125}}
POLICY = {"host_initiated": [str(PORT)], "guest_initiated": [str(PORT)], "max_connections": 16,
          "connection_rate_limiter": NOT_BINDING, "rate_limiter": NOT_BINDING}


class Vmm(vsock_peer.Guest):
    """vsock_peer's Guest (serial lines, wait_for, stop) for either VMM, without echoing the
    guest's output (kept in `lines` for a failure report)."""

    def __init__(self, kind, binary, elf, args, workdir, policy):
        self.uds = os.path.join(workdir, "v.sock")
        vsock = {"guest_cid": 3, "uds_path": self.uds}
        if policy:
            vsock["policy"] = POLICY
        config = {
            "boot-source": {"kernel_image_path": elf,
                            "boot_args": "console=ttyS0 reboot=k panic=1 " + " ".join(args)},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "vsock": vsock,
        }
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        cmd = [binary, "--no-api", "--config-file", path]
        if kind == "firecracker":
            cmd += ["--level", "Warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()


def one_boot(kind, binary, elf, policy, mib, connects):
    """One boot: {figure: value}."""
    size = mib << 20
    args = ["probe.run=vsock-echo,vsock-bench", f"probe.port={PORT}", f"probe.count={connects}",
            "probe.secs=60", f"probe.bytes={size}", f"probe.tsc_mhz={benchlib.tsc_mhz()}"]
    with tempfile.TemporaryDirectory() as d:
        vm = Vmm(kind, binary, elf, args, d, policy)
        try:
            done = threading.Event()
            out = {}

            def bench():  # listens at <uds>_5000 before the guest's vsock-bench connects
                with contextlib.redirect_stdout(io.StringIO()):
                    out["ok"] = vsock_peer.run_bench(vm, {"port": PORT, "bytes": size})
                done.set()

            threading.Thread(target=bench, daemon=True).start()
            vm.wait_for("probe: vsock-echo ready")
            lat = []
            for _ in range(connects):
                t0 = time.perf_counter()
                s = vsock_peer.host_connect(vm, PORT)
                lat.append((time.perf_counter() - t0) * 1e6)
                s.close()
            vm.wait_for("probe: vsock-echo ok")
            _, connected = vm.wait_for("probe: vsock-bench connected")
            _, result = vm.wait_for("probe: vsock-bench ok")
            if not done.wait(10) or not out.get("ok"):
                raise RuntimeError("the host side of vsock-bench did not finish")
        except Exception:
            sys.stderr.write("\n".join(line for line in vm.lines if line) + "\n")
            raise
        finally:
            vm.stop()
    f = vsock_peer.fields(result)
    return {"g2h": int(f["tx_kib_s"]) / 1024, "h2g": int(f["rx_kib_s"]) / 1024,
            "host_connect": statistics.median(lat),
            "guest_connect": float(vsock_peer.fields(connected)["connect_usecs"])}


FIGURES = [("g2h", "guest->host", "MiB/s"), ("h2g", "host->guest", "MiB/s"),
           ("host_connect", "host CONNECT->OK", "us"), ("guest_connect", "guest connect", "us")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe")
    ap.add_argument("palisade")
    ap.add_argument("firecracker", nargs="?")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--json", help="write the figures as benchlib rows (figure 8)")
    a = ap.parse_args()
    a.palisade = os.path.abspath(a.palisade)
    a.firecracker = a.firecracker and os.path.abspath(a.firecracker)
    socket.setdefaulttimeout(60)  # host_connect must not wait forever on a broken guest
    setups = [("palisade", "Palisade, no policy", a.palisade, False),
              ("palisade", "Palisade, policy", a.palisade, True)]
    if a.firecracker:
        setups.append(("firecracker", "Firecracker", a.firecracker, False))
    seen = {name: [] for _, name, _, _ in setups}
    for _ in range(a.runs):
        for kind, name, binary, policy in setups:
            seen[name].append(one_boot(kind, binary, os.path.abspath(a.probe), policy,
                                       a.mib, a.connects))
    med = {name: {k: statistics.median(r[k] for r in runs) for k, _, _ in FIGURES}
           for name, runs in seen.items()}
    print(f"vsock, probe guest, 1 vCPU, {a.mib} MiB each way in 16 KiB guest packets, "
          f"{a.connects} host connects per boot, medians of {a.runs} boots, release build")
    print(f"{'':22}" + "".join(f"{label + ' ' + unit:>22}" for _, label, unit in FIGURES))
    for name, m in med.items():
        print(f"{name:22}" + "".join(f"{m[k]:22.1f}" for k, _, _ in FIGURES))
    if a.firecracker:
        fc = med["Firecracker"]
        for name in ("Palisade, no policy", "Palisade, policy"):
            # Throughput: Palisade / Firecracker (> 1 is faster); latency: Firecracker /
            # Palisade (> 1 is faster too).
            r = [med[name][k] / fc[k] if unit == "MiB/s" else fc[k] / med[name][k]
                 for k, _, unit in FIGURES]
            print(f"{name + ' vs FC':22}" + "".join(f"{x:21.2f}x" for x in r))
        print("(ratios: above 1 means Palisade is faster, for throughput and latency alike)")
    if a.json:
        # The table's Palisade is the one with a policy (the boundary as deployed).
        rows = [benchlib.row("8", f"vsock {label} (Palisade with a policy)", unit,
                             [r[k] for r in seen["Palisade, policy"]],
                             [r[k] for r in seen.get("Firecracker", [])],
                             "higher" if unit == "MiB/s" else "lower")
                for k, label, unit in FIGURES]
        benchlib.write_rows(a.json, "vsock_bench", rows, runs=a.runs, mib=a.mib)


if __name__ == "__main__":
    main()
