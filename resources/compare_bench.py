#!/usr/bin/env python3
"""Palisade and Firecracker side by side (issue 16, figures 1-4 and 7), stdlib only; part of
the benchmark command (resources/bench.sh).

    compare_bench.py PROBE_ELF PALISADE_BIN [FIRECRACKER_BIN] [--runs N] [--quick-runs M]
                     [--density K] [--density-runs R] [--linux GUEST_DIR] [--linux-runs L]
                     [--palisade-jailer BIN] [--firecracker-jailer BIN] [--json PATH]
                     [--figures 1,2a,2bc,2d,3,4,7]

Both VMMs boot the same probe guest with the same configuration: 1 vCPU, 128 MiB, kernel
arguments `console=ttyS0 reboot=k panic=1 probe.run=SCENARIO`, `--boot-timer`, default log
level (Firecracker logs its `Guest-boot-time` line at Info, as Palisade does). Every figure is
measured in rounds, one run of each VMM per round (which one goes first alternating
between rounds): --quick-runs rounds (default 51) of figures 1, 2 and 7, which take tens of
milliseconds each and are the noisiest, --runs (default 11) of figures 3 and 4. Times are
taken on the host: before the VMM is spawned (posix_spawn), and from the log timestamp of the
VMM's `Guest-boot-time` line (written by the vCPU thread when the guest writes the boot-timer
port; both VMMs print the same wall-clock format, in UTC: they run with TZ=UTC).

Figures:
1. API socket: spawn with `--api-sock` to the first `GET /` answered (200); CPU time of the
   VMM until then (the process is stopped with SIGSTOP at the answer and the run time of all
   its threads read from /proc/PID/task/*/schedstat, nanoseconds).
2. boot: (a) API flow: PUT /boot-source, PUT /machine-config, PUT /actions InstanceStart
   (one connection each) to the boot-timer write, timed from the first PUT and from the
   InstanceStart request; (b) config file (`--no-api --config-file`): spawn to the
   boot-timer write; (c) the same run: spawn to exit of the `hello` scenario (the guest
   boots, resets through the i8042, the VMM exits and is reaped), and its CPU time (rusage;
   not its ru_maxrss: a posix_spawn child keeps the spawning Python's high-water mark);
   (d) with --linux GUEST_DIR, the Linux test guest (its vmlinux, initramfs and boot_args,
   same vCPU and memory): exec to the boot-timer write of its agent in user space.
3. memory, `idle` guest, 1 s after its `probe: idle ok`: RSS outside the guest memory mapping
   (the anonymous mapping of exactly 128 MiB in /proc/PID/smaps), its anonymous part (heap,
   stacks: what each VMM process costs on its own; the rest is binary and library pages that
   processes of one binary share), and the peak (VmHWM minus the guest mapping's RSS).
4. density: K (default 50) `idle` guests spawned at once, config file each: spawn of the
   first to the last boot-timer write; then the sum of RSS and of PSS (smaps_rollup) over the
   K processes, per guest.
7. jailer (root): each VMM under its own jailer, `--id --exec-file --uid 10000 --gid 10000
   --chroot-base-dir` and `-- --api-sock /run/api.sock`, the VMM's shared libraries staged
   in the jail beforehand (not timed): jailer spawn to `GET /` answered on the socket in the
   jail. palisade-jailer also applies Landlock; neither gets cgroups or a pid namespace.

--figures measures only the figures listed (default: all; 2bc is 2b and 2c, one run; 2d
also needs --linux). The header names each binary and how it is linked (static-pie or
dynamic: bench.sh passes `cargo release-static`'s binary when it builds).

Prints per figure: Palisade median [min-max], Firecracker median [min-max], ratio P/F
(below 1: Palisade is faster / smaller). Where a figure cannot be measured for one VMM, its
cell is `-` and a `not measured:` line under the table says why (never a made-up number). Writes everything (every value) as JSON to --json, default
$BENCH_COMPARE_JSON or /tmp/palisade-compare-bench.json.
"""
import argparse
import calendar
import datetime
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (summaries, host, version, commit)

