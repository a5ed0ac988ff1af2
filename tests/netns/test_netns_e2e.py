"""End to end over a shaped uplink: a KV-mode ask whose edge roles (selector, quantizer, edge store) run in the
shaped edge namespace and whose cloud side (NATS, cloud store, decoder, policy) runs in the other one.

* The shaper holds 30 Mbit/s on the edge veth and announces it on ``scout.v1.link.<device>``; the policy's plan
  for the device then carries exactly that rate, and its transfer time is the blob's bytes over it.
* The quantizer's upload of the full-precision blob (about 5 MB) crossed the shaped link: the tbf passed at least
  its bytes and throttled it, and the upload took no less than its bytes, less one bucket, over the rate (load
  only makes it slower). How close bulk TCP comes to 0.956 x the rate is measured by ``scout bench shaping``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from checks import assert_tbf_configured, assert_throttled
from e2e_helpers import Stack

from scout.channel.shaping import tbf_params
from scout_services.shaper.handlers import kernel_hz
from scout_testbed.netlab import Link

pytestmark = pytest.mark.models

RATE_BPS = 30e6


def test_kv_upload_crosses_the_shaped_link_no_faster_than_the_rate_and_the_plan_uses_the_shaper_rate(
    link: Link, tmp_path: Path
) -> None:
    started = time.monotonic()
    namespace = "e" + uuid.uuid4().hex[:10]
    device = "car-" + uuid.uuid4().hex[:8]
    stack = Stack(link, tmp_path, namespace)
    stack.start_servers()
    stack.start_roles()
    shaper = link.shaper(
        *("--rate", f"{RATE_BPS / 1e6:g}mbit", "--nats", stack.edge_nats, "--device-id", device),
        *("--publish-interval", "0.5"),
        inside=True,
        env={"SCOUT_NAMESPACE": namespace},
    )
    params = tbf_params(RATE_BPS, hz=kernel_hz())
    assert_tbf_configured(link.qdisc("tbf"), params)

    result = stack.ask(device=device, rate_bps=RATE_BPS, mode="full")
    probe, reply = result["plan"], result["reply"]
    plan = reply["plan"]

    # The policy plans with the shaper's announced rate: the probe (unforced) and the ask's own (forced full) plan.
    assert probe["bandwidth_bps"] == RATE_BPS, probe
    assert "30 Mbit/s" in probe["reason"], probe["reason"]
    assert plan["bandwidth_bps"] == RATE_BPS and plan["mode"] == "full", plan
    assert plan["transfer_s"] == pytest.approx(plan["expected_bytes"] * 8 / RATE_BPS)
    assert plan["expected_bytes"] == pytest.approx(reply["bytes_sent"], rel=0.15)

    # The upload crossed the shaped link, throttled by its bucket, and no faster than the rate.
    assert reply["mode"] == "full" and reply["answered_by"] == "cloud"
    nbytes, upload_s = reply["bytes_sent"], reply["timings"]["upload"]
    floor_s = (nbytes - params.burst_bytes) * 8 / RATE_BPS
    print(
        f"\n{nbytes} B uplink blob: upload {upload_s * 1000:.0f} ms, never less than {floor_s * 1000:.0f} ms; "
        f"plan's rate {plan['bandwidth_bps'] / 1e6:g} Mbit/s; test {time.monotonic() - started:.1f} s"
    )
    assert floor_s > 1.0, "the blob is too small for the transfer to dominate"
    assert_throttled(None, link.qdisc("tbf"), nbytes)
    assert upload_s >= floor_s

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]
