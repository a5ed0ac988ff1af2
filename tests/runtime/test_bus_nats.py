"""NATS-only behaviour against nats-servers of our own: user/password auth, TLS with client certificates,
reconnection after a server restart, and the bus factory."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from runtime_helpers import AuthNats, eventually, start_nats

from scout_runtime.bus import InProcessBus, Msg, NatsBus, WorkItem, WorkQueueSpec, connect_bus
from scout_runtime.errors import BusClosed, Forbidden, ScoutError
from scout_runtime.settings import Settings


async def _echo_roundtrip(bus: NatsBus, subject: str) -> None:
    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await bus.subscribe(subject, echo)
    assert (await bus.request(subject, b"ping", timeout_s=2)).data == b"ping"
    await sub.stop()


async def _collect_work(bus: NatsBus, ns: str, stream: str) -> tuple[WorkQueueSpec, list[bytes]]:
    """A work queue on ``<ns>.work`` and a consumer on ``bus`` that appends each item's data to the returned list
    (the item is acked when the handler returns)."""
    spec = WorkQueueSpec(stream=stream, subjects=(f"{ns}.work",), durable="w", ack_wait_s=1)
    await bus.ensure_work_queue(spec)
    got: list[bytes] = []

    async def handle(item: WorkItem) -> None:
        got.append(item.data)

    await bus.consume(spec, handle)
    return spec, got


async def test_user_password_from_settings(nats_auth: AuthNats, env_clean: pytest.MonkeyPatch, ns: str) -> None:
    settings = Settings(
        nats_url=SecretStr(nats_auth.url), nats_user=nats_auth.user, nats_password=SecretStr(nats_auth.password)
    )
    bus = await NatsBus.connect(settings, name="auth-ok", poll_s=0.2)
    try:
        await _echo_roundtrip(bus, f"{ns}.echo")
        spec, got = await _collect_work(bus, ns, f"A_{ns}")
        await bus.enqueue(f"{ns}.work", b"job", msg_id="j1")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert got == [b"job"]
        await bus.delete_work_queue(spec)
    finally:
        await bus.close()


async def test_credentials_in_the_url(nats_auth: AuthNats, env_clean: pytest.MonkeyPatch, ns: str) -> None:
    host = nats_auth.url.removeprefix("nats://")
    url = f"nats://{nats_auth.user}:{nats_auth.password}@{host}"
    bus = await NatsBus.connect(Settings(nats_url=SecretStr(url)), name="auth-url")
    try:
        await _echo_roundtrip(bus, f"{ns}.echo")
    finally:
        await bus.close()


@pytest.mark.parametrize("password", ["wrong-password", None])
async def test_refused_credentials_are_forbidden_and_not_logged(
    nats_auth: AuthNats, env_clean: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, password: str | None
) -> None:
    settings = Settings(
        nats_url=SecretStr(nats_auth.url),
        nats_user=nats_auth.user if password else None,
        nats_password=SecretStr(password) if password else None,
        nats_reconnect_wait_s=0.1,
    )
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(Forbidden):
        await NatsBus.connect(settings, name="auth-bad")
    assert time.monotonic() - t0 < 5, "a refused connection must fail fast"
    assert "wrong-password" not in caplog.text and nats_auth.password not in caplog.text


async def test_unreachable_server_fails_fast(env_clean: pytest.MonkeyPatch) -> None:
    from runtime_helpers import free_port

    settings = Settings(nats_url=SecretStr(f"nats://127.0.0.1:{free_port()}"), nats_reconnect_wait_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(BusClosed):
        await NatsBus.connect(settings, name="nobody")
    assert time.monotonic() - t0 < 5


# --- TLS -----------------------------------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to create the test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=scout-ca", cwd=d)
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=scout-{name}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


@pytest.fixture(scope="module")
def tls_nats(pki: Pki) -> Iterator[str]:
    server = start_nats(
        "--tls", "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key),
        "--tlscacert", str(pki.ca), "--tlsverify",
    )  # fmt: skip
    yield f"nats://127.0.0.1:{server.port}"
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


async def test_tls_with_client_certificate(tls_nats: str, pki: Pki, env_clean: pytest.MonkeyPatch, ns: str) -> None:
    settings = Settings(
        nats_url=SecretStr(tls_nats), nats_tls_ca=pki.ca, nats_tls_cert=pki.client_cert, nats_tls_key=pki.client_key
    )
    bus = await NatsBus.connect(settings, name="tls")
    try:
        await _echo_roundtrip(bus, f"{ns}.echo")
    finally:
        await bus.close()


async def test_tls_without_client_certificate_is_refused(
    tls_nats: str, pki: Pki, env_clean: pytest.MonkeyPatch
) -> None:
    settings = Settings(nats_url=SecretStr(tls_nats), nats_tls_ca=pki.ca, nats_reconnect_wait_s=0.1)
    with pytest.raises((BusClosed, Forbidden)):
        await NatsBus.connect(settings, name="tls-nocert")


# --- reconnection --------------------------------------------------------------------------------------------
async def test_reconnects_after_server_restart(env_clean: pytest.MonkeyPatch, ns: str) -> None:
    server = start_nats()
    settings = Settings(nats_url=SecretStr(f"nats://127.0.0.1:{server.port}"), nats_reconnect_wait_s=0.1)
    service = await NatsBus.connect(settings, name="service")
    client = await NatsBus.connect(settings, name="client")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await service.subscribe(f"{ns}.echo", echo)
        _, jobs = await _collect_work(service, ns, f"R_{ns}")
        await client.enqueue(f"{ns}.work", b"queued before the restart", msg_id="before")
        assert (await client.request(f"{ns}.echo", b"before", timeout_s=2)).data == b"before"
        await eventually(lambda: jobs == [b"queued before the restart"])
        await asyncio.to_thread(server.restart)
        deadline = time.monotonic() + 10
        while True:  # during the outage requests fail with typed errors only, then succeed once both reconnected
            try:
                reply = await client.request(f"{ns}.echo", b"after", timeout_s=0.5)
                break
            except ScoutError as e:  # Timeout, BusClosed, NoResponders (subscription not yet restored)
                if time.monotonic() > deadline:
                    raise AssertionError("no reconnection within 10 s") from e
                await asyncio.sleep(0.1)
        assert reply.data == b"after"
        assert service.is_connected and client.is_connected
        assert service.nc.stats["reconnects"] >= 1 and client.nc.stats["reconnects"] >= 1
        # The work queue (file storage) survived, and the consumer's fetch loop picks up new work again.
        await client.enqueue(f"{ns}.work", b"queued after the restart", msg_id="after")
        await eventually(lambda: len(jobs) == 2, timeout_s=10, what="work after the restart")
        assert jobs[1] == b"queued after the restart"
    finally:
        await service.close()
        await client.close()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


async def test_connect_bus_by_url(nats_url: str, env_clean: pytest.MonkeyPatch) -> None:
    a = await connect_bus(Settings(nats_url=SecretStr("inproc://shared-demo")), name="a")
    b = await connect_bus(Settings(nats_url=SecretStr("inproc://shared-demo")), name="b")
    assert isinstance(a, InProcessBus) and isinstance(b, InProcessBus) and a.broker is b.broker
    other = await connect_bus(Settings(nats_url=SecretStr("inproc://other")), name="c")
    assert isinstance(other, InProcessBus) and other.broker is not a.broker
    real = await connect_bus(Settings(nats_url=SecretStr(nats_url)), name="real")
    try:
        assert isinstance(real, NatsBus) and real.is_connected and real.max_payload == 1024 * 1024
    finally:
        for bus in (a, b, other, real):
            await bus.close()
