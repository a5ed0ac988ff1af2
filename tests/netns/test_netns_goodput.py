"""Real tc shaping, measured: TCP goodput through the shaped veth at fixed rates, and a time-compressed 5G uplink
trace replayed by the shaper and followed by the measured goodput.

Tolerances. Bulk TCP through tbf delivers the configured rate times the payload share of a full frame: 1448 of
1514 bytes = 95.6 % (`expected_goodput_fraction`; DESIGN.md's "about 96 %"). The fixed-rate test asserts the
issue's band, goodput within 10 % of the configured rate: the header overhead uses 4.4 points of it, which leaves
about 5 for what a busy 2-core test machine adds (timer slack, a sender descheduled for a few ms). Below 90 % the
shaper is wrong (bucket too small for HZ, queue too short for TCP); above 100 % it is not shaping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from netns_helpers import CLOUD_IP, PORT, Arrivals, Link

from scout.channel.shaping import expected_goodput_fraction
from scout.channel.traces import load_trace

SECONDS = 3.0


@pytest.mark.parametrize("mbit", [10, 50, 100])
def test_goodput_through_the_shaped_veth_is_within_10_percent_of_the_rate(link: Link, mbit: int) -> None:
    rate = mbit * 1e6
    server = link.serve()
    shaper = link.shaper("--rate", f"{mbit}mbit")
    assert link.qdisc_kinds() == ["tbf"]
    assert link.tbf_rate_bps() == pytest.approx(rate)

    link.client("send", "--host", CLOUD_IP, "--port", str(PORT), "--seconds", str(SECONDS))
    goodput = Arrivals.of(server.next_json(30)).steady_goodput_bps()
    ratio = goodput / rate
    print(
        f"\n{mbit} Mbit/s: goodput {goodput / 1e6:.2f} Mbit/s = {100 * ratio:.1f} % of the rate "
        f"(header overhead alone: {100 * expected_goodput_fraction():.1f} %)"
    )
    assert 0.90 <= ratio <= 1.0, f"goodput {goodput / 1e6:.2f} Mbit/s at {mbit} Mbit/s"

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"], "the shaper left its qdisc behind"


# ----------------------------------------------------------------------------------------------------------------
# trace replay
# ----------------------------------------------------------------------------------------------------------------
TRACE = "umn_tmo_sa5g_ul_walking_run20070"
"""5G SA uplink, T-Mobile, walking (1 s rows). From 466 s on it swings between 7 and 79 Mbit/s within seconds."""
OFFSET_S = 466.0
SPEED = 5.0
INTERVAL_S = 1.0 / SPEED
MEASURED = 20
"""Trace seconds measured: 20 s of trace in 4 s."""
MIN_CORRELATION = 0.95
MAX_MAE_FRACTION = 0.10


def test_goodput_follows_a_time_compressed_uplink_trace(link: Link) -> None:
    """The shaper replays 20+ s of a measured 5G uplink in about 5 s; per trace second (0.2 s of replay) the
    goodput received must follow the configured rate.

    Thresholds, and why: the measured goodput sits 4.4 % under the configured rate by header overhead, and lags a
    rate change by the queue (at most 50 ms of the old rate, a quarter of an interval) and by TCP's probing after
    a step up (a few ms at this RTT); a tbf change also refills the bucket (one tick of the peak rate). These shift
    an interval's goodput by a fraction of its rate, not its ranking: the correlation must stay >= 0.95 and the
    mean absolute error <= 10 % of the mean configured rate. Wrong shaping fails both: on these trace seconds a
    schedule one interval late scores a correlation near 0 and an MAE near 55 %, a constant mean rate an MAE near
    45 %; a bucket that shrinks under queued packets (the bug `tbf_params` avoids) stalls whole intervals.
    """
    trace = load_trace(TRACE)
    server = link.serve()
    shaper = link.shaper(
        "--trace", TRACE, "--offset", str(OFFSET_S), "--speed", f"{SPEED:g}x", "--no-loop", "--publish-interval", "0"
    )
    link.client("send", "--host", CLOUD_IP, "--port", str(PORT), "--seconds", "6", "--abort")
    arrivals = Arrivals.of(server.next_json(30))
    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]

    events = shaper.events("rate")
    assert len(events) >= MEASURED // 2, "the replay did not change the rate"
    # Replay time 0 in wall-clock time: each step is applied at its schedule time plus a few ms of tc.
    origin = float(np.median([e["at"] - e["t_s"] for e in events[1:]]))
    t_steps = np.asarray([e["t_s"] for e in events])
    rates = np.asarray([e["rate_bps"] for e in events])

    first = math.ceil((float(arrivals.t[0]) + 0.3 - origin) / INTERVAL_S)  # TCP is up to speed by then
    ks = np.arange(first, first + MEASURED)
    starts = origin + ks * INTERVAL_S
    assert starts[-1] + INTERVAL_S <= arrivals.t[-1], "the sender stopped before the measured trace seconds ended"
    configured = rates[np.searchsorted(t_steps, ks * INTERVAL_S + 1e-9, side="right") - 1]
    measured = (arrivals.bytes_by(starts + INTERVAL_S) - arrivals.bytes_by(starts)) * 8 / INTERVAL_S
    # The schedule is the trace itself (1 s rows, one row per interval), zeros floored.
    rows = (OFFSET_S + ks * INTERVAL_S * SPEED).astype(int)
    np.testing.assert_allclose(configured, np.maximum(trace.rates_bps[rows], 10e3), atol=8.0)

    corr = float(np.corrcoef(configured, measured)[0, 1])
    mae = float(np.mean(np.abs(measured - configured)))
    mae_expected = float(np.mean(np.abs(measured - configured * expected_goodput_fraction())))
    mean = float(np.mean(configured))
    print(f"\ntrace {TRACE}, rows {rows[0]}-{rows[-1]} at {SPEED:g}x, per trace second (Mbit/s):")
    print("  configured " + " ".join(f"{r / 1e6:5.1f}" for r in configured))
    print("  measured   " + " ".join(f"{m / 1e6:5.1f}" for m in measured))
    print(
        f"  correlation {corr:.3f}; MAE {mae / 1e6:.2f} Mbit/s = {100 * mae / mean:.1f} % of the mean rate "
        f"{mean / 1e6:.1f}; MAE against rate x {expected_goodput_fraction():.3f}: {mae_expected / 1e6:.2f} Mbit/s"
    )
    assert corr >= MIN_CORRELATION
    assert mae <= MAX_MAE_FRACTION * mean
