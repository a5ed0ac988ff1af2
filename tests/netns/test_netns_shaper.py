"""The shaper sidecar as a process, on a real veth: link state on a real NATS and the Prometheus gauge as the rate
changes, per-destination shaping, the delay relay, the start-up refusal without NET_ADMIN, and clean-up (SIGTERM,
SIGKILL then restart, and the namespace fixture itself when a test fails).

No assertion reads a measured rate or an upper bound on a time (the machine's load moves both): shaping is
checked by tc's configuration and counters and by bounds that load cannot break (see `checks`)."""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from checks import applied_rates, assert_tbf_configured, assert_throttled, assert_within_bucket
from pydantic import SecretStr

from scout.channel.shaping import SHAPED_CLASS, tbf_params
from scout_runtime.bus import Msg, NatsBus
from scout_runtime.messages import LinkState, parse
from scout_runtime.settings import Settings
from scout_runtime.subjects import Subjects
from scout_services.shaper.handlers import kernel_hz
from scout_testbed.netlab import (
    CLOUD_IP,
    CLOUD_IP2,
    PORT,
    Arrivals,
    Link,
    Proc,
    U32Filter,
    alive,
    clean_env,
    fetch,
    gauge,
    namespaces,
    netns_link,
    run,
)


def sink_result(server: Proc) -> dict[str, Any]:
    """The next sink measurement of the traffic server (echo connections in between are skipped)."""
    while True:
        result = server.next_json(60)
        if result.get("kind") == "sink":
            return result


