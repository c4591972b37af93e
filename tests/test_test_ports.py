"""The ports the suite's servers get: CI runs two suites side by side on one machine, so a port
handed to one test process must never be handed to the other, nor taken meanwhile as the local
port of an outgoing connection."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.servers import _ephemeral_ports, free_port

ROOT = Path(__file__).resolve().parents[1]
TAKE = """
import json, sys
from tests.support.servers import free_port
ports = [free_port() for _ in range(int(sys.argv[1]))]
print(json.dumps(ports), flush=True)
sys.stdin.read()  # hold them until told to stop, as a suite does while it runs
"""


def test_two_test_processes_never_get_the_same_port() -> None:
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKE, "400"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        taken = [json.loads(taker.stdout.readline()) for taker in takers]  # type: ignore[union-attr]
    finally:
        for taker in takers:
            taker.communicate("", timeout=30)
    first, second = (set(ports) for ports in taken)
    assert len(first) == len(second) == 400  # none twice within a process either
    assert not first & second


def test_a_port_is_outside_the_range_of_outgoing_connections_and_free() -> None:
    ephemeral = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert not [port for port in ports if port in ephemeral]
    for port in ports:  # nothing listens there: a server can bind it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
