"""The shaper's pure logic: rate parsing, tbf sizing, the tc command lines of both layouts, the replay schedule
and the relay window (scout.channel.shaping). The real qdiscs are exercised in tests/netns."""

from __future__ import annotations

import ipaddress
import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from scout.channel.process import StepProcess
from scout.channel.shaping import (
    ETH_FRAME_BYTES,
    Destination,
    RateStep,
    ShapingLayout,
    TbfParams,
    expected_goodput_fraction,
    format_rate,
    parse_destination,
    parse_rate,
    parse_speed,
    rate_schedule,
    relay_window_bytes,
    split_host_port,
    tbf_params,
    update_interval,
)
from scout.channel.traces import TraceReplay, load_trace


# ----------------------------------------------------------------------------------------------------------------
# rates and speeds
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("50mbit", 50e6),
        ("50Mbit", 50e6),
        ("1.5gbit", 1.5e9),
        ("800kbit", 800e3),
        ("12000bit", 12e3),
        ("12000", 12e3),
        (" 10 mbit/s ", 10e6),
        ("2e6bit", 2e6),
        (25_000_000, 25e6),
        (1.5e6, 1.5e6),
    ],
)
def test_parse_rate_reads_tc_bit_units_decimally(text: str | float, bps: float) -> None:
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["50mbps", "1gbps", "100bps", "8kbps"])
def test_parse_rate_refuses_byte_units(text: str) -> None:
    with pytest.raises(ValueError, match="bytes per second"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["", "fast", "50 megabit", "-5mbit", "nan", "inf", "0", "7bit", "mbit"])
