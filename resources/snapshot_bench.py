#!/usr/bin/env python3
"""The snapshot part of the benchmark command (resources/bench.sh): snapshot create and
restore times, Palisade and (when a binary is given) Firecracker in the same run, alternating,
stdlib only.

    snapshot_bench.py PROBE_ELF PALISADE_BIN [FIRECRACKER_BIN] [--runs N] [--mib M ...]
                      [--linux GUEST_DIR]

Per guest (the probe, which writes its pattern over all RAM and then ticks, so the whole
memory is populated; with --linux also the Linux test guest booted to its serial shell) and
size, each VMM boots the guest once (1 vCPU, M MiB) through its API socket and keeps it
running. Each run pauses it, creates a Full snapshot (the wall time of `PUT /snapshot/create`)
and resumes it; a new VMM process then loads the snapshot with `resume_vm` (the wall time of
`PUT /snapshot/load`, and from the load request until the guest shows it runs: the probe's
next `probe: tick` line, the Linux shell echoing a command sent to the serial console).
Setups:
- Palisade, keyed: `--snapshot-key-file` (HMAC-SHA-256 over the state and the memory file's
  size): the default integrity check;
- Palisade, keyed + hash_memory: the tag also covers the SHA-256 of the whole memory file
  (read at create and at load);
- Firecracker (no integrity check).
Memory files are written to a directory on /dev/shm when it has room (the figures are then
the VMMs' cost, not the disk's), else to the temporary directory.
Prints medians (and min-max) per figure, and Palisade / Firecracker ratios (below 1 is faster).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (the rows of resources/bench_table.py)

TIMEOUT = 120
KEY = b"palisade-bench-snapshot-key-0123456789"


def http(sock_path, method, path, body=None):
    """One HTTP/1.1 request on the API socket: (status, body text)."""
    data = json.dumps(body).encode() if body is not None else b""
    req = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(sock_path)
        s.sendall(req + data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"{method} {path}: connection closed")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest.decode(errors="replace")


class Vmm:
    """A VMM process with an API socket; serial lines collected with their arrival times."""

    def __init__(self, kind, binary, workdir, name, extra):
        self.sock = os.path.join(workdir, f"{name}.sock")
        if os.path.exists(self.sock):  # left by the killed VMM of the previous run
            os.unlink(self.sock)
        cmd = [binary, "--api-sock", self.sock] + extra
        if kind == "firecracker":
            cmd += ["--level", "Warning"]
        # The console input is a terminal (both VMMs forward a terminal on stdin to the
        # serial port; Palisade only a terminal), written through its master side.
        self.console, tty = os.openpty()
        self.proc = subprocess.Popen(cmd, stdin=tty, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=workdir)
        os.close(tty)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if http(self.sock, "GET", "/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                self.proc.wait()
                time.sleep(0.1)  # lets the stderr reader take the last bytes
                raise RuntimeError(f"{kind}: the API socket never answered: "
                                   f"{getattr(self, 'err', '')}")
            time.sleep(0.002)  # polling for the socket to appear

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append((time.perf_counter(), raw.decode(errors="replace")))
                self.cond.notify_all()

    def _drain_stderr(self):
        self.err = ""
        for raw in self.proc.stderr:
            self.err += raw.decode(errors="replace")

    def wait_for(self, prefix, after=0.0):
        """The arrival time of the first line starting with `prefix` that arrived after `after`."""
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while True:
                for t, line in self.lines:
                    if t > after and line.startswith(prefix):
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "".join(l for _, l in self.lines[-20:])
                    raise RuntimeError(f"no line {prefix!r}; serial tail:\n{tail}")
                self.cond.wait(min(left, 1.0))

    def call(self, method, path, body=None, expect=204):
        status, text = http(self.sock, method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path} -> {status} {text}")

    def type(self, text):
        """Types `text` on the serial console."""
        os.write(self.console, text.encode())

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.console)


def guest_setup(guest):
    """(boot-source body, line that says the guest is up) for "probe" or a Linux guest dir."""
    if guest["kind"] == "probe":
        return ({"kernel_image_path": guest["path"],
                 "boot_args": "console=ttyS0 reboot=k panic=1 probe.run=mem,ticker"},
                "probe: tick 3")
    d = guest["path"]
    with open(os.path.join(d, "boot_args")) as f:
        args = f.read().strip()
    return ({"kernel_image_path": os.path.join(d, "vmlinux"),
             "initrd_path": os.path.join(d, "initramfs.cpio"), "boot_args": args},
            "palisade-guest: no palisade.test=")


def running_after(vm, guest, t0, n):
    """Seconds from t0 until the restored guest shows it runs: the probe's next tick; the
    Linux guest's shell answering a command on the serial console."""
    if guest["kind"] == "probe":
        return vm.wait_for("probe: tick", after=t0) - t0
    vm.type(f"echo restored-{n}-$((6*7))\r")
    return vm.wait_for(f"restored-{n}-42", after=t0) - t0


