#!/usr/bin/env python3
"""Host-side client of palisade-agent (the Linux test guest's agent), stdlib only.

Reaches the agent through the VMM's vsock Unix socket (Firecracker's convention: connect to
`uds_path`, send `CONNECT <port>\\n`, read `OK <host_port>\\n`, then talk to the guest
port). The protocol is in resources/guest/README.md and agent/src/protocol.rs.

    client.py --uds UDS [--port 52] exec ARG...        # prints stdout/stderr, exits with the code
    client.py --uds UDS write GUEST_PATH DATA [--mode 0644]   # DATA '-' reads stdin
    client.py --uds UDS read GUEST_PATH                # file contents to stdout
    client.py echo-server PATH                         # echoes every connection on PATH

As a module: Agent(uds).exec([...]), .write(path, data), .read(path); echo_server(path).
"""

import argparse
import os
import socket
import struct
import sys
import threading

DEFAULT_PORT = 52
MAX_DATA = 16 << 20
STATUS_OK = 0


class AgentError(Exception):
    """The agent answered with an error, or the exchange failed."""


def _frame(data):
    return struct.pack("<I", len(data)) + data


def _recv_exact(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise AgentError("connection closed mid-response")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock, limit=MAX_DATA):
    (n,) = struct.unpack("<I", _recv_exact(sock, 4))
    if n > limit:
        raise AgentError(f"frame of {n} bytes (at most {limit})")
    return _recv_exact(sock, n)


def _b(x):
    return x if isinstance(x, bytes) else str(x).encode()


def vsock_connect(uds, port, timeout=60.0):
    """A stream to guest `port` through the VMM's vsock Unix socket `uds`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(uds)
        sock.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            c = sock.recv(1)  # byte by byte: what follows the line is the guest's
            if not c or len(line) > 64:
                raise AgentError(f"no OK from the VMM for port {port}: {line!r}")
            line += c
        if not line.startswith(b"OK "):
            raise AgentError(f"VMM refused port {port}: {line!r}")
        return sock
    except BaseException:
        sock.close()
        raise


class Agent:
    """One connection (one request) per call."""

    def __init__(self, uds, port=DEFAULT_PORT, timeout=60.0):
        self.uds, self.port, self.timeout = uds, port, timeout

    def _request(self, payload):
        sock = vsock_connect(self.uds, self.port, self.timeout)
        sock.sendall(payload)
        status = _recv_exact(sock, 1)[0]
        if status != STATUS_OK:
            msg = _recv_frame(sock, 1 << 16).decode(errors="replace")
            sock.close()
            raise AgentError(msg)
        return sock

    def exec(self, argv, stdin=b""):
        """Runs argv in the guest: (exit code or -signal, stdout, stderr)."""
        payload = _frame(b"EXEC") + struct.pack("<I", len(argv))
        payload += b"".join(_frame(_b(a)) for a in argv) + _frame(_b(stdin))
        with self._request(payload) as sock:
            exit_code, _truncated = struct.unpack("<iB", _recv_exact(sock, 5))
            out = _recv_frame(sock)
            err = _recv_frame(sock)
        return exit_code, out, err

    def write(self, path, data, mode=0o644):
        """Creates or replaces the guest file `path`; returns the bytes written."""
        payload = _frame(b"WRITE") + _frame(_b(path)) + struct.pack("<I", mode) + _frame(_b(data))
        with self._request(payload) as sock:
            (n,) = struct.unpack("<Q", _recv_exact(sock, 8))
        return n

    def read(self, path):
        """The contents of the guest file `path`."""
        with self._request(_frame(b"READ") + _frame(_b(path))) as sock:
            return _recv_frame(sock)


def echo_server(path, ready=None):
    """Listens on the Unix socket `path` (e.g. `<uds_path>_1234` for guest-initiated
    connections to host port 1234) and echoes each connection until its EOF. Runs forever;
    sets `ready` (a threading.Event) once listening."""
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    if ready is not None:
        ready.set()

    def echo(conn):
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uds", help="the VMM's vsock uds_path")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="the agent's guest port")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("exec")
    p.add_argument("argv", nargs="+")
    p = sub.add_parser("write")
    p.add_argument("path")
    p.add_argument("data")
    p.add_argument("--mode", default="0644")
    p = sub.add_parser("read")
    p.add_argument("path")
    p = sub.add_parser("echo-server")
    p.add_argument("path")
    args = ap.parse_args()

    if args.cmd == "echo-server":
        echo_server(args.path)
        return 0
    if not args.uds:
        ap.error("--uds is required")
    agent = Agent(args.uds, args.port)
    try:
        if args.cmd == "exec":
            code, out, err = agent.exec(args.argv)
            sys.stdout.buffer.write(out)
            sys.stderr.buffer.write(err)
            return code if 0 <= code < 256 else 128 + (-code)
        if args.cmd == "write":
            data = sys.stdin.buffer.read() if args.data == "-" else args.data.encode() + b"\n"
            print(agent.write(args.path, data, int(args.mode, 8)))
            return 0
        sys.stdout.buffer.write(agent.read(args.path))
        return 0
    except (AgentError, OSError) as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
