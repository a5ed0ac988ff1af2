"""`scout bench shaping`: the goodput real tc shaping delivers, measured where the tests may not measure it.

The netns tests check shaping by what load cannot change (tc's configuration and counters, the order of applied
rates, token-bucket bounds); the rates themselves are measured here, N times, and reported as medians beside the
configured rate and beside the header-overhead bound `expected_goodput_fraction` (bulk TCP through tbf delivers at
most 1448 of every 1514 bytes as payload: 95.6 % of the rate). Three scenarios, each on a fresh namespace pair
(`scout_testbed.netlab`, the tests' own lab):

* fixed: a bulk flow through ``scout shape --rate R`` for each rate;
* split: ``--dst`` shaping; one flow to the shaped destination, one to another address of the same peer;
* trace: a time-compressed replay of a (scaled) packaged trace; per replay interval the configured rate against
  the goodput received, summarised by the ratio of means, the correlation and the mean absolute error.

Numbers depend on the machine and its load (the JSON records both): compare rows of one run, not runs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scout.channel.shaping import expected_goodput_fraction
from scout.channel.traces import load_trace
from scout_eval.markdown import markdown_table
from scout_services.shaper.handlers import kernel_hz
from scout_testbed.netlab import (
    CLOUD_IP,
    CLOUD_IP2,
    PORT,
    Arrivals,
    Link,
    Proc,
    netns_link,
    netns_unavailable,
    scaled_trace,
)

WARMUP_S = 1.0
"""Excluded from each flow's goodput: slow start, the initial bucket and the sink catching up (at 10 Mbit/s the
window from 0.5 to 1 s still read 3 % above the steady rate here)."""


class ShapingBenchError(Exception):
    """The benchmark cannot run here (no root, no namespaces, bad settings); the message says why."""


@dataclass
class ShapingBenchConfig:
    rates_mbit: Sequence[float] = (10.0, 50.0, 100.0)
    repeats: int = 3
    seconds: float = 3.0
    split_rate_mbit: float = 10.0
    trace: str = "lumos5g_vzw_mmwave5g_dl_driving_trace103"
    trace_scale: float = 0.1
    """Rates times this (the packaged traces are mmWave downlinks; 0.1 gives an uplink's tens of Mbit/s)."""
    speed: float = 5.0
    out: Path = field(default=Path("reports/bench_shaping"))

    def check(self) -> None:
        """Refuse settings that cannot give a measurement, and a machine without namespaces, before any work."""
        if not self.rates_mbit or any(not (math.isfinite(r) and r > 0) for r in self.rates_mbit):
            raise ShapingBenchError(f"rates must be positive Mbit/s, got {list(self.rates_mbit)}")
        if self.repeats < 1:
            raise ShapingBenchError(f"repeats must be >= 1, got {self.repeats}")
        if not self.seconds > 2 * WARMUP_S:
            raise ShapingBenchError(f"seconds must exceed {2 * WARMUP_S:g} (the first {WARMUP_S:g} s are warm-up)")
        if not (self.trace_scale > 0 and self.speed > 0 and self.split_rate_mbit > 0):
            raise ShapingBenchError("trace scale, speed and split rate must be positive")
        try:
            load_trace(self.trace)
        except (OSError, ValueError) as e:
            raise ShapingBenchError(f"trace {self.trace!r}: {e}") from None
        reason = netns_unavailable()
        if reason is not None:
            raise ShapingBenchError(f"real shaping needs network namespaces, as tests/netns do: {reason}")


# ----------------------------------------------------------------------------------------------------------------
# one measurement each
# ----------------------------------------------------------------------------------------------------------------
def _flow(link: Link, server: Proc, host: str, seconds: float) -> Arrivals:
    """A bulk flow of ``seconds`` to ``host``; its sink's arrival curve."""
    link.client("send", "--host", host, "--port", str(PORT), "--seconds", f"{seconds:g}")
    while True:
        result = server.next_json(60)
        if result.get("kind") == "sink":
            return Arrivals.of(result)


def measure_fixed(rate_mbit: float, seconds: float) -> dict[str, Any]:
    with netns_link() as link:
        server = link.serve()
        shaper = link.shaper("--rate", f"{rate_mbit:g}mbit")
        arrivals = _flow(link, server, CLOUD_IP, seconds)
        tbf = link.qdisc("tbf")
        shaper.terminate()
    return {
        "scenario": "fixed",
        "rate_bps": rate_mbit * 1e6,
        "goodput_bps": arrivals.steady_goodput_bps(WARMUP_S),
        "bytes": int(arrivals.cum[-1]),
        "wire_bytes": tbf.bytes,
        "payload_fraction": int(arrivals.cum[-1]) / tbf.bytes,
        "overlimits": tbf.overlimits,
        "drops": tbf.drops,
    }


def measure_split(rate_mbit: float, seconds: float) -> list[dict[str, Any]]:
    with netns_link() as link:
        server = link.serve()
        shaper = link.shaper("--rate", f"{rate_mbit:g}mbit", "--dst", f"{CLOUD_IP}:{PORT}")
        shaped = _flow(link, server, CLOUD_IP, seconds)
        other = _flow(link, server, CLOUD_IP2, seconds)
        counters = {q.kind: q for q in link.qdiscs()}
        shaper.terminate()
    unshaped_bytes = counters["htb"].bytes - counters["tbf"].bytes
    base = {"scenario": "split", "rate_bps": rate_mbit * 1e6}
    return [
        {**base, "path": "to the store (shaped)", "goodput_bps": shaped.steady_goodput_bps(WARMUP_S)}
        | {"tc_bytes": counters["tbf"].bytes, "overlimits": counters["tbf"].overlimits},
        {**base, "path": "elsewhere (unshaped)", "goodput_bps": other.steady_goodput_bps(WARMUP_S)}
        | {"tc_bytes": unshaped_bytes, "overlimits": 0},
    ]


def measure_trace(cfg: ShapingBenchConfig, workdir: Path) -> dict[str, Any]:
    """Per replay interval: the rate the shaper configured and the goodput received in that interval."""
    path = scaled_trace(cfg.trace, cfg.trace_scale, workdir / f"{cfg.trace}_x{cfg.trace_scale:g}.csv")
    interval = max(load_trace(path).step_s / cfg.speed, 0.1)
    with netns_link() as link:
        server = link.serve()
        shaper = link.shaper("--trace", str(path), "--speed", f"{cfg.speed:g}x", "--no-loop", "--publish-interval", "0")
        # Twice the flow length of the other scenarios: a replay needs several intervals to compare.
        link.client("send", "--host", CLOUD_IP, "--port", str(PORT), "--seconds", f"{2 * cfg.seconds:g}", "--abort")
        arrivals = Arrivals.of(server.next_json(60))
        events = shaper.events("rate")
        shaper.terminate()
    # Replay time 0 in wall-clock time: each step is applied at its schedule time plus a few ms of tc.
    origin = float(np.median([e["at"] - e["t_s"] for e in events[1:]] or [events[0]["at"]]))
    t_steps = np.asarray([e["t_s"] for e in events])
    rates = np.asarray([e["rate_bps"] for e in events])
    first = math.ceil((float(arrivals.t[0]) + WARMUP_S - origin) / interval)
    last = math.floor((float(arrivals.t[-1]) - origin) / interval) - 1
    ks = np.arange(first, max(first, last) + 1)
    starts = origin + ks * interval
    configured = rates[np.clip(np.searchsorted(t_steps, ks * interval + 1e-9, side="right") - 1, 0, None)]
    measured = (arrivals.bytes_by(starts + interval) - arrivals.bytes_by(starts)) * 8 / interval
    enough = ks.size >= 3 and float(np.std(configured)) > 0 and float(np.std(measured)) > 0
    return {
        "scenario": "trace",
        "rate_bps": float(np.mean(configured)) if ks.size else float("nan"),
        "goodput_bps": float(np.mean(measured)) if ks.size else float("nan"),
        "correlation": float(np.corrcoef(configured, measured)[0, 1]) if enough else float("nan"),
        "mae_fraction": float(np.mean(np.abs(measured - configured)) / np.mean(configured)) if ks.size else math.nan,
        "intervals": ks.size,
        "configured_bps": configured.tolist(),
        "measured_bps": measured.tolist(),
    }


# ----------------------------------------------------------------------------------------------------------------
# the run and its report
# ----------------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers depend on: kernel, HZ, cores, load (before the run; the report adds the load after)."""
    tc = subprocess.run(["tc", "-V"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "kernel_hz": kernel_hz(),
        "iproute2": tc,
        "loadavg_start": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_shaping_bench(cfg: ShapingBenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    cfg.check()
    info = machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scout-bench-shaping-") as tmp:
        for rep in range(cfg.repeats):
            for rate in cfg.rates_mbit:
                row = measure_fixed(rate, cfg.seconds)
                rows.append({**row, "repeat": rep})
                progress(f"#{rep + 1} fixed {rate:g} Mbit/s: {row['goodput_bps'] / 1e6:.2f} Mbit/s")
            for row in measure_split(cfg.split_rate_mbit, cfg.seconds):
                rows.append({**row, "repeat": rep})
                progress(f"#{rep + 1} split, {row['path']}: {row['goodput_bps'] / 1e6:.2f} Mbit/s")
            row = measure_trace(cfg, Path(tmp))
            rows.append({**row, "repeat": rep})
            progress(f"#{rep + 1} trace: correlation {row['correlation']:.3f}, MAE {100 * row['mae_fraction']:.1f} %")
    info["loadavg_end"] = list(os.getloadavg())
    return write_shaping_report(cfg, info, rows)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
    return statistics.median(values) if values else math.nan


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per scenario (and rate, and path): medians over the repetitions and their ratios."""
    fraction = expected_goodput_fraction()
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        rate_key = r["rate_bps"] if r["scenario"] != "trace" else 0.0
        groups.setdefault((r["scenario"], rate_key, r.get("path", "")), []).append(r)
    out = []
    for (scenario, _, path), group in groups.items():
        rate, goodput = _median(group, "rate_bps"), _median(group, "goodput_bps")
        shaped = path != "elsewhere (unshaped)"
        out.append(
            {
                "scenario": scenario + (f", {path}" if path else ""),
                "rate_mbit": rate / 1e6,
                "n": len(group),
                "goodput_mbit": goodput / 1e6,
                "spread_mbit": (min(r["goodput_bps"] for r in group) / 1e6, max(r["goodput_bps"] for r in group) / 1e6),
                "ratio_to_rate": goodput / rate if shaped else math.nan,
                "ratio_to_bound": goodput / (rate * fraction) if shaped else math.nan,
                "correlation": _median(group, "correlation"),
                "mae_fraction": _median(group, "mae_fraction"),
                "payload_fraction": _median(group, "payload_fraction"),
            }
        )
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN (a metric that has no value here) as null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _cell(value: float, fmt: str) -> str:
    return "—" if not math.isfinite(value) else format(value, fmt)


def write_shaping_report(cfg: ShapingBenchConfig, info: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    lines = summary(rows)
    result = {"machine": info, "config": config, "expected_goodput_fraction": expected_goodput_fraction()}
    result |= {"summary": lines, "rows": rows}
    (cfg.out / "results.json").write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    headers = ["scenario", "configured Mbit/s", "n", "median goodput Mbit/s", "min–max", "goodput / rate"]
    headers += [f"goodput / (rate x {expected_goodput_fraction():.3f})", "payload / tc bytes", "correlation"]
    headers += ["MAE / mean rate"]
    table = [
        [
            s["scenario"],
            _cell(s["rate_mbit"], ".2f"),
            s["n"],
            _cell(s["goodput_mbit"], ".2f"),
            f"{s['spread_mbit'][0]:.2f}–{s['spread_mbit'][1]:.2f}",
            _cell(s["ratio_to_rate"], ".3f"),
            _cell(s["ratio_to_bound"], ".3f"),
            _cell(s["payload_fraction"], ".4f"),
            _cell(s["correlation"], ".3f"),
            _cell(100 * s["mae_fraction"], ".1f") + (" %" if math.isfinite(s["mae_fraction"]) else ""),
        ]
        for s in lines
    ]
    md = [
        "# Shaping benchmark",
        "",
        "Goodput of bulk TCP through real tc shaping (`scout shape` on a veth between two network namespaces):",
        f"{cfg.repeats} repetition(s) per scenario, flows of {cfg.seconds:g} s ({2 * cfg.seconds:g} s for the trace),",
        f"the first {WARMUP_S:g} s of each excluded. The bound is the header overhead: bulk TCP carries",
        f"{expected_goodput_fraction():.3f} of a full frame as payload, so goodput / bound near 1 means the shaper",
        f"delivers its rate. The trace row replays `{cfg.trace}` (rates x {cfg.trace_scale:g}) at {cfg.speed:g}x;",
        "per replay interval it compares the configured rate with the goodput received (its rate columns are means",
        "over the measured intervals). Goodput is timed at the receiving process, so a loaded machine (see the",
        'load averages below) can shift a single window either way; the medians are what to compare. "payload /',
        "tc bytes\" is load-free: the sink's bytes over the bytes the tbf counted (headers included).",
        "",
        "The netns tests assert none of these numbers; they check tc's configuration and counters instead.",
        "Regenerate: `scout bench shaping` as root (it needs network namespaces, as tests/netns do).",
        "",
        markdown_table(headers, table),
        "",
        f"Machine: {json.dumps(info)}",
    ]
    (cfg.out / "README.md").write_text("\n".join(md) + "\n")
    _plot(cfg.out / "shaping_bench.png", rows, lines)
    return result


def _plot(path: Path, rows: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    fixed = sorted((s for s in lines if s["scenario"] == "fixed"), key=lambda s: s["rate_mbit"])
    xs = np.asarray([s["rate_mbit"] for s in fixed])
    if xs.size:
        left.plot(xs, xs, "k--", lw=1, label="configured rate")
        left.plot(xs, xs * expected_goodput_fraction(), "k:", lw=1, label="header-overhead bound")
        for r in rows:
            if r["scenario"] == "fixed":
                left.plot(r["rate_bps"] / 1e6, r["goodput_bps"] / 1e6, "o", color="tab:blue", alpha=0.35, ms=4)
        left.plot(xs, [s["goodput_mbit"] for s in fixed], "o-", color="tab:blue", label="median goodput")
    left.set_xlabel("configured rate (Mbit/s)")
    left.set_ylabel("goodput (Mbit/s)")
    left.set_title("fixed rates")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    traces = [r for r in rows if r["scenario"] == "trace" and r["intervals"]]
    if traces:
        last = traces[-1]
        ks = np.arange(len(last["configured_bps"]) + 1)
        for key, label in (("configured_bps", "configured"), ("measured_bps", "goodput received")):
            values = np.asarray(last[key]) / 1e6
            right.step(ks, np.append(values, values[-1]), where="post", label=label)
    right.set_xlabel("replay interval")
    right.set_ylabel("Mbit/s")
    right.set_title("trace replay (last repetition)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