class Source:
    """A booted guest kept running: paused for each create, resumed after."""

    def __init__(self, kind, binary, guest, mib, workdir, memdir):
        self.kind, self.binary, self.workdir, self.memdir = kind, binary, workdir, memdir
        self.extra = []
        if kind == "palisade":
            key = os.path.join(workdir, "key")
            with open(key, "wb") as f:
                f.write(KEY)
            os.chmod(key, 0o600)
            self.extra = ["--snapshot-key-file", key, "--snapshot-dir", memdir]
        boot, up = guest_setup(guest)
        self.vm = Vmm(kind, binary, workdir, f"{kind}-src", self.extra)
        self.vm.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib})
        self.vm.call("PUT", "/boot-source", boot)
        self.vm.call("PUT", "/actions", {"action_type": "InstanceStart"})
        self.vm.wait_for(up)

    def create(self, state, mem, hash_memory):
        self.vm.call("PATCH", "/vm", {"state": "Paused"})
        body = {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}
        if hash_memory:
            body["hash_memory"] = True
        t0 = time.perf_counter()
        self.vm.call("PUT", "/snapshot/create", body)
        took = time.perf_counter() - t0
        self.vm.call("PATCH", "/vm", {"state": "Resumed"})
        return took

    def stop(self):
        self.vm.stop()


def one_run(source, guest, hash_memory, n):
    """Create from the running source, load in a new process: {figure: ms}."""
    state = os.path.join(source.memdir, f"{source.kind}.state")
    mem = os.path.join(source.memdir, f"{source.kind}.mem")
    try:
        create = source.create(state, mem, hash_memory)
        vm = Vmm(source.kind, source.binary, source.workdir, f"{source.kind}-clone",
                 source.extra)
        try:
            t0 = time.perf_counter()
            vm.call("PUT", "/snapshot/load", {
                "snapshot_path": state,
                "mem_backend": {"backend_type": "File", "backend_path": mem},
                "resume_vm": True})
            load = time.perf_counter() - t0
            running = running_after(vm, guest, t0, n)
        finally:
            vm.stop()
    finally:
        for p in (state, mem):
            if os.path.exists(p):
                os.unlink(p)
    return {"create": create * 1000, "load": load * 1000, "running": running * 1000}


FIGURES = [("create", "create"), ("load", "load"), ("running", "load to running")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe")
    ap.add_argument("palisade")
    ap.add_argument("firecracker", nargs="?")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--linux", metavar="GUEST_DIR",
                    help="also the Linux test guest of this build directory (vmlinux, "
                         "initramfs.cpio, boot_args: resources/guest/build.sh)")
    ap.add_argument("--json", help="write the figures as benchlib rows (figure 8)")
    a = ap.parse_args()
    rows = []
    guests = [{"kind": "probe", "path": os.path.abspath(a.probe), "name": "probe guest"}]
    if a.linux:
        guests.append({"kind": "linux", "path": os.path.abspath(a.linux),
                       "name": "Linux guest"})
    vmms = [("palisade", os.path.abspath(a.palisade))]
    if a.firecracker:
        vmms.append(("firecracker", os.path.abspath(a.firecracker)))
    setups = [("palisade", "Palisade, keyed", False), ("palisade", "Palisade, keyed+hash", True)]
    if a.firecracker:
        setups.append(("firecracker", "Firecracker", False))
    work = tempfile.mkdtemp(prefix="palisade-snapbench-")
    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    memdir = (tempfile.mkdtemp(prefix="palisade-snapbench-", dir="/dev/shm")
              if room > 4 * (max(a.mib) << 20) else work)
    try:
        print(f"snapshots, 1 vCPU, Full, created from a running guest (paused, created, resumed) "
              f"and loaded with resume_vm in a new process; medians (min-max) of {a.runs} runs "
              f"per setup, alternating, release build; memory files in {memdir}. "
              f"Load to running: probe = its next tick, Linux = its shell echoing a command")
        for guest in guests:
            for mib in a.mib:
                sources = {}
                try:
                    for kind, binary in vmms:
                        sources[kind] = Source(kind, binary, guest, mib, work, memdir)
                    seen = {name: [] for _, name, _ in setups}
                    for n in range(a.runs):
                        for kind, name, hash_memory in setups:
                            seen[name].append(one_run(sources[kind], guest, hash_memory, n))
                finally:
                    for src in sources.values():
                        src.stop()
                print(f"{guest['name']}, {mib} MiB" +
                      "".join(f"{label + ' ms':>26}" for _, label in FIGURES))
                med = {}
                for name, runs in seen.items():
                    cells = []
                    for k, _ in FIGURES:
                        vals = [r[k] for r in runs]
                        med.setdefault(name, {})[k] = statistics.median(vals)
                        cells.append(f"{statistics.median(vals):.1f} "
                                     f"({min(vals):.1f}-{max(vals):.1f})")
                    print(f"  {name:22}" + "".join(f"{c:>26}" for c in cells))
                for k, label in FIGURES:
                    rows.append(benchlib.row(
                        "8", f"snapshot {label}, {guest['name']} {mib} MiB (Palisade keyed)",
                        "ms", [r[k] for r in seen["Palisade, keyed"]],
                        [r[k] for r in seen.get("Firecracker", [])]))
                if a.firecracker:
                    fc = med["Firecracker"]
                    for name in ("Palisade, keyed", "Palisade, keyed+hash"):
                        r = [med[name][k] / fc[k] for k, _ in FIGURES]
                        print(f"  {name + ' / FC':22}" + "".join(f"{x:25.2f}x" for x in r))
        if a.firecracker:
            print("(ratios Palisade / Firecracker: below 1 means Palisade is faster)")
        if a.json:
            benchlib.write_rows(a.json, "snapshot_bench", rows, runs=a.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if memdir != work:
            shutil.rmtree(memdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