# ----------------------------------------------------------------------------------------------------------------
# link state and the gauge
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def trace_url(tmp_path: Path) -> Iterator[str]:
    """A small ``t_s,mbps`` trace served over HTTP on 127.0.0.1 (the shaper's --trace URL path)."""
    rows = [20, 20, 40, 10, 30, 50]
    (tmp_path / "steps.csv").write_text("t_s,mbps\n" + "".join(f"{i}.0,{r}\n" for i, r in enumerate(rows)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/steps.csv"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_link_state_and_gauge_report_the_configured_rate_as_it_changes(
    link: Link, nats_url: str, trace_url: str
) -> None:
    """A trace of 20, 20, 40, 10, 30, 50 Mbit/s (1 s rows) replayed at 2x from a URL: every rate the shaper
    configures appears, in order, as `LinkState` on ``<ns>.scout.v1.link.<device>`` of a real NATS, and the
    gauge, the kernel's tbf and the heartbeats agree with the last one.

    Heartbeats come every 2 s while the rate changes every 0.5 s, so seeing each of the five changes on the bus
    shows they are published as they are applied (a heartbeat-only publisher would show at most two of them)."""
    namespace = "t" + uuid.uuid4().hex[:12]
    device = "dev-" + uuid.uuid4().hex[:8]
    subject = Subjects(namespace).link(device)
    expected = [20e6, 40e6, 10e6, 30e6, 50e6]
    received: list[tuple[str, LinkState]] = []

    async def scenario() -> tuple[Proc, str, str]:
        bus = await NatsBus.connect(Settings(nats_url=SecretStr(nats_url)), name="netns-link-state")

        async def on(msg: Msg) -> None:
            received.append((msg.subject, parse(LinkState, msg.data)))

        try:
            await bus.subscribe(Subjects(namespace).link_all, on)
            shaper = await asyncio.to_thread(
                link.shaper,
                *("--trace", trace_url, "--speed", "2x", "--no-loop", "--nats", nats_url),
                *("--device-id", device, "--publish-interval", "2"),
                env={"SCOUT_NAMESPACE": namespace},
            )
            await asyncio.to_thread(shaper.next_json, 60, "trace_end")
            deadline = time.monotonic() + 60
            while sum(st.rate_bps == 50e6 for _, st in received) < 2:  # the change, then a heartbeat of it
                assert time.monotonic() < deadline, f"no heartbeat of the held rate: {received}"
                await asyncio.sleep(0.1)
            port = shaper.events("ready")[0]["ports"]["metrics"]
            metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
            ready = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/readyz")
            assert (await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/healthz"))[0] == 200
            assert metrics[0] == 200 and ready[0] == 200, ready
            return shaper, metrics[1], ready[1]
        finally:
            await bus.close()

    shaper, metrics, ready = asyncio.run(scenario())
    assert link.tbf_rate_bps() == pytest.approx(50e6)
    assert gauge(metrics, "scout_shaper_rate_bps") == 50e6
    assert json.loads(ready)["checks"] == {"shaping": True, "bus": True}

    events = shaper.events("rate")
    assert [e["rate_bps"] for e in events] == expected
    assert all(s == subject for s, _ in received), "published on another subject"
    states = [state for _, state in received]
    assert all(st.device_id == device and st.source == "shaper" for st in states)
    changes = [st.rate_bps for i, st in enumerate(states) if i == 0 or st.rate_bps != states[i - 1].rate_bps]
    assert changes == expected, f"published {[st.rate_bps for st in states]}"
    # Each change is announced after tc applied it: its first message is stamped no earlier than the rate event.
    first = {st.rate_bps: st.at for st in reversed(states)}
    assert all(first[e["rate_bps"]] >= e["at"] for e in events)

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]


# ----------------------------------------------------------------------------------------------------------------
# per-destination shaping
# ----------------------------------------------------------------------------------------------------------------
def test_only_uplink_traffic_to_the_cloud_store_is_shaped(link: Link) -> None:
    """With --dst, a u32 filter sends traffic to the store's address and port to the shaped class, whose tbf leaf
    counts every byte of a flow to the store and throttles it; a flow to another address of the same peer leaves
    through htb's unshaped direct queue and adds (almost) nothing to the shaped leaf. Counted by tc, so the
    machine's load cannot change the outcome. SIGTERM removes the htb, its class, filter and tbf leaf."""
    server = link.serve()
    shaper = link.shaper("--rate", "10mbit", "--dst", f"{CLOUD_IP}:{PORT}")
    assert link.qdisc_kinds() == ["htb", "tbf"]
    params = tbf_params(10e6, hz=kernel_hz())
    leaf = link.qdisc("tbf")
    assert leaf.parent == SHAPED_CLASS and leaf.handle == "10:"
    assert_tbf_configured(leaf, params)
    assert link.qdisc("htb").options["default"] == "0"  # unclassified traffic: the direct queue, never shaped
    # 10.77.0.2 at IP offset 16; the port in the low half of the ports word at offset 20 (no IP options)
    keys = ((16, "a4d0002", "ffffffff"), (20, f"{PORT:x}", "ffff"))
    assert link.u32_filters() == [U32Filter(flowid=SHAPED_CLASS, keys=keys)]

    to_store = link.client("send", "--host", CLOUD_IP, "--port", str(PORT), "--seconds", "2")
    store_arrivals = Arrivals.of(sink_result(server))
    after_store = {q.kind: q for q in link.qdiscs()}
    assert to_store["received"] == to_store["sent"] > 0
    assert_throttled(None, after_store["tbf"], to_store["received"])
    (event,) = shaper.events("rate")
    assert_within_bucket(store_arrivals, applied_rates([event]), params.burst_bytes, since=to_store["t_first"])

    elsewhere = link.client("send", "--host", CLOUD_IP2, "--port", str(PORT), "--seconds", "0.5")
    sink_result(server)
    after_other = {q.kind: q for q in link.qdiscs()}
    assert elsewhere["received"] == elsewhere["sent"] > 0
    shaped = after_other["tbf"].bytes - after_store["tbf"].bytes
    unshaped = (after_other["htb"].bytes - after_other["tbf"].bytes) - (
        after_store["htb"].bytes - after_store["tbf"].bytes
    )
    direct = after_other["htb"].options["direct_packets_stat"] - after_store["htb"].options["direct_packets_stat"]
    print(f"\nto the store: {after_store['tbf'].bytes} B through the 10 Mbit/s leaf; elsewhere: {unshaped} B direct")
    assert unshaped >= elsewhere["received"] and direct > 0, "traffic to another destination missed the direct queue"
    assert shaped < 10_000, (
        f"{shaped} B of traffic elsewhere went through the shaped class (only the first flow's close may)"
    )

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]
    assert run(["tc", "-n", link.edge, "filter", "show", "dev", link.edge_if]).stdout.strip() == ""