def test_parse_rate_refuses_nonsense_and_rates_tc_cannot_hold(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_format_rate_round_trips_through_parse_rate() -> None:
    for bps in (8.0, 999.0, 10e3, 12.5e6, 50e6, 1.25e9):
        assert parse_rate(format_rate(bps)) == pytest.approx(bps, rel=1e-3)
    assert format_rate(50e6) == "50mbit" and format_rate(12.5e6) == "12.5mbit" and format_rate(800e3) == "800kbit"


@pytest.mark.parametrize(("text", "value"), [("10", 10.0), ("10x", 10.0), ("2.5X", 2.5), (4, 4.0), (" 0.5x", 0.5)])
def test_parse_speed(text: str | float, value: float) -> None:
    assert parse_speed(text) == value


@pytest.mark.parametrize("text", ["0", "-2x", "x", "fast", "inf"])
def test_parse_speed_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_speed(text)


def test_expected_goodput_fraction_is_the_payload_share_of_a_full_frame() -> None:
    assert expected_goodput_fraction() == pytest.approx(1448 / 1514)
    assert 0.95 < expected_goodput_fraction() < 0.96


# ----------------------------------------------------------------------------------------------------------------
# tbf sizing
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rate", "hz", "burst"), [(10e6, 250, 5000), (50e6, 250, 25000), (100e6, 1000, 12500)])
def test_burst_holds_one_timer_tick_of_the_rate(rate: float, hz: int, burst: int) -> None:
    p = tbf_params(rate, hz=hz, queue_s=0.05)
    assert p.burst_bytes == burst
    assert p.limit_bytes == burst + math.ceil(rate / 8 * 0.05)


def test_burst_and_queue_never_fall_below_whole_frames() -> None:
    p = tbf_params(10e3, hz=1000, queue_s=0.05)  # 1.25 B per tick, 62.5 B of queue: both floored
    assert p.burst_bytes == 2 * ETH_FRAME_BYTES
    assert p.limit_bytes == 2 * ETH_FRAME_BYTES + 4 * ETH_FRAME_BYTES


def test_one_bucket_for_the_whole_schedule_sized_at_its_peak() -> None:
    # A change must never shrink the bucket under a packet already queued: tbf would never send it.
    peak = 169e6
    buckets = {tbf_params(rate, peak_bps=peak, hz=250).burst_bytes for rate in (10e3, 7.3e6, 32.5e6, 78.6e6, peak)}
    assert buckets == {math.ceil(peak / 8 / 250)}
    low = tbf_params(7.3e6, peak_bps=peak, hz=250, queue_s=0.05)
    assert low.limit_bytes == low.burst_bytes + math.ceil(7.3e6 / 8 * 0.05)  # the queue follows the current rate
    with pytest.raises(ValueError, match="peak"):
        tbf_params(10e6, peak_bps=5e6)


def test_a_smaller_hz_gives_a_larger_bucket() -> None:
    assert (
        tbf_params(100e6, hz=100).burst_bytes
        > tbf_params(100e6, hz=250).burst_bytes
        > tbf_params(100e6, hz=1000).burst_bytes
    )


@pytest.mark.parametrize(
    "kwargs", [{"rate_bps": 0.0}, {"rate_bps": math.inf}, {"rate_bps": 1e6, "hz": 0}, {"rate_bps": 1e6, "queue_s": -1}]
)
def test_tbf_params_refuses_impossible_settings(kwargs: dict[str, float]) -> None:
    rate = kwargs.pop("rate_bps")
    with pytest.raises(ValueError):
        tbf_params(rate, **kwargs)  # type: ignore[arg-type]


def test_tbf_args_are_whole_bits_and_bytes() -> None:
    p = TbfParams(rate_bps=12_345_678.4, burst_bytes=6173, limit_bytes=83_333)
    assert p.tc_args() == ["tbf", "rate", "12345678bit", "burst", "6173", "limit", "83333"]


# ----------------------------------------------------------------------------------------------------------------
# destinations
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.5", "10.0.0.5", None),
        ("10.0.0.5:6379", "10.0.0.5", 6379),
        ("redis.cloud:6379", "redis.cloud", 6379),
        ("[fd00::5]:6379", "fd00::5", 6379),
        ("fd00::5", "fd00::5", None),
        ("fd00::/64", "fd00::/64", None),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_split_host_port(text: str, host: str, port: int | None) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize("text", ["", ":80", "host:http", "host:70000", "[fd00::5", "[fd00::5]6379"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_parse_destination() -> None:
    d = parse_destination("10.1.2.3:6379")
    assert d.network == ipaddress.ip_network("10.1.2.3/32") and d.port == 6379 and d.version == 4
    assert str(d) == "10.1.2.3/32:6379"
    assert parse_destination("10.1.2.0/24").network.num_addresses == 256
    six = parse_destination("[fd00::5]:80")
    assert six.version == 6 and str(six) == "[fd00::5/128]:80"
    with pytest.raises(ValueError, match="not an IP"):
        parse_destination("redis.cloud:6379")
    with pytest.raises(ValidationError):
        parse_destination("10.1.2.3:0")  # a destination port is never 0


# ----------------------------------------------------------------------------------------------------------------
# tc command lines
# ----------------------------------------------------------------------------------------------------------------
P = TbfParams(rate_bps=50e6, burst_bytes=25000, limit_bytes=337500)
TBF = ["tbf", "rate", "50000000bit", "burst", "25000", "limit", "337500"]


def argvs(cmds: list) -> list[list[str]]:
    return [list(c.argv) for c in cmds]


def test_root_tbf_layout() -> None:
    layout = ShapingLayout("eth0")
    setup = layout.setup(P)
    assert argvs(setup) == [
        ["tc", "qdisc", "del", "dev", "eth0", "root"],
        ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", *TBF],
    ]
    assert [c.must_succeed for c in setup] == [False, True]  # a first run finds no qdisc of ours to delete
    assert argvs(layout.change(P)) == [["tc", "qdisc", "change", "dev", "eth0", "root", "handle", "1:", *TBF]]
    assert argvs(layout.teardown()) == [["tc", "qdisc", "del", "dev", "eth0", "root"]]


CLASS_RATE = ["rate", "100gbit", "ceil", "100gbit", "quantum", "60000"]
V4_MATCH = ["match", "ip", "dst", "10.0.0.2/32", "flowid", "1:10"]
V6_MATCH = ["match", "ip6", "dst", "fd00::2/128", "match", "ip6", "dport", "6379", "0xffff", "flowid", "1:10"]


def test_per_destination_layout_classifies_with_htb_and_shapes_with_a_tbf_leaf() -> None:
    dests = (parse_destination("10.0.0.2"), parse_destination("[fd00::2]:6379"))
    layout = ShapingLayout("veth0", dests, netns="edge")
    tc = ["tc", "-netns", "edge"]
    assert argvs(layout.setup(P)) == [
        [*tc, "qdisc", "del", "dev", "veth0", "root"],
        [*tc, "qdisc", "add", "dev", "veth0", "root", "handle", "1:", "htb", "default", "0"],
        [*tc, "class", "add", "dev", "veth0", "parent", "1:", "classid", "1:10", "htb", *CLASS_RATE],
        [*tc, "qdisc", "add", "dev", "veth0", "parent", "1:10", "handle", "10:", *TBF],
        [*tc, "filter", "add", "dev", "veth0", "parent", "1:", "protocol", "ip", "prio", "1", "u32", *V4_MATCH],
        [*tc, "filter", "add", "dev", "veth0", "parent", "1:", "protocol", "ipv6", "prio", "2", "u32", *V6_MATCH],
    ]
    # A rate change touches only the leaf: classes and filters stay.
    assert argvs(layout.change(P)) == [
        [*tc, "qdisc", "change", "dev", "veth0", "parent", "1:10", "handle", "10:", *TBF]
    ]
    assert argvs(layout.teardown()) == [[*tc, "qdisc", "del", "dev", "veth0", "root"]]


def test_ipv4_port_filter() -> None:
    layout = ShapingLayout("eth0", (parse_destination("10.9.8.7:6379"),))
    (flt,) = [c for c in layout.setup(P) if "filter" in c.argv]
    match = ["match", "ip", "dst", "10.9.8.7/32", "match", "ip", "dport", "6379", "0xffff"]
    assert list(flt.argv[-11:]) == [*match, "flowid", "1:10"]


@pytest.mark.parametrize(("iface", "netns"), [("", None), ("a" * 16, None), ("eth0;rm", None), ("eth0", "bad ns")])
def test_layout_refuses_names_that_are_not_names(iface: str, netns: str | None) -> None:
    with pytest.raises(ValueError):
        ShapingLayout(iface, netns=netns)


def test_destination_model_is_frozen_and_closed() -> None:
    with pytest.raises(ValidationError):
        Destination(network=ipaddress.ip_network("10.0.0.0/8"), port=1, extra=1)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------------------------------------------
# replay schedule
# ----------------------------------------------------------------------------------------------------------------
def test_update_interval_is_a_trace_step_in_real_time_but_not_too_often() -> None:
    assert update_interval(1.0, 5.0, 0.1) == 0.2
    assert update_interval(0.1, 10.0, 0.1) == 0.1  # 10 ms pieces are averaged over 100 ms
    with pytest.raises(ValueError):
        update_interval(1.0, 0.0, 0.1)


def test_schedule_of_a_step_process_yields_changes_only() -> None:
    p = StepProcess([0.0, 1.0, 2.0, 3.0], [10e6, 10e6, 30e6, 0.0], 4.0)
    steps = list(rate_schedule(p, 1.0, min_rate_bps=10e3))
    assert steps == [RateStep(0.0, 10e6), RateStep(2.0, 30e6), RateStep(3.0, 10e3)]  # the zero is the floor


def test_schedule_configures_the_mean_over_each_interval() -> None:
    p = StepProcess([0.0, 0.5, 1.0], [8e6, 16e6, 4e6], 2.0)
    steps = list(rate_schedule(p, 1.0, min_rate_bps=10e3))
    assert steps == [RateStep(0.0, 12e6), RateStep(1.0, 4e6)]


def test_schedule_rates_are_whole_bytes_per_second() -> None:
    p = StepProcess([0.0], [1_000_003.0], 1.0)
    (step,) = rate_schedule(p, 0.5, min_rate_bps=10e3)
    assert step.rate_bps == 1_000_000.0 and step.rate_bps % 8 == 0


def test_schedule_of_a_time_compressed_real_trace_follows_the_trace() -> None:
    # A packaged trace (a fresh clone has no imported uplink traces); from 20 s on it has outages (0 Mbit/s rows).
    trace = load_trace("lumos5g_vzw_mmwave5g_dl_driving_trace103")
    replay = TraceReplay(trace, speed=5.0, offset_s=20.0, loop=False)
    interval = update_interval(trace.step_s, 5.0, 0.1)
    steps = list(rate_schedule(replay, interval, min_rate_bps=10e3))
    # Each 0.2 s interval of replay time is one trace second from 20 s on; holding each listed rate until the
    # next one reproduces the trace row by row (zeros at the floor).
    assert np.any(trace.rates_bps[20:] == 0)
    expected = np.maximum(trace.rates_bps[20:], 10e3)
    starts = [round(s.t_s / interval) for s in steps]
    held = np.repeat([s.rate_bps for s in steps], np.diff([*starts, expected.size]))
    np.testing.assert_allclose(held, expected, atol=8.0)
    assert all(b.t_s > a.t_s and b.rate_bps != a.rate_bps for a, b in itertools.pairwise(steps))
    assert steps[-1].t_s < replay.duration_s


def test_schedule_of_a_looped_trace_is_endless_and_periodic() -> None:
    p = StepProcess([0.0, 1.0], [5e6, 20e6], 2.0, loop=True)
    gen = rate_schedule(p, 1.0, min_rate_bps=10e3)
    first = [next(gen) for _ in range(6)]
    assert [s.rate_bps for s in first] == [5e6, 20e6] * 3
    assert [s.t_s for s in first] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_schedule_refuses_bad_settings() -> None:
    p = StepProcess([0.0], [1e6], 1.0)
    with pytest.raises(ValueError):
        next(rate_schedule(p, 0.0, min_rate_bps=10e3))
    with pytest.raises(ValueError):
        next(rate_schedule(p, 0.1, min_rate_bps=0.0))


# ----------------------------------------------------------------------------------------------------------------
# relay window
# ----------------------------------------------------------------------------------------------------------------
def test_relay_window_is_the_bandwidth_delay_product_plus_two_chunks() -> None:
    assert relay_window_bytes(50e6, 0.04, 16384) == 250_000 + 2 * 16384
    assert relay_window_bytes(50e6, 0.0, 16384) == 2 * 16384  # no delay: just the chunks in hand
    # The window never throttles the link: window / delay >= rate.
    for rate, delay in ((10e6, 0.01), (100e6, 0.1), (1e9, 0.005)):
        assert relay_window_bytes(rate, delay, 16384) * 8 / delay >= rate
    with pytest.raises(ValueError):
        relay_window_bytes(0.0, 0.04, 16384)
    with pytest.raises(ValueError):
        relay_window_bytes(1e6, -1.0, 16384)
