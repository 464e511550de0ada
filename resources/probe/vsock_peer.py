#!/usr/bin/env python3
"""Host side of the probe's vsock scenarios, for trying them under any VMM with
Firecracker's vsock contract (host-initiated: `CONNECT <port>\\n` on uds_path, answered
`OK <port>\\n`; guest-initiated: a Unix listener at `<uds_path>_<port>`).

    vsock_peer.py firecracker FC_BINARY PROBE_ELF SCENARIO [key=value ...]

boots PROBE_ELF under Firecracker (--no-api, a config file with a vsock section, CID 3),
plays the host's part of SCENARIO (vsock-echo, vsock-connect, vsock-many, vsock-hostile,
vsock-bench, vsock-stall), prints the guest's serial output and checks the result line. The extra
key=value words go on the guest command line as probe.KEY=VALUE.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

TIMEOUT = 60


def pattern(n, offset=0):
    return bytes((offset + i) % 251 for i in range(n))


class Guest:
    def __init__(self, fc, elf, args, workdir):
        self.uds = os.path.join(workdir, "v.sock")
        boot = "console=ttyS0 reboot=k panic=1 " + " ".join(args)
        config = {
            "boot-source": {"kernel_image_path": elf, "boot_args": boot},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "vsock": {"guest_cid": 3, "uds_path": self.uds},
        }
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.proc = subprocess.Popen(
            [fc, "--no-api", "--config-file", path, "--level", "Warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            print("  guest|", line, flush=True)
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, prefix, start=0):
        """Index and text of the first line from `start` on beginning with `prefix`."""
        deadline = time.time() + TIMEOUT
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if self.lines[i] is None:
                        raise RuntimeError(f"guest ended before {prefix!r}")
                    if self.lines[i].startswith(prefix):
                        return i, self.lines[i]
                left = deadline - time.time()
                if left <= 0:
                    raise RuntimeError(f"no {prefix!r} within {TIMEOUT}s")
                self.cond.wait(left)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def fields(line):
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def listen(guest, port, handler):
    path = f"{guest.uds}_{port}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(256)
    conns = []

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv, conns


def echo_handler(c):
    try:
        while data := c.recv(65536):
            c.sendall(data)
    except OSError:
        pass
    c.close()


def drain_handler(c):
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass


def host_connect(guest, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(guest.uds)
    s.sendall(f"CONNECT {port}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError(f"CONNECT {port}: closed after {reply!r}")
        reply += chunk
    if not reply.startswith(b"OK "):
        raise RuntimeError(f"CONNECT {port}: {reply!r}")
    return s


def run_echo(guest, opts):
    port, size = int(opts.get("port", 5000)), int(opts.get("bytes", 1 << 20))
    conns = int(opts.get("count", 1))
    at, _ = guest.wait_for("probe: vsock-echo ready")
    if int(opts.get("parallel", 0)):
        return echo_parallel(guest, port, size, conns, at)
    for n in range(conns):
        s = host_connect(guest, port)
        data = pattern(size)
        t = threading.Thread(target=s.sendall, args=(data,))
        t0 = time.time()
        t.start()
        got = bytearray()
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        t.join()
        secs = time.time() - t0
        s.shutdown(socket.SHUT_WR)
        at, line = guest.wait_for("probe: vsock-echo conn", at + 1)
        f = fields(line)
        ok = bytes(got) == data and f["crc32"] == f"{zlib.crc32(data):08x}" and int(f["bytes"]) == size
        print(f"host: echo conn {n}: sent {size} got {len(got)} back in {secs:.3f}s, identical={bytes(got) == data}, guest crc ok={ok}")
        s.close()
        if not ok:
            return False
    _, line = guest.wait_for("probe: vsock-echo ")
    _, line = guest.wait_for("probe: vsock-echo ok")
    return True


def echo_parallel(guest, port, size, conns, at):
    """All `conns` connections at once, each echoing `size` bytes."""
    results = [None] * conns

    def one(n):
        s = host_connect(guest, port)
        data = pattern(size, n)
        t = threading.Thread(target=s.sendall, args=(data,))
        t.start()
        got = bytearray()
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        t.join()
        results[n] = bytes(got) == data
        s.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, line = guest.wait_for("probe: vsock-echo ok", at)
    print(f"host: {conns} parallel echo connections identical: {results}")
    return all(results) and f"conns={conns}" in line


def run_connect(guest, opts):
    port, size = int(opts.get("port", 5000)), int(opts.get("bytes", 1 << 20))
    listen(guest, port, echo_handler)
    _, line = guest.wait_for("probe: vsock-connect ")
    f = fields(line)
    want = f"{zlib.crc32(pattern(size)):08x}"
    ok = " ok " in line and f.get("sent_crc32") == want and f.get("received_crc32") == want
    print(f"host: connect: expected crc32 {want} both ways: {ok}")
    return ok


def run_many(guest, opts):
    port = int(opts.get("port", 5000))
    listen(guest, port, drain_handler)
    _, line = guest.wait_for("probe: vsock-many ")
    return " ok " in line


def run_hostile(guest, opts):
    port = int(opts.get("port", 5000))
    listen(guest, port, drain_handler)
    _, line = guest.wait_for("probe: vsock-hostile ok")
    return True


def run_bench(guest, opts):
    port, size = int(opts.get("port", 5000)), int(opts.get("bytes", 1 << 20))
    reply = int(opts.get("reply", size))
    times = {}

    def handler(c):
        t0, n = time.time(), 0
        while n < size:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        times["rx"] = (n, time.time() - t0)
        block, sent, t1 = b"\xa5" * (1 << 16), 0, time.time()
        while sent < reply:
            sent += c.send(block[: min(len(block), reply - sent)])
        times["tx"] = (sent, time.time() - t1)
        c.shutdown(socket.SHUT_WR)
        drain_handler(c)

    listen(guest, port, handler)
    _, line = guest.wait_for("probe: vsock-bench ok")
    print(f"host: bench host side: {times}")
    return True


def run_stall(guest, opts):
    port, size = int(opts.get("port", 5000)), int(opts.get("bytes", 1 << 20))
    guest.wait_for("probe: vsock-stall ready")
    s = host_connect(guest, port)
    t0 = time.time()

    def writer():
        s.sendall(pattern(size))
        print(f"host: stall: all {size} bytes written after {time.time() - t0:.1f}s")
        s.shutdown(socket.SHUT_WR)

    threading.Thread(target=writer, daemon=True).start()
    _, line = guest.wait_for("probe: vsock-stall ok")
    s.close()
    f = fields(line)
    return int(f["received"]) == size and int(f["held"]) <= 65536


SCENARIOS = {"vsock-echo": run_echo, "vsock-connect": run_connect, "vsock-many": run_many,
             "vsock-hostile": run_hostile, "vsock-bench": run_bench, "vsock-stall": run_stall}


def main():
    if len(sys.argv) < 5 or sys.argv[1] != "firecracker":
        sys.exit(__doc__)
    fc, elf, scenario = os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3]), sys.argv[4]
    opts = dict(a.split("=", 1) for a in sys.argv[5:])
    args = [f"probe.run={scenario}"] + [f"probe.{k}={v}" for k, v in opts.items()]
    with tempfile.TemporaryDirectory() as d:
        guest = Guest(fc, elf, args, d)
        try:
            guest.wait_for("probe: ready")
            ok = SCENARIOS[scenario](guest, opts)
        finally:
            guest.stop()
    print("host: PASS" if ok else "host: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