# ----------------------------------------------------------------------------------------------------------------
# the delay relay
# ----------------------------------------------------------------------------------------------------------------
DELAY_MS = 40.0
RELAY_RATE = 50e6


def test_relay_adds_the_one_way_delay_and_its_traffic_crosses_the_shaped_link(link: Link) -> None:
    """The shaper runs inside the edge namespace (as in a pod) with a 40 ms relay to the store.

    What load cannot change: a round trip through the relay never takes less than the delay; a 2 MB upload
    through it arrives whole, never faster than delay + (bytes - one bucket) / rate, and every byte of it passes
    the tbf; bulk traffic through the relay is throttled by the tbf (not merely delayed) and never arrives ahead
    of the bucket. How close to the rate the relay's window lets a flow get is a measurement (the window's
    arithmetic is checked in tests/unit/test_shaping.py); the medians are printed for information.
    """
    server = link.serve()
    shaper = link.shaper(
        *("--rate", "50mbit", "--delay-ms", f"{DELAY_MS:g}", "--relay-target", f"{CLOUD_IP}:{PORT}"), inside=True
    )
    relay = str(shaper.events("ready")[0]["ports"]["relay"])
    params = tbf_params(RELAY_RATE, hz=kernel_hz())
    assert_tbf_configured(link.qdisc("tbf"), params)

    direct = link.client("ping", "--host", CLOUD_IP, "--port", str(PORT), "--count", "10")["rtts_ms"]
    relayed = link.client("ping", "--host", "127.0.0.1", "--port", relay, "--count", "10")["rtts_ms"]
    print(f"\nround trip: direct {statistics.median(direct):.2f} ms, relayed {statistics.median(relayed):.2f} ms")
    assert min(relayed) >= DELAY_MS

    nbytes = 2_000_000
    before = link.qdisc("tbf")
    put = link.client("send", "--host", "127.0.0.1", "--port", relay, "--bytes", str(nbytes))
    assert put["received"] == nbytes
    assert link.qdisc("tbf").bytes - before.bytes >= nbytes
    floor = DELAY_MS / 1000 + (nbytes - params.burst_bytes) * 8 / RELAY_RATE
    print(f"2 MB upload: {put['elapsed_s'] * 1000:.0f} ms; never less than {floor * 1000:.0f} ms")
    assert put["elapsed_s"] >= floor

    before = link.qdisc("tbf")
    bulk = link.client("send", "--host", "127.0.0.1", "--port", relay, "--seconds", "2")
    sink_result(server)  # the 2 MB upload
    arrivals = Arrivals.of(sink_result(server))
    assert bulk["received"] == bulk["sent"] == arrivals.cum[-1]
    assert_throttled(before, link.qdisc("tbf"), bulk["received"])
    (event,) = shaper.events("rate")
    assert_within_bucket(arrivals, applied_rates([event]), params.burst_bytes, since=bulk["t_first"])
    print(f"bulk through the relay: {arrivals.steady_goodput_bps() / 1e6:.2f} Mbit/s of {RELAY_RATE / 1e6:g}")

    assert shaper.terminate() == 0, shaper.tail()
    assert link.qdisc_kinds() == ["noqueue"]


# ----------------------------------------------------------------------------------------------------------------
# privileges
# ----------------------------------------------------------------------------------------------------------------
WITHOUT_NET_ADMIN = {
    "unprivileged-user": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    "root-without-net-admin": ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"],
}


