"""The paced memory store (``memory://name?rate_mbit=R``): the embedded stand-in for the uplink in ``scout demo``.

Timing checks are lower bounds only (a paced write never completes faster than bytes * 8 / rate); upper bounds
would flake on a loaded CI machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from scout_runtime.errors import BadRequest, BlobMissing
from scout_runtime.settings import Settings
from scout_runtime.store import MemoryStore, PacedUplink, open_store, parse_memory_url


def _name() -> str:
    return "pace-" + uuid.uuid4().hex[:10]


def _store(url: str) -> MemoryStore:
    store = open_store(url, settings=Settings(), prefix="t:")
    assert isinstance(store, MemoryStore)
    return store


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", ("", None)),
        ("memory://cloud", ("cloud", None)),
        ("memory://cloud?rate_mbit=20", ("cloud", 20e6)),
        ("memory:///cloud/?rate_mbit=0.5", ("cloud", 0.5e6)),
        ("memory://?rate_mbit=1e3", ("", 1e9)),
    ],
)
def test_memory_url_parsing(url: str, expected: tuple[str, float | None]) -> None:
    assert parse_memory_url(url) == expected
    store = _store(url)
    assert (store.name, store.rate_bps) == expected
    assert (store.uplink is None) == (expected[1] is None)


@pytest.mark.parametrize("rate", ["0", "-1", "abc", "", "nan", "inf", "-inf", "1e400"])
def test_bad_rate_is_refused_with_a_clear_error(rate: str) -> None:
    with pytest.raises(BadRequest, match="rate_mbit must be a positive number of Mbit/s"):
        open_store(f"memory://x?rate_mbit={rate}", settings=Settings())


def test_unknown_option_is_refused() -> None:
    with pytest.raises(BadRequest, match="unknown memory:// store option 'rate'"):
        open_store("memory://x?rate=5", settings=Settings())


@pytest.mark.parametrize("rate_bps", [0.0, -5.0, float("nan"), float("inf")])
def test_bad_rate_in_the_constructor(rate_bps: float) -> None:
    with pytest.raises(ValueError, match="uplink rate must be a positive, finite number"):
        MemoryStore(_name(), rate_bps=rate_bps)
    with pytest.raises(ValueError, match="uplink rate"):
        PacedUplink(rate_bps)


def test_paced_put_takes_at_least_bytes_over_rate_and_shares_the_data() -> None:
    name = _name()
    paced = _store(f"memory://{name}?rate_mbit=8")  # 1 MB/s
    plain = _store(f"memory://{name}")
    data = bytes(range(256)) * 800  # 204,800 B: >= 0.2048 s at 8 Mbit/s

    async def go() -> float:
        t0 = time.perf_counter()
        ref = await paced.put_blob("dev", data)
        elapsed = time.perf_counter() - t0
        # The unpaced view of the same name (the cloud decoder's) reads what crossed the link.
        assert await plain.get_blob(ref, device_id="dev") == data
        return elapsed

    elapsed = asyncio.run(go())
    assert elapsed >= len(data) * 8 / 8e6
    assert paced.url == f"memory://{name}?rate_mbit=8"
    assert plain.rate_bps is None and plain.url == f"memory://{name}"


def test_entry_appears_only_after_its_bytes_crossed_and_the_loop_keeps_running() -> None:
    store = _store(f"memory://{_name()}?rate_mbit=8")
    data = b"x" * 300_000  # ~0.3 s
    key = "t:blob:dev:" + "0" * 64

    async def go() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        put = asyncio.create_task(store.put(key, data))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not put.done()
        with pytest.raises(BlobMissing):
            await store.head(key)
        await put
        tick_task.cancel()
        assert (await store.head(key)).size == len(data)
        return ticks

    # A put that blocked the event loop would let the ticker run once at most.
    assert asyncio.run(go()) >= 3


def test_stores_of_one_name_and_rate_share_one_link() -> None:
    name = _name()
    a = _store(f"memory://{name}?rate_mbit=8")
    b = _store(f"memory://{name}?rate_mbit=8")
    other_rate = _store(f"memory://{name}?rate_mbit=16")
    private = _store("memory://?rate_mbit=8")
    assert a.uplink is b.uplink
    assert other_rate.uplink is not a.uplink
    assert private.uplink is not a.uplink
    one, two = b"a" * 150_000, b"b" * 150_000

    async def go() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(a.put_blob("d1", one), b.put_blob("d2", two))
        return time.perf_counter() - t0

    # Concurrent uploads share the link's rate: together they take as long as one of both sizes.
    assert asyncio.run(go()) >= (len(one) + len(two)) * 8 / 8e6


def test_uplink_send_schedules_chunks_back_to_back() -> None:
    link = PacedUplink(80e6, chunk_bytes=10_000)  # 1 ms per chunk
    assert link.transfer_time(1_000_000) == pytest.approx(0.1)
    elapsed = asyncio.run(link.send(1_000_000))
    assert elapsed >= 0.1


def test_uplink_send_of_nothing_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to send: no chunk is scheduled, so the sender never sleeps (checked by counting, not timing)."""
    import scout_runtime.store.pacing as pacing

    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(pacing.asyncio, "sleep", fake_sleep)
    link = PacedUplink(80e6, chunk_bytes=10_000)
    asyncio.run(link.send(0))
    assert sleeps == []
    asyncio.run(link.send(25_000))
    assert len(sleeps) == 3  # three chunks: 10 kB, 10 kB, 5 kB
