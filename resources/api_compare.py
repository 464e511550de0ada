#!/usr/bin/env python3
"""Sends the same API requests to Palisade and to Firecracker and prints both answers side by
side: status codes and fault messages of the routes issue 17 added (CPU templates, balloon
hinting, Firecracker's routes Palisade refuses, JSON errors), before and after InstanceStart
of the probe guest.

usage: api_compare.py PALISADE_BIN FIRECRACKER_BIN PROBE_ELF
Exit status 0; a line per request: `same` when status and body are equal, `DIFF` otherwise
(some differences are Palisade's on purpose: the refused routes, MSRs a template may not set;
README says which).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

BITS64_TOO_LONG = "0b" + "x" * 65


def requests(probe):
    """(method, path, body) in order; bodies are JSON values or raw strings."""
    pre = [
        ("PUT", "/machine-config", {"vcpu_count": 1}),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
        ("GET", "/machine-config", None),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "Bogus"}),
        ("PUT", "/cpu-config", "not json"),
        ("PUT", "/cpu-config", {"cpuid_modifiers": [{"leaf": 1, "subleaf": "0x0", "flags": 0,
                                                      "modifiers": []}]}),
        ("PUT", "/cpu-config", {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                                      "modifiers": [{"register": "esi",
                                                                     "bitmap": "0bx"}]}]}),
        ("PUT", "/cpu-config", {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                                      "modifiers": [{"register": "eax",
                                                                     "bitmap": "0b2"}]}]}),
        ("PUT", "/cpu-config", {"msr_modifiers": [{"addr": "0x10a", "bitmap": BITS64_TOO_LONG}]}),
        ("PUT", "/cpu-config", {"kvm_capabilities": ["!1"]}),
        ("PUT", "/cpu-config", {"reg_modifiers": []}),
        ("PUT", "/cpu-config", {"msr_modifiers": [{"addr": "0xe1", "bitmap": "0bx"}]}),
        ("PUT", "/cpu-config", {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                                      "modifiers": [{"register": "eax",
                                                                     "bitmap": "0bx"}]}]}),
        ("GET", "/machine-config", None),
        ("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False,
                             "free_page_hinting": True}),
        ("PATCH", "/balloon/hinting/start", {"acknowledge_on_stop": True}),
        ("GET", "/balloon/hinting/status", None),
        ("PATCH", "/balloon/hinting/stop", None),
        ("PATCH", "/pmem/p1", {"id": "p1"}),
        ("GET", "/hotplug/memory", None),
        ("DELETE", "/drives/d1", None),
        ("PUT", "/boot-source", {"kernel_image_path": probe,
                                 "boot_args": "console=ttyS0 probe.run=idle"}),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]
    post = [
        ("PUT", "/cpu-config", {"cpuid_modifiers": []}),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
        ("GET", "/balloon/hinting/status", None),
        ("PATCH", "/balloon/hinting/start", {}),
        ("PATCH", "/balloon/hinting/stop", {}),
        ("PATCH", "/balloon", {"amount_mib": "x"}),
        ("DELETE", "/network-interfaces/eth0", None),
    ]
    return pre + post


def http(sock_path, method, path, body):
    data = b"" if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    s.sendall((head + "\r\n").encode() + data)
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    head_bytes, _, rest = out.partition(b"\r\n\r\n")
    length = 0
    for line in head_bytes.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    text = head_bytes.decode(errors="replace")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, rest.decode(errors="replace")


def run(binary, reqs, workdir):
    sock = os.path.join(workdir, "api.sock")
    log = open(os.path.join(workdir, "out"), "w")
    p = subprocess.Popen([binary, "--api-sock", sock], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        answers = []
        for method, path, body in reqs:
            answers.append(http(sock, method, path, body))
            if path == "/actions":
                time.sleep(0.5)  # the guest boots
        return answers
    finally:
        p.kill()
        p.wait()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    palisade, firecracker, probe = sys.argv[1:]
    reqs = requests(probe)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        ours, theirs = run(palisade, reqs, a), run(firecracker, reqs, b)
    same = 0
    for (method, path, _), o, t in zip(reqs, ours, theirs):
        tag = "same" if o == t else "DIFF"
        same += tag == "same"
        print(f"{tag} {method} {path}\n  palisade:    {o[0]} {o[1]}")
        if o != t:
            print(f"  firecracker: {t[0]} {t[1]}")
    print(f"{same} of {len(reqs)} answers equal")


if __name__ == "__main__":
    main()
