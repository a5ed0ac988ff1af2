"""Helpers for the runtime tests: start real servers on free ports, wait for conditions, bypass a store's checks."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_async

from scout_runtime.bus import Bus
from scout_runtime.store import BlobStore, MemoryStore

BusFactory = Callable[..., Awaitable[Bus]]
"""Makes a new bus client of the test's \"server\" (an in-process broker, or a NATS server)."""


# --- servers -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reachable(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s}s")


@dataclass
class Server:
    """A server process we started (terminated at teardown)."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    args: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)


def start_server(args: list[str], port: int, workdir: Path) -> Server:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, port, workdir, args)
    try:
        wait_port(port)
    except RuntimeError:
        server.stop()
        raise
    return server


def start_nats(*extra: str) -> Server:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not on PATH (the runtime tests need a real NATS server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="scout-nats-"))
    args = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "js"), *extra]
    return start_server(args, port, workdir)


def start_redis(*extra: str) -> Server:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (the runtime tests need a real Redis server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="scout-redis-"))
    args = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), *extra,
    ]  # fmt: skip
    return start_server(args, port, workdir)


# --- stores --------------------------------------------------------------------------------------------------
async def delete_prefix(client: redis_async.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)


def corrupt(store: BlobStore, raw: Any) -> Callable[[str, bytes], Awaitable[None]]:
    """A function that overwrites a stored value behind the store's back (keeping its TTL)."""

    async def write(key: str, value: bytes) -> None:
        if isinstance(store, MemoryStore):
            _, expiry = store.raw[key]
            store.raw[key] = (value, expiry)
        else:
            await raw.set(key, value, keepttl=True)

    return write


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds (polling), or fail."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class AuthNats:
    """A nats-server of our own that requires user/password authentication."""

    url: str
    user: str
    password: str
    server: Server


@dataclass
class AclRedis:
    """A redis-server of our own with a password on the default user (tests add ACL users)."""

    url: str
    admin_password: str
    server: Server


def local_or_own_server(kind: str) -> Iterator[str]:
    """URL of the machine's nats-server (127.0.0.1:4222) or redis-server (127.0.0.1:6379) when it runs, else of
    one started here for the session (and stopped after it): the generator behind both suites' server fixtures."""
    port, start, url = {
        "nats": (4222, start_nats, "nats://127.0.0.1:{port}"),
        "redis": (6379, start_redis, "redis://127.0.0.1:{port}/0"),
    }[kind]
    if reachable(port):
        yield url.format(port=port)
        return
    server = start()
    try:
        yield url.format(port=server.port)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