@pytest.mark.parametrize("how", sorted(WITHOUT_NET_ADMIN))
def test_without_net_admin_it_fails_at_start_with_one_clear_line(link: Link, how: str) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cli = [sys.executable, "-m", "scout_cli.main", "shape", "--iface", link.edge_if, "--rate", "10mbit"]
    proc = link.procs.start(link.in_ns(link.edge, [*WITHOUT_NET_ADMIN[how], *cli, "--metrics-port", "0"]))
    assert proc.wait(60) == 2
    lines = [line for line in proc.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert "NET_ADMIN" in lines[0] and link.edge_if in lines[0] and "Traceback" not in lines[0]
    assert proc.stdout == []  # never became ready
    assert link.qdisc_kinds() == ["noqueue"]


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iface", "x"], "give exactly one of a rate (e.g. 50mbit) and a trace"),
        (["--iface", "x", "--rate", "1mbit", "--trace", "t"], "give exactly one of a rate"),
        (["--iface", "x", "--rate", "50mbps"], "tc reads 'mbps' as bytes per second"),
        (["--iface", "x", "--rate", "1mbit", "--delay-ms", "5"], "a delay needs the relay"),
        (["--iface", "x", "--rate", "1mbit", "--speed", "0x"], "must be positive"),
        (["--iface", "x", "--rate", "1mbit", "--device-id", "a.b"], "device_id must be"),
        (["--iface", "x", "--rate", "1mbit", "--relay-target", "h:1", "--netns", "n"], "run the shaper there"),
    ],
)
def test_scout_shape_refuses_bad_settings_in_one_line(argv: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from scout_cli.main import app

    result = CliRunner().invoke(app, ["shape", *argv])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_destinations_by_name_are_resolved_to_addresses() -> None:
    from scout_services.shaper.handlers import ShaperError, resolve_destinations

    resolved = resolve_destinations(["localhost:6379", "10.0.0.0/8", "10.0.0.0/8"])
    assert [str(d) for d in resolved if d.version == 4] == ["127.0.0.1/32:6379", "10.0.0.0/8"]
    with pytest.raises(ShaperError, match="cannot resolve"):
        resolve_destinations(["no-such-host.invalid:6379"])


# ----------------------------------------------------------------------------------------------------------------
# clean-up
# ----------------------------------------------------------------------------------------------------------------
def test_a_killed_shaper_leaves_its_qdisc_and_the_next_one_replaces_it(link: Link) -> None:
    """SIGKILL cannot be handled; the next start (here the service entry point, settings from SCOUT_SHAPER_*)
    takes the interface over, and its SIGTERM leaves it clean."""
    first = link.shaper("--rate", "20mbit", "--dst", CLOUD_IP)
    first.popen.kill()
    first.wait()
    assert link.qdisc_kinds() == ["htb", "tbf"]

    env = {"SCOUT_SHAPER_IFACE": link.edge_if, "SCOUT_SHAPER_NETNS": link.edge, "SCOUT_SHAPER_RATE": "30mbit"}
    env |= {"SCOUT_SHAPER_PUBLISH": "false", "SCOUT_METRICS_PORT": "0"}
    second = link.procs.start(
        [sys.executable, "-c", "from scout_services.shaper.main import main; main()"], env={**clean_env(), **env}
    )
    second.next_json(60, event="ready")
    assert link.qdisc_kinds() == ["tbf"]
    assert link.tbf_rate_bps() == pytest.approx(30e6)
    assert second.terminate() == 0, second.tail()
    assert link.qdisc_kinds() == ["noqueue"]


def test_the_link_fixture_removes_everything_even_when_the_test_fails() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="the test failed"), netns_link() as made:
        sleeper = made.procs.start(made.in_ns(made.edge, ["sleep", "600"]))
        shaper = made.shaper("--rate", "10mbit")
        pids = [sleeper.pid, shaper.pid]
        assert {made.edge, made.cloud} <= set(namespaces())
        raise RuntimeError("the test failed")
    assert pids and not any(alive(pid) for pid in pids)
    assert made.edge not in namespaces() and made.cloud not in namespaces()
    links = run(["ip", "-o", "link", "show"]).stdout
    assert made.edge_if not in links and made.cloud_if not in links
