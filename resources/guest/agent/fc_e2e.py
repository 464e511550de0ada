#!/usr/bin/env python3
"""Boots the Linux test guest under a Firecracker binary with a vsock device and drives
both directions: the guest's `vsock` check (it connects out to host port 1234, served by
client.echo_server at `<uds_path>_1234`, then waits for a line the host WRITEs through the
agent), plus EXEC, a 1 MiB WRITE and READ, and an error READ through the agent. Exits 0
when all of it passed; prints the console with timestamps and the host-side timings.

    agent/fc_e2e.py GUEST_DIR FIRECRACKER_BINARY

A reference run for comparing VMMs (Palisade's own tests live in tests/).
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402

HOST_PORT = 1234
DEADLINE_S = 600


def host_side(uds, results):
    agent = client.Agent(uds)
    t = time.time()
    results["exec"] = agent.exec(["sh", "-c", "echo out; echo err >&2; exit 5"])
    results["exec_s"] = round(time.time() - t, 2)
    data = bytes((i * 7) % 256 for i in range(1 << 20))
    t = time.time()
    results["write"] = agent.write("/tmp/blob", data, 0o600)
    results["write_s"] = round(time.time() - t, 2)
    t = time.time()
    results["read_ok"] = agent.read("/tmp/blob") == data
    results["read_s"] = round(time.time() - t, 2)
    try:
        agent.read("/nonexistent")
    except client.AgentError as e:
        results["read_error"] = str(e)
    agent.write("/tmp/vsock-from-host", b"hello-from-host\n")


def main():
    guest, firecracker = sys.argv[1], sys.argv[2]
    d = tempfile.mkdtemp(prefix="palisade-fc-vsock-")
    uds = os.path.join(d, "v.sock")
    ready = threading.Event()
    threading.Thread(target=client.echo_server, args=(f"{uds}_{HOST_PORT}", ready),
                     daemon=True).start()
    ready.wait(5)
    boot_args = open(os.path.join(guest, "boot_args")).read().strip()
    cfg = {
        "boot-source": {
            "kernel_image_path": os.path.join(guest, "vmlinux"),
            "initrd_path": os.path.join(guest, "initramfs.cpio"),
            "boot_args": f"{boot_args} palisade.test=vsock palisade.vsock_port={HOST_PORT}",
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [],  # Firecracker's config file requires the field
        "vsock": {"guest_cid": 3, "uds_path": uds},
    }
    with open(os.path.join(d, "vm.json"), "w") as f:
        json.dump(cfg, f)
    t0 = time.time()
    vmm = subprocess.Popen([firecracker, "--no-api", "--boot-timer", "--config-file",
                            os.path.join(d, "vm.json")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
    timer = threading.Timer(DEADLINE_S, vmm.kill)
    timer.start()
    results, verdict = {}, None
    for raw in vmm.stdout:
        line = raw.decode(errors="replace").rstrip()
        print(f"[{time.time() - t0:6.1f}] {line}", flush=True)
        if "palisade-vsock: waiting for the host" in line:
            threading.Thread(target=host_side, args=(uds, results), daemon=True).start()
        if line.startswith("palisade-result: vsock "):
            verdict = line
    vmm.wait()
    timer.cancel()
    print("host side:", results)
    ok = (verdict is not None and verdict.startswith("palisade-result: vsock pass")
          and results.get("exec") == (5, b"out\n", b"err\n")
          and results.get("write") == 1 << 20 and results.get("read_ok")
          and "nonexistent" in results.get("read_error", "") and vmm.returncode == 0)
    print(f"{'PASS' if ok else 'FAIL'}: firecracker exit {vmm.returncode} after "
          f"{time.time() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