TIMEOUT = 60  # seconds for any one step; a slow VMM is a figure, not a hang
MEM_MIB = 128
JAIL_UID = 10000
BOOT_LINE = "Guest-boot-time"
LINUX_UP = "palisade-guest: ready"  # the Linux test guest's agent, after its boot-timer write
LINUX_TIMEOUT = 120  # seconds: the Linux guest boots in ~13 s on a host without VT-x
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9}) \[[^\]\n]*\] " + BOOT_LINE)
# A log line; Firecracker writes its log and the serial port to stdout, so one can land in the
# middle of a serial line ("probe: idle<log line>\n ok").
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[[^\n]*\n")


class BenchError(Exception):
    """A run that did not do what it must (the VMM's output is in the message)."""


def config(probe, scenario):
    return {
        "boot-source": {"kernel_image_path": probe,
                        "boot_args": f"console=ttyS0 reboot=k panic=1 probe.run={scenario}"},
        "drives": [],  # Firecracker requires the key
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
    }


def spawn(cmd, out_path, setsid=False):
    """posix_spawn `cmd` with stdin /dev/null and stdout + stderr to `out_path`: its pid."""
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        # TZ=UTC: both VMMs stamp log lines in local time; stamp_ns reads them as UTC.
        return os.posix_spawn(cmd[0], cmd, dict(os.environ, TZ="UTC"), setsid=setsid,
                              file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, out, 2)])
    finally:
        os.close(out)
        os.close(null)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def kill(pid, group=False):
    """SIGKILL one VMM (or its process group, one the benchmark made) and reap it."""
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait4(pid):
    """Blocking wait4 with a watchdog that kills the VMM after TIMEOUT: (status, rusage)."""
    timer = threading.Timer(TIMEOUT, lambda: os.kill(pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(pid, 0)
    finally:
        timer.cancel()
    return status, usage


def serial(text):
    """The output without the VMM's log lines: the guest's serial lines whole again."""
    return LOG_LINE.sub("", text)


def stamp_ns(line):
    """The wall-clock time (ns since the epoch, UTC) the boot-time log line carries."""
    m = STAMP.search(line)
    if not m:
        raise BenchError(f"no timestamp on {line!r}")
    secs = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int(m.group(2))


def boot_line(text):
    for line in text.splitlines():
        if BOOT_LINE in line:
            return line
    return None


def since_ms(line, t0_ns):
    """Milliseconds from t0_ns (time.time_ns()) to the time stamped on `line`; a stamp before
    t0 or a minute after it means the clocks disagree (a local-time stamp, say), not a figure."""
    ms = (stamp_ns(line) - t0_ns) / 1e6
    if not 0 <= ms < 60_000:
        raise BenchError(f"log stamp {ms:.1f} ms from the host's clock: {line!r}")
    return ms


def wait_file(path, needle, pid, what, timeout=TIMEOUT, poll=0.001):
    """Polls `path` (every `poll` s) until it holds `needle`: its text. Fails if the VMM
    died."""
    deadline = time.monotonic() + timeout
    while True:
        text = read(path)
        if needle in text or needle in serial(text):
            return text
        if time.monotonic() > deadline or os.waitpid(pid, os.WNOHANG)[0] != 0:
            text = read(path)  # what it wrote before it exited
            if needle in text or needle in serial(text):
                return text
            raise BenchError(f"{what}: no {needle!r}:\n{text}")
        time.sleep(poll)


def http(path, method, url, body=None):
    """One request on a Unix socket: the status code."""
    data = json.dumps(body).encode() if body is not None else b""
    req = (f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(req + data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError(f"{method} {url}: connection closed")
            buf += chunk
        return int(buf.split(b" ", 2)[1])


def wait_api(sock, pid, out):
    """Tries `GET /` every 50 us until it is answered 200."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            if http(sock, "GET", "/") == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or os.waitpid(pid, os.WNOHANG)[0] != 0:
            raise BenchError(f"the API socket never answered:\n{read(out)}")
        time.sleep(0.00005)


def cpu_ns(pid):
    """Run time of every thread of `pid` (schedstat, ns)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        total += int(read(path).split()[0] or 0)
    return total


class Vmm:
    """One VMM binary and how to start it."""

    def __init__(self, name, binary, probe, work):
        self.name, self.binary, self.probe, self.work = name, binary, probe, work
        self.n = 0

    def path(self, suffix):
        self.n += 1
        return os.path.join(self.work, f"{self.name}-{self.n}{suffix}")

    def config_file(self, scenario):
        path = self.path(".json")
        with open(path, "w") as f:
            json.dump(config(self.probe, scenario), f)
        return path

    # Figure 1.
    def api_socket(self):
        sock, out = self.path(".sock"), self.path(".log")
        t0 = time.perf_counter()
        pid = spawn([self.binary, "--api-sock", sock, "--boot-timer"], out)
        try:
            wait_api(sock, pid, out)
            t1 = time.perf_counter()
            os.kill(pid, signal.SIGSTOP)
            cpu = cpu_ns(pid)
        finally:
            kill(pid)
        return {"api_wall": (t1 - t0) * 1e3, "api_cpu": cpu / 1e6}

    # Figure 2 (a).
    def api_boot(self):
        sock, out = self.path(".sock"), self.path(".log")
        cfg = config(self.probe, "hello")
        pid = spawn([self.binary, "--api-sock", sock, "--boot-timer"], out)
        try:
            wait_api(sock, pid, out)
            t0 = time.time_ns()
            for url, body in (("/boot-source", cfg["boot-source"]),
                              ("/machine-config", cfg["machine-config"])):
                if http(sock, "PUT", url, body) != 204:
                    raise BenchError(f"PUT {url} refused:\n{read(out)}")
            t_start = time.time_ns()
            if http(sock, "PUT", "/actions", {"action_type": "InstanceStart"}) != 204:
                raise BenchError(f"InstanceStart refused:\n{read(out)}")
            text = wait_file(out, BOOT_LINE, pid, f"{self.name} API boot")
            line = boot_line(text)
        finally:
            kill(pid)
        return {"api_flow_boot": since_ms(line, t0), "start_boot": since_ms(line, t_start)}

    # Figure 2 (b) and (c).
    def config_boot(self):
        path, out = self.config_file("hello"), self.path(".log")
        t0_wall = time.time_ns()
        t0 = time.perf_counter()
        pid = spawn([self.binary, "--no-api", "--boot-timer", "--config-file", path], out)
        status, usage = wait4(pid)
        t1 = time.perf_counter()
        text = read(out)
        line = boot_line(text)
        if status != 0 or "probe: hello ok" not in serial(text) or line is None:
            raise BenchError(f"{self.name} hello: status {status}:\n{text}")
        return {"config_boot": since_ms(line, t0_wall), "exec_exit": (t1 - t0) * 1e3,
                "exec_exit_cpu": (usage.ru_utime + usage.ru_stime) * 1e3}

    # Figure 2 (d).
    def linux_boot(self, guest_dir):
        with open(os.path.join(guest_dir, "boot_args")) as f:
            args = f.read().strip()
        cfg = config(self.probe, "hello")
        cfg["boot-source"] = {"kernel_image_path": os.path.join(guest_dir, "vmlinux"),
                              "initrd_path": os.path.join(guest_dir, "initramfs.cpio"),
                              "boot_args": args}
        path, out = self.path(".json"), self.path(".log")
        with open(path, "w") as f:
            json.dump(cfg, f)
        t0 = time.time_ns()
        pid = spawn([self.binary, "--no-api", "--boot-timer", "--config-file", path], out)
        try:
            # The guest agent writes the boot timer in user space, then says it is ready.
            text = wait_file(out, LINUX_UP, pid, f"{self.name} Linux guest", LINUX_TIMEOUT,
                             poll=0.01)  # the stamp is the figure; the poll only ends it
            line = boot_line(text)
            if line is None:
                raise BenchError(f"{self.name} Linux guest: no {BOOT_LINE} line:\n{text}")
        finally:
            kill(pid)
        return {"linux_boot": since_ms(line, t0)}

    # Figure 3.
    def memory(self):
        path, out = self.config_file("idle"), self.path(".log")
        pid = spawn([self.binary, "--no-api", "--boot-timer", "--config-file", path], out)
        try:
            wait_file(out, "probe: idle ok", pid, f"{self.name} idle")
            time.sleep(1)  # idle: what the VMM holds when nothing happens
            maps = smaps(pid)
            hwm = status_kib(pid, "VmHWM")
        finally:
            kill(pid)
        guest = [m for m in maps if not m["path"] and m["Size"] == MEM_MIB * 1024]
        if len(guest) != 1:
            raise BenchError(f"{self.name}: {len(guest)} anonymous {MEM_MIB} MiB mappings")
        g = guest[0]
        rss = sum(m["Rss"] for m in maps) - g["Rss"]
        anon = sum(m["Anonymous"] for m in maps) - g["Anonymous"]
        return {"mem_rss": rss / 1024, "mem_anon": anon / 1024,
                "mem_peak": (hwm - g["Rss"]) / 1024, "guest_rss": g["Rss"] / 1024}

    # Figure 4.
    def density(self, count):
        path = self.config_file("idle")
        outs = [self.path(".log") for _ in range(count)]
        t0 = time.time_ns()
        pids = [spawn([self.binary, "--no-api", "--boot-timer", "--config-file", path], out)
                for out in outs]
        try:
            last = 0.0
            for pid, out in zip(pids, outs):
                last = max(last, since_ms(boot_line(
                    wait_file(out, BOOT_LINE, pid, f"{self.name} density")), t0))
            rss = sum(status_kib(pid, "VmRSS") for pid in pids)
            pss = sum(rollup_kib(pid, "Pss") for pid in pids)
        finally:
            for pid in pids:
                kill(pid)
        return {"density_boot": last, "density_rss": rss / count / 1024,
                "density_pss": pss / count / 1024}


def smaps(pid):
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
                cur = {"path": " ".join(fields[5:]), "Size": 0, "Rss": 0, "Anonymous": 0}
                maps.append(cur)
            elif fields[0].rstrip(":") in cur:
                cur[fields[0].rstrip(":")] = int(fields[1])
    return maps


def status_kib(pid, key):
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} for {pid}")


def rollup_kib(pid, key):
    for line in read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in smaps_rollup of {pid}")


class Jailer:
    """One VMM under its jailer (figure 7)."""

    def __init__(self, name, jailer, vmm, work):
        self.name, self.jailer, self.vmm = name, jailer, vmm
        self.base = os.path.join(work, f"jail-{name}")
        os.makedirs(self.base, exist_ok=True)
        self.libs = re.findall(r"(/\S+)", subprocess.run(
            ["ldd", vmm], capture_output=True, text=True).stdout)
        self.n = 0

    def api_socket(self):
        self.n += 1
        jail_id = f"bench-{self.n}"
        jail = os.path.join(self.base, os.path.basename(self.vmm), jail_id)
        root = os.path.join(jail, "root")
        for lib in self.libs:  # staged before, not timed (a static VMM needs none)
            os.makedirs(root + os.path.dirname(lib), exist_ok=True)
            shutil.copy(lib, root + lib)
        out = os.path.join(self.base, f"{jail_id}.log")
        sock = os.path.join(root, "run", "api.sock")
        t0 = time.perf_counter()
        pid = spawn([self.jailer, "--id", jail_id, "--exec-file", self.vmm,
                     "--uid", str(JAIL_UID), "--gid", str(JAIL_UID),
                     "--chroot-base-dir", self.base, "--", "--api-sock", "/run/api.sock"],
                    out, setsid=True)
        try:
            wait_api(sock, pid, out)
            t1 = time.perf_counter()
        finally:
            kill(pid, group=True)
            shutil.rmtree(jail, ignore_errors=True)
        return {"jailer_api": (t1 - t0) * 1e3}


FIGURES = [  # key, figure, label, unit
    ("api_wall", "1", "API socket answering GET /, wall", "ms"),
    ("api_cpu", "1", "API socket answering GET /, VMM CPU", "ms"),
    ("api_flow_boot", "2a", "API flow (first PUT) to boot timer", "ms"),
    ("start_boot", "2a", "InstanceStart to boot timer", "ms"),
    ("config_boot", "2b", "config file: exec to boot timer", "ms"),
    ("exec_exit", "2c", "hello: exec to exit", "ms"),
    ("exec_exit_cpu", "2c", "hello: VMM CPU, exec to exit", "ms"),
    ("linux_boot", "2d", "Linux guest: exec to user space", "ms"),
    ("mem_rss", "3", "RSS outside guest memory, idle", "MiB"),
    ("mem_anon", "3", "anonymous outside guest memory, idle", "MiB"),
    ("mem_peak", "3", "peak (VmHWM - guest RSS)", "MiB"),
    ("guest_rss", "3", "guest memory touched (info)", "MiB"),
    ("density_boot", "4", "density: spawn to all booted", "ms"),
    ("density_rss", "4", "density: RSS per guest", "MiB"),
    ("density_pss", "4", "density: PSS per guest", "MiB"),
    ("jailer_api", "7", "jailer: spawn to GET / answered", "ms"),
]


def measure(results, notes, name, key_fn, runs, vmms):
    """`runs` rounds; each round calls key_fn(vmm) for every VMM, the order alternating."""
    for r in range(runs):
        order = vmms if r % 2 == 0 else list(reversed(vmms))
        for vmm in order:
            try:
                for k, v in key_fn(vmm).items():
                    results[vmm.name].setdefault(k, []).append(v)
            except BenchError as e:
                notes.setdefault(vmm.name, {})[name] = str(e).splitlines()[0]
                sys.stderr.write(f"{vmm.name} {name}: {e}\n")
                vmms = [v for v in vmms if v is not vmm]  # no more runs of a broken setup
    sys.stderr.write(f"compare_bench: {name}: {runs} rounds done\n")


def linkage(binary):
    """How `binary` is linked: "static" (no ELF interpreter) or "dynamic" (it has one)."""
    try:
        with open(binary, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return "?"
    if head[:4] != b"\x7fELF" or head[4] != 2:
        return "?"
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(head[off:off + 4], "little") == 3:  # PT_INTERP
            return "dynamic"
    return "static"


def fmt(s, unit):
    if s is None:
        return "-"
    d = 2 if unit == "MiB" or s["median"] < 10 else 1
    return f"{s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe")
    ap.add_argument("palisade")
    ap.add_argument("firecracker", nargs="?")
    ap.add_argument("--runs", type=int, default=11, help="rounds of figures 3 and 4")
    ap.add_argument("--quick-runs", type=int, default=51,
                    help="rounds of figures 1, 2 and 7 (tens of ms each; noisier)")
    ap.add_argument("--density", type=int, default=50)
    ap.add_argument("--density-runs", type=int, help="rounds of figure 4 (default: --runs)")
    ap.add_argument("--linux", metavar="GUEST_DIR",
                    help="also figure 2d: the Linux test guest (vmlinux, initramfs.cpio, "
                         "boot_args) of this resources/guest/build.sh directory")
    ap.add_argument("--linux-runs", type=int, help="rounds of figure 2d (default: --runs)")
    ap.add_argument("--palisade-jailer")
    ap.add_argument("--firecracker-jailer")
    ap.add_argument("--figures", default="1,2a,2bc,2d,3,4,7",
                    help="comma-separated subset of 1,2a,2bc,2d,3,4,7 (default: all)")
    ap.add_argument("--json", default=os.environ.get("BENCH_COMPARE_JSON",
                                                     "/tmp/palisade-compare-bench.json"))
    a = ap.parse_args()
    figures = set(a.figures.split(","))
    unknown = figures - {"1", "2a", "2bc", "2d", "3", "4", "7"}
    if unknown:
        ap.error(f"unknown figures: {','.join(sorted(unknown))}")
    probe = os.path.abspath(a.probe)
    load_before = read("/proc/loadavg").split()[:3]
    notes = {}
    with tempfile.TemporaryDirectory(prefix="compare-bench-") as work:
        vmms = [Vmm("palisade", os.path.abspath(a.palisade), probe, work)]
        if a.firecracker:
            vmms.append(Vmm("firecracker", os.path.abspath(a.firecracker), probe, work))
        else:
            notes["firecracker"] = {"all": "FIRECRACKER_BIN not set"}
        results = {v.name: {} for v in vmms}
        results.setdefault("firecracker", {})
        if "1" in figures:
            measure(results, notes, "api socket", Vmm.api_socket, a.quick_runs, vmms)
        if "2a" in figures:
            measure(results, notes, "api boot", Vmm.api_boot, a.quick_runs, vmms)
        if "2bc" in figures:
            measure(results, notes, "config boot", Vmm.config_boot, a.quick_runs, vmms)
        if "2d" not in figures:
            pass
        elif a.linux:
            guest_dir = os.path.abspath(a.linux)
            measure(results, notes, "linux boot", lambda v: v.linux_boot(guest_dir),
                    a.linux_runs or a.runs, vmms)
        else:
            notes["both VMMs"] = {"figure 2d": "no --linux GUEST_DIR"}
        if "3" in figures:
            measure(results, notes, "memory", Vmm.memory, a.runs, vmms)
        if "4" in figures:
            measure(results, notes, "density", lambda v: v.density(a.density),
                    a.density_runs or a.runs, vmms)
        jailers = []
        if "7" not in figures:
            pass
        elif os.geteuid() != 0:
            notes.setdefault("palisade", {})["jailer"] = "not root: the jailers need root"
            notes.setdefault("firecracker", {})["jailer"] = "not root: the jailers need root"
        else:
            pal_jailer = a.palisade_jailer or os.path.join(os.path.dirname(a.palisade),
                                                           "palisade-jailer")
            if os.access(pal_jailer, os.X_OK):
                jailers.append(Jailer("palisade", os.path.abspath(pal_jailer),
                                      os.path.abspath(a.palisade), work))
            else:
                notes.setdefault("palisade", {})["jailer"] = f"no {pal_jailer}"
            if a.firecracker and a.firecracker_jailer:
                jailers.append(Jailer("firecracker", os.path.abspath(a.firecracker_jailer),
                                      os.path.abspath(a.firecracker), work))
            elif a.firecracker:
                notes.setdefault("firecracker", {})["jailer"] = "FIRECRACKER_JAILER_BIN not set"
        if jailers:
            measure(results, notes, "jailer", Jailer.api_socket, a.quick_runs, jailers)
    load_after = read("/proc/loadavg").split()[:3]

    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": benchlib.commit(), "host": benchlib.host_info(), "runs": a.runs,
              "quick_runs": a.quick_runs,
              "density_runs": a.density_runs or a.runs,
              "linux_runs": (a.linux_runs or a.runs) if a.linux else 0,
              "density": a.density,
              "guest": f"probe, 1 vCPU, {MEM_MIB} MiB, --boot-timer",
              "versions": {v.name: benchlib.version(v.binary) for v in vmms},
              "binaries": {v.name: f"{v.binary} ({linkage(v.binary)})" for v in vmms},
              "figures_measured": sorted(figures),
              "load_before": load_before, "load_after": load_after, "notes": notes,
              "figures": {}}
    h = report["host"]
    print(f"Palisade vs Firecracker, {report['date']}, commit {report['commit']}, "
          f"{h['cpus']} CPUs ({h['cpu']}), {h['kvm']}, load {' '.join(load_before)} -> "
          f"{' '.join(load_after)}")
    print(", ".join(f"{report['versions'][n]}: {report['binaries'][n]}"
                    for n in report["versions"]))
    print(f"probe guest, 1 vCPU, {MEM_MIB} MiB, release builds, medians [min-max], "
          f"alternating: {a.quick_runs} runs each of figures 1, 2a-c, 7, "
          f"{(a.linux_runs or a.runs) if a.linux else 0} of 2d, {a.runs} of 3, "
          f"{a.density_runs or a.runs} of 4 ({a.density} guests at once); "
          f"P/F below 1: Palisade faster/smaller")
    print(f"{'fig':4}{'figure':38}{'unit':5}{'Palisade':>24}{'Firecracker':>24}{'P/F':>7}")
    for key, fig, label, unit in FIGURES:
        if {"2b": "2bc", "2c": "2bc"}.get(fig, fig) not in figures:
            continue
        p = benchlib.summary(results["palisade"].get(key, []))
        f = benchlib.summary(results["firecracker"].get(key, []))
        ratio = p["median"] / f["median"] if p and f and f["median"] else None
        report["figures"][key] = {"figure": fig, "label": label, "unit": unit,
                                  "palisade": p, "firecracker": f, "ratio": ratio}
        print(f"{fig:4}{label:38}{unit:5}{fmt(p, unit):>24}{fmt(f, unit):>24}"
              f"{(f'{ratio:.2f}' if ratio else '-'):>7}")
    for name, why in notes.items():
        for what, text in why.items():
            print(f"not measured: {name} {what}: {text}")
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"JSON: {a.json}")


if __name__ == "__main__":
    main()
