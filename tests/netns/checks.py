"""Load-independent checks of real shaping, shared by the netns tests.

A rate measured on a busy 2-core machine depends on the load (a descheduled sender sends less), so no test here
asserts one. What does not depend on load: the configuration tc reports back, tc's counters (every byte of a shaped
flow passed the tbf; ``overlimits`` > 0 means packets waited for tokens, i.e. the bucket throttled the flow), the
order of the rates the shaper applied, and upper bounds on arrivals that a token bucket guarantees (load only ever
delays packets). `scout bench shaping` measures the rates themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from scout.channel.shaping import RateStep, TbfParams
from scout_testbed.netlab import Arrivals, Qdisc, max_dequeued_bytes


def assert_tbf_configured(tbf: Qdisc, params: TbfParams) -> None:
    """The kernel's tbf holds the shaper's rate, bucket and queue (tc reports the queue as latency at the rate)."""
    assert tbf.kind == "tbf"
    assert float(tbf.options["rate"]) * 8 == pytest.approx(params.rate_bps)
    assert int(tbf.options["burst"]) == pytest.approx(params.burst_bytes, rel=1e-3)  # kept in time units: rounded
    limit = params.burst_bytes + float(tbf.options["rate"]) * float(tbf.options["lat"]) / 1e6
    assert limit == pytest.approx(params.limit_bytes, rel=0.01)


def assert_throttled(before: Qdisc | None, after: Qdisc, payload_bytes: int) -> None:
    """Between ``before`` (None: since the qdisc was installed) and ``after`` the qdisc passed at least the flow's
    payload (headers add to it) and made packets wait for tokens."""
    passed = after.bytes - (before.bytes if before else 0)
    waited = after.overlimits - (before.overlimits if before else 0)
    assert passed >= payload_bytes, f"the shaped qdisc passed {passed} B of a {payload_bytes} B flow"
    assert waited > 0, "the bucket never ran dry: the flow was not throttled"


def applied_rates(events: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(at, rate_bps)`` of the shaper's ``rate`` events (what `max_dequeued_bytes` reads)."""
    return [(float(e["at"]), float(e["rate_bps"])) for e in events]


def assert_within_bucket(arrivals: Arrivals, applied: Sequence[tuple[float, float]], burst: int, since: float) -> None:
    """No arrival beats the token bucket: payload received by each time <= what the tbf may have sent by then."""
    allowed = max_dequeued_bytes(applied, burst, since, arrivals.t)
    over = arrivals.cum - allowed
    worst = int(np.argmax(over))
    assert over[worst] <= 0, (
        f"{arrivals.cum[worst]:.0f} B had arrived {arrivals.t[worst] - since:.3f} s after the start, "
        f"{over[worst]:.0f} B more than the bucket allows: not shaped at the applied rates"
    )


def assert_applied_in_order(events: Sequence[dict[str, Any]], schedule: Sequence[RateStep]) -> None:
    """The rates the shaper applied are the schedule's steps, in order, none missing (a prefix when the shaper was
    stopped before the schedule ended). The shaper would skip a step only if tc had stalled past the next one."""
    applied = [(float(e["t_s"]), float(e["rate_bps"])) for e in events]
    expected = [(s.t_s, s.rate_bps) for s in schedule][: len(applied)]
    assert len(applied) <= len(schedule), f"{len(applied)} rates applied, the schedule has {len(schedule)}"
    assert applied == expected, "the applied rates are not the schedule's, in order"


def assert_subsequence(observed: Sequence[float], applied: Sequence[float]) -> None:
    """Rates polled from tc (consecutive repeats collapsed) appear in the order the shaper applied them."""
    it = iter(applied)
    assert all(any(r == a for a in it) for r in observed), f"tc showed {observed}, the shaper applied {applied}"
