"""The policy's per-device bandwidth book: shaper rate changes restart an estimate, heartbeats do not."""

from __future__ import annotations

import pytest

from scout.policy.estimators import LinkBook


def test_prior_until_a_device_reports() -> None:
    book = LinkBook("last", prior_bps=5e6, max_devices=4)
    assert book.bandwidth_bps("phone") == 5e6


def test_heartbeats_keep_goodput_and_a_new_rate_restarts() -> None:
    book = LinkBook("ewma:0.5", prior_bps=1e6, max_devices=4)
    book.update("phone", 40e6, "shaper", now=0.0)
    book.update("phone", 20e6, "goodput", now=1.0)
    blended = book.bandwidth_bps("phone")
    assert 20e6 < blended < 40e6
    book.update("phone", 40e6, "shaper", now=2.0)  # heartbeat: same configured rate
    assert book.bandwidth_bps("phone") < 40e6  # the goodput sample still counts
    book.update("phone", 10e6, "shaper", now=3.0)  # a real change: the estimate starts over
    assert book.bandwidth_bps("phone") == pytest.approx(10e6)


def test_least_recently_updated_device_is_dropped() -> None:
    book = LinkBook("last", prior_bps=1e6, max_devices=2)
    for i, dev in enumerate(("a", "b", "c")):
        book.update(dev, 1e7 * (i + 1), "shaper", now=float(i))
    assert len(book) == 2 and book.bandwidth_bps("a") == 1e6 and book.bandwidth_bps("c") == 3e7
