"""Bounded versions of ``scout bench reliability`` against one deployment with authentication on: the soak, every
fault scenario and hostile input on every entry point (issue 10). Each asserts the scenario's own criteria (the
same ones the report shows) and the details behind them; timings are only recorded, never asserted.

Order matters only for speed: the ``kill -9`` scenario runs last and does not restart its victim.

These tests need scout mode to work end to end (the soak mixes it in; the link fault falls back to it).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis_async
import redis.exceptions
from pydantic import SecretStr

from scout_runtime.bus import NatsBus
from scout_runtime.errors import Forbidden
from scout_runtime.store import RedisStore
from scout_testbed.faults import decoder_kill9, decoder_stall, link_zero, nats_restart, redis_restart
from scout_testbed.hostile import run_hostile
from scout_testbed.reliability import hostile_target
from scout_testbed.soak import DEFAULT_MIX, SoakConfig, SoakDocument, run_soak
from scout_testbed.testbed import Deployment

pytestmark = pytest.mark.models


async def test_authentication_is_on_and_the_roles_hold_credentials(dep: Deployment) -> None:
    """Without credentials neither server lets a client in; with the settings' credentials both do."""
    anonymous = dep.settings(nats_user=None, nats_password=None)
    with pytest.raises(Forbidden):
        await NatsBus.connect(anonymous, name="anonymous")
    bus = await NatsBus.connect(dep.settings(), name="authenticated")
    assert bus.is_connected
    await bus.close()

    no_password = RedisStore(dep.servers.redis_url, prefix=dep.settings().key_prefix())
    with pytest.raises(Forbidden):
        await no_password.put_document("x")
    await no_password.close()
    outside = redis_async.Redis(
        host="127.0.0.1",
        port=dep.servers.redis.port,
        username="scout-services",
        password=dep.servers.redis_password.get_secret_value(),
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        await outside.set("not-the-namespace", b"x")  # the service user is confined to its namespace's keys
    await outside.aclose()
    assert isinstance(dep.settings().nats_password, SecretStr)
    assert dep.servers.nats_password.get_secret_value() not in repr(dep.settings())
    assert dep.all_alive()


async def test_soak_small_loses_and_duplicates_nothing(dep: Deployment, docs: list[SoakDocument]) -> None:
    cfg = SoakConfig(concurrency=8, requests_per_client=1, max_new_tokens=4, grace_s=dep.ack_wait_s + 2.0, seed=1)
    result = await run_soak(dep.settings(), dep.http_url, docs, cfg)
    assert result.sent == 8 and result.lost == 0 and result.duplicated == 0, result.model_dump(exclude={"records"})
    assert result.answered == 8, result.errors_by_code
    assert set(result.by_point) == set(DEFAULT_MIX), "every point of the mix was sent once"
    assert result.by_transport == {"nats": 6, "http": 2}
    cloud = [r for r in result.records if r.answered_by == "cloud"]
    assert cloud and all(r.client_replies == 1 and r.tap_results == 1 for r in cloud)
    assert all(r.tap_results == 0 for r in result.records if r.answered_by == "edge")


async def test_link_rate_zero_falls_back_before_the_deadline(dep: Deployment, docs: list[SoakDocument]) -> None:
    outcome = await link_zero(dep, docs)
    steps = outcome.details["steps"]
    assert outcome.passed, outcome.model_dump(exclude={"requests"})
    assert [s["reply_mode"] for s in steps] == ["full", "scout", "local"]
    assert steps[-1]["answered_by"] == "edge" and steps[-1]["within_deadline"]


async def test_hostile_input_on_every_entry_point_ends_typed(
    dep: Deployment, docs: list[SoakDocument], smol_fp32: Any
) -> None:
    report = await run_hostile(
        hostile_target(dep), smol_fp32, question=docs[0].question, document=docs[0].context, random_n=4
    )
    by_entry = {e.entry: e for e in report.entries}
    assert set(by_entry) == {"http", "ask", "plan", "encode", "decode", "link", "result"}
    for e in report.entries:
        assert e.tried > 0 and e.unhandled == 0 and not e.failures, e.model_dump()
        assert e.still_serving, e.entry
    for entry in ("http", "ask", "plan", "encode", "decode"):
        assert by_entry[entry].typed == by_entry[entry].tried
    assert {"blob_corrupt", "blob_missing", "unknown_model"} <= set(by_entry["decode"].by_code)
    assert {"blob_corrupt", "blob_missing", "unknown_model"} <= set(by_entry["encode"].by_code)
    assert "too_large" in by_entry["http"].by_code
    assert report.all_handled and report.all_serving and report.roles_alive


async def test_redis_restart_with_blobs_staged_ends_typed_never_hangs(
    dep: Deployment, docs: list[SoakDocument]
) -> None:
    outcome = await redis_restart(dep, docs, points=("int8", "text", "scout@0.5", "local"))
    assert outcome.passed, outcome.model_dump(exclude={"requests"})
    assert outcome.details["staged_blob_keys"] >= 1 and outcome.details["queued_decodes"] >= 3
    assert outcome.lost == 0 and outcome.duplicated == 0
    by_point = {r.point: r for r in outcome.requests}
    for point in ("int8", "text", "scout@0.5"):  # their staged data vanished: a clear typed error, not a hang
        assert (by_point[point].outcome, by_point[point].code) == ("error", "blob_missing"), by_point[point]
    assert by_point["local"].outcome == "answered"
    assert all(r["outcome"] == "answered" for r in outcome.details["after"])


async def test_nats_restart_clients_and_roles_reconnect(dep: Deployment, docs: list[SoakDocument]) -> None:
    outcome = await nats_restart(dep, docs, points=("text", "int8", "local", "scout@0.5"), timeout_s=60)
    assert outcome.passed, outcome.model_dump(exclude={"requests"})
    assert outcome.duplicated == 0
    for r in outcome.requests:  # each completed, failed typed, or ended in the client's timeout: none is stuck
        assert r.outcome in ("answered", "error", "lost")
        assert r.outcome != "error" or r.code in ("timeout", "overloaded", "no_responders", "internal"), r
    assert all(r["outcome"] == "answered" for r in outcome.details["after"])
    assert outcome.details["nats_away_s"] >= 2.0


async def test_a_decoder_frozen_past_the_ack_wait_does_not_answer_twice(
    dep: Deployment, docs: list[SoakDocument]
) -> None:
    """Regression: a decoder whose heartbeats stopped (frozen, or cut off by a NATS restart) lost its request to a
    redelivery, then finished anyway and published a second result for it."""
    outcome = await decoder_stall(dep, docs)
    assert outcome.details["stalled_s"] > dep.ack_wait_s
    assert outcome.passed, outcome.model_dump(exclude={"requests"})
    (record,) = outcome.requests
    assert record.tap_results == 1 and record.client_replies == 1, record.results_from


async def test_kill_9_of_a_decoder_mid_request_answers_each_once(dep: Deployment, docs: list[SoakDocument]) -> None:
    outcome = await decoder_kill9(dep, docs, inflight=3, restart=False)
    assert outcome.passed, outcome.model_dump(exclude={"requests"})
    assert outcome.details["victim_exit"] == -9 and outcome.details["redelivered"]
    assert all(r.client_replies == 1 and r.tap_results == 1 for r in outcome.requests)
    assert outcome.answered == outcome.sent == 3
