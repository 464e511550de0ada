#!/usr/bin/env python3
"""client.py against the real agent binary, without a VM: a fake VMM Unix socket answers
`CONNECT 52` with `OK ...` and hands the connection to `palisade-agent --stdio`.

    python3 test_client.py      # agent from $PALISADE_AGENT or target/release/palisade-agent
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.environ.get("PALISADE_AGENT", os.path.join(HERE, "target/release/palisade-agent"))


class FakeVmm:
    """Accepts on `uds`; for `CONNECT 52` replies OK and runs the agent on the stream; for
    any other port closes the connection (as a VMM does when nothing listens)."""

    def __init__(self, uds):
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(uds)
        self.srv.listen(4)
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            line = b""
            while not line.endswith(b"\n"):
                c = conn.recv(1)
                if not c:
                    break
                line += c
            if line != b"CONNECT 52\n":
                conn.close()
                continue
            conn.sendall(b"OK 1073741824\n")
            subprocess.run([AGENT, "--stdio"], stdin=conn, stdout=conn,
                           stderr=subprocess.DEVNULL, check=False, timeout=60)
            conn.close()


class ClientAgainstAgent(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(AGENT, os.X_OK):
            raise RuntimeError(f"{AGENT} missing: cargo build --release in {HERE} first")
        cls.dir = tempfile.TemporaryDirectory()
        cls.uds = os.path.join(cls.dir.name, "v.sock")
        cls.vmm = FakeVmm(cls.uds)

    @classmethod
    def tearDownClass(cls):
        cls.vmm.srv.close()
        cls.dir.cleanup()

    def test_exec_returns_exit_code_and_both_outputs(self):
        code, out, err = client.Agent(self.uds).exec(
            ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=b"in\n")
        self.assertEqual((code, out, err), (3, b"in\n", b"oops\n"))

    def test_write_then_read_round_trips_a_megabyte(self):
        path = os.path.join(self.dir.name, "f")
        data = os.urandom(1 << 20)
        agent = client.Agent(self.uds)
        self.assertEqual(agent.write(path, data, 0o600), len(data))
        self.assertEqual(agent.read(path), data)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_agent_error_is_raised_with_its_message(self):
        with self.assertRaisesRegex(client.AgentError, "nonexistent"):
            client.Agent(self.uds).read("/nonexistent/file")

    def test_port_without_listener_is_an_error(self):
        with self.assertRaisesRegex(client.AgentError, "no OK"):
            client.Agent(self.uds, port=53).read("/etc/hostname")


if __name__ == "__main__":
    unittest.main()
