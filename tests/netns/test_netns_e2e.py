"""End to end over a shaped uplink: a KV-mode ask whose edge roles (selector, quantizer, edge store) run in the
shaped edge namespace and whose cloud side (NATS, cloud store, decoder, policy) runs in the other one.

* The shaper holds 30 Mbit/s on the edge veth and announces it on ``scout.v1.link.<device>``; the policy's plan
  for the device then carries exactly that rate, and its transfer time is the blob's bytes over it.
* The quantizer's upload of the full-precision blob (about 5 MB, so about 1.5 s at this rate: the transfer
  dominates) takes bytes / rate within 15 %. tbf's rate counts whole Ethernet frames, so bulk TCP delivers
  `expected_goodput_fraction` (0.956) of it as payload: the model is bytes * 8 / (0.956 * rate). The remaining
  tolerance covers the token bucket's initial burst (a few ms at this rate), slow start after the idle
  connection, and Redis' own write.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from e2e_helpers import Stack
from netns_helpers import Link

from scout.channel.shaping import expected_goodput_fraction

pytestmark = pytest.mark.models

RATE_BPS = 30e6


def test_kv_upload_over_the_shaped_link_takes_bytes_over_rate_and_the_plan_uses_the_shaper_rate(
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
    assert link.tbf_rate_bps() == pytest.approx(RATE_BPS)

    result = stack.ask(device=device, rate_bps=RATE_BPS, mode="full")
    probe, reply = result["plan"], result["reply"]
    plan = reply["plan"]

    # The policy plans with the shaper's announced rate: the probe (unforced) and the ask's own (forced full) plan.
    assert probe["bandwidth_bps"] == RATE_BPS, probe
    assert "30 Mbit/s" in probe["reason"], probe["reason"]
    assert plan["bandwidth_bps"] == RATE_BPS and plan["mode"] == "full", plan
    assert plan["transfer_s"] == pytest.approx(plan["expected_bytes"] * 8 / RATE_BPS)
    assert plan["expected_bytes"] == pytest.approx(reply["bytes_sent"], rel=0.15)

    # The upload crossed the shaped link at the shaped rate.
    assert reply["mode"] == "full" and reply["answered_by"] == "cloud"
    nbytes, upload_s = reply["bytes_sent"], reply["timings"]["upload"]
    model_s = nbytes * 8 / (RATE_BPS * expected_goodput_fraction())
    print(
        f"\n{nbytes} B uplink blob: upload {upload_s * 1000:.0f} ms; bytes/rate {nbytes * 8 / RATE_BPS * 1000:.0f} ms, "
        f"at tbf goodput {model_s * 1000:.0f} ms; plan's rate {plan['bandwidth_bps'] / 1e6:g} Mbit/s; "
        f"test {time.monotonic() - started:.1f} s"
    )
    assert model_s > 1.0, "the blob is too small for the transfer to dominate"
    assert upload_s == pytest.approx(model_s, rel=0.15)

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]
