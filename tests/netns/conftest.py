"""Fixtures of the shaping tests: a fresh namespace pair with a veth link per test (always removed, and the removal
checked), a NATS server, and a final check that the whole run left nothing behind.

These tests need root (namespaces, qdiscs) and iproute2; elsewhere they skip, with the reason. CI runs as root.
The lab itself (namespaces, processes, tc's counters, the traffic tool) is `scout_testbed.netlab`, shared with
`scout bench shaping`; the load-independent assertions are `checks`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from scout_testbed.netlab import ALL_PIDS, Link, alive, namespaces, netns_link, netns_unavailable


@pytest.fixture(autouse=True)
def _needs_netns() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """After the last test: no namespace of this run, no process any test started."""
    yield
    if netns_unavailable() is not None:
        return
    assert namespaces() == [], "namespaces left behind"
    assert [pid for pid in ALL_PIDS if alive(pid)] == [], "processes left behind"


@pytest.fixture
def link() -> Iterator[Link]:
    """An edge/cloud namespace pair joined by a veth (edge 10.77.0.1; cloud 10.77.0.2 and .3)."""
    with netns_link() as made:
        yield made


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The local nats-server (127.0.0.1:4222, as CI runs it), else one of our own on a free port."""
    if _reachable(4222):
        yield "nats://127.0.0.1:4222"
        return
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("no NATS on 127.0.0.1:4222 and no nats-server binary to start one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="scout-netns-nats-") as store:
        proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ALL_PIDS.append(proc.pid)
        try:
            for _ in range(100):
                if _reachable(port):
                    break
                if proc.poll() is not None:
                    pytest.fail(f"nats-server exited with {proc.returncode}")
                subprocess.run(["sleep", "0.05"], check=True)
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
