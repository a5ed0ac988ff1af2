"""Measured cellular throughput traces: parse, describe, and replay as a `BandwidthProcess`.

Where they come from (`scout.dataroot`): the data directory's ``traces/`` (``scout data import``, ``$SCOUT_DATA``,
``--data-dir``) first, then the traces packaged with Scout (the two CC BY 4.0 Lumos5G downlink traces; the
measured uplink traces carry no redistribution license and are imported by the user).

Why: the study simulated its adaptive policy on a synthetic Markov chain and named "real wireless channels"
as an open question. These are measured 4G/5G uplink and downlink traces, so a policy can be judged on the
bandwidth a phone actually saw.

File format, exactly as ``traces/README.md`` documents it (and nothing looser, so a malformed file fails
loudly instead of replaying something else):

* header ``t_s,mbps``; then one row per step: ``t_s`` seconds from the start, ``mbps`` in Mbit/s with
  1 Mbit = 10^6 bit (decimal, not 2^20). Scout works in bit/s, so every rate is multiplied by 10^6 here.
* a row's rate holds from its ``t_s`` until the next row; the grid is uniform (0.1 s or 1 s), so the last
  row lasts one step and the duration is rows x step.
* statistics are over rows (time-weighted because the grid is uniform); percentiles interpolate linearly,
  as numpy's default does, so they reproduce the README's table.

The README's summary table also says what each file is (uplink or downlink, technology, scenario); that is
read from it, with the direction and generation falling back to the file name's tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout.channel.process import StepProcess
from scout.dataroot import DataNotFound, DataSource, file_source, trace_folders

__all__ = [
    "Trace",
    "TraceInfo",
    "TraceReplay",
    "TraceReplayConfig",
    "list_traces",
    "load_trace",
    "replay",
    "trace_source",
    "traces_dir",
]

HEADER = "t_s,mbps"
BITS_PER_MBIT = 1e6
"""The README's unit: 1 Mbit = 10^6 bit."""
_GRID_TOL = 1e-6

Direction = Literal["uplink", "downlink", "unknown"]


def traces_dir(data_dir: Path | str | None = None) -> Path:
    """The first trace folder searched: the data directory's ``traces/`` if it has one, else the packaged traces."""
    return trace_folders(data_dir)[0][0]


class TraceInfo(BaseModel):
    """What a trace is and its statistics (rates in Mbit/s, the file's unit, for people reading tables)."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    direction: Direction
    generation: str = Field(description="3G, LTE or 5G, from the file name")
    link: str = Field(default="", description="the README's link column without its UL/DL marker")
    scenario: str = ""
    rows: int
    step_s: float
    duration_s: float
    mean_mbps: float
    median_mbps: float
    p10_mbps: float
    p90_mbps: float
    min_mbps: float
    max_mbps: float
    zero_fraction: float
    readme_stats: dict[str, float] = Field(default_factory=dict, description="the README table's numbers, if any")


@dataclass(frozen=True)
class Trace:
    """A parsed trace: a uniform grid of ``step_s`` seconds, one rate (bit/s) per step."""

    info: TraceInfo
    rates_bps: np.ndarray

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def step_s(self) -> float:
        return self.info.step_s

    @property
    def duration_s(self) -> float:
        return self.info.duration_s


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------
def _parse_csv(path: Path) -> tuple[float, np.ndarray]:
    """(step in s, rates in Mbit/s) of one ``t_s,mbps`` file; ValueError naming the file and line otherwise."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != HEADER:
        raise ValueError(f"{path.name}: first line must be {HEADER!r}, got {lines[0]!r}" if lines else "empty file")
    times: list[float] = []
    rates: list[float] = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split(",")
        if len(parts) != 2:
            raise ValueError(f"{path.name}:{lineno}: expected 2 fields, got {line!r}")
        try:
            t, r = float(parts[0]), float(parts[1])
        except ValueError as exc:
            raise ValueError(f"{path.name}:{lineno}: not a number in {line!r}") from exc
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            raise ValueError(f"{path.name}:{lineno}: rate must be finite and >= 0, time finite: {line!r}")
        times.append(t)
        rates.append(r)
    if len(times) < 2:
        raise ValueError(f"{path.name}: need at least 2 rows to know the step, got {len(times)}")
    t_arr = np.asarray(times)
    step = float(t_arr[1] - t_arr[0])
    if t_arr[0] != 0.0 or not step > 0:
        raise ValueError(f"{path.name}: the grid must start at 0 with a positive step")
    expected = np.arange(t_arr.size) * step
    bad = np.flatnonzero(np.abs(t_arr - expected) > _GRID_TOL * np.maximum(1.0, expected))
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"{path.name}:{row + 2}: t_s={t_arr[row]} is off the uniform {step} s grid")
    return step, np.asarray(rates, dtype=np.float64)


_ROW_RE = re.compile(r"^\|\s*`(?P<file>[^`]+\.csv)`\s*\|(?P<rest>.*)\|\s*$")
_STAT_COLS = ("step", "duration", "mean", "median", "p10", "p90")


def _readme_table(folder: Path) -> dict[str, dict[str, str]]:
    """The README summary table, keyed by file name: link, scenario and the numeric columns as text."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    out: dict[str, dict[str, str]] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        m = _ROW_RE.match(line.strip())
        if not m:
            continue
        cells = [c.strip() for c in m.group("rest").split("|")]
        if len(cells) != 2 + len(_STAT_COLS):
            continue
        out[m.group("file")] = dict(zip(("link", "scenario", *_STAT_COLS), cells, strict=True))
    return out


def _number(text: str) -> float | None:
    m = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)", text)
    return float(m.group(1)) if m else None


def _direction(name: str, link: str) -> Direction:
    if re.match(r"^\**UL\b", link):
        return "uplink"
    if re.match(r"^\**DL\b", link):
        return "downlink"
    tokens = set(name.lower().split("_"))
    if tokens & {"ul", "up"}:
        return "uplink"
    if tokens & {"dl", "down"}:
        return "downlink"
    return "unknown"


def _generation(name: str) -> str:
    low = name.lower()
    if any(tag in low for tag in ("3g", "umts", "hsdpa")):
        return "3G"
    if "5g" in low:
        return "5G"
    if "lte" in low or "4g" in low:
        return "LTE"
    return "unknown"


def _info(path: Path, step: float, mbps: np.ndarray, meta: dict[str, str] | None) -> TraceInfo:
    meta = meta or {}
    link_raw = meta.get("link", "")
    link = re.sub(r"^\**(UL|DL)\**\s*", "", link_raw)
    q10, q50, q90 = np.quantile(mbps, [0.1, 0.5, 0.9])
    readme_stats = {k: v for k in _STAT_COLS if (v := _number(meta.get(k, ""))) is not None}
    return TraceInfo(
        name=path.stem,
        path=str(path),
        direction=_direction(path.stem, link_raw),
        generation=_generation(path.stem),
        link=link,
        scenario=meta.get("scenario", ""),
        rows=int(mbps.size),
        step_s=step,
        duration_s=round(mbps.size * step, 9),
        mean_mbps=float(mbps.mean()),
        median_mbps=float(q50),
        p10_mbps=float(q10),
        p90_mbps=float(q90),
        min_mbps=float(mbps.min()),
        max_mbps=float(mbps.max()),
        zero_fraction=float(np.mean(mbps == 0.0)),
        readme_stats=readme_stats,
    )


def _find(name: str | Path, folder: Path | None, data_dir: Path | str | None) -> tuple[Path, str]:
    """(file, source) of a trace named by path, file name or stem: ``folder`` alone when given, else the data
    directory's traces then the packaged ones."""
    path = Path(name)
    if path.suffix == ".csv" and path.is_file():
        return path, f"file:{path.parent}"
    folders = [(folder, f"file:{folder}")] if folder is not None else trace_folders(data_dir)
    # Names may contain dots (raca5g_..._14.23.32), so only a literal ".csv" suffix is stripped.
    stem = path.name.removesuffix(".csv")
    for where, source in folders:
        candidate = where / f"{stem}.csv"
        if candidate.is_file():
            return candidate, source
    known = ", ".join(sorted({p.stem for where, _ in folders for p in where.glob("*.csv")}))
    searched = [str(where) for where, _ in folders]
    if folder is not None:
        raise FileNotFoundError(f"no trace {str(name)!r} in {folder}; known: {known}")
    raise DataNotFound(f"trace {str(name)!r} (known here: {known or 'none'})", searched)


def trace_source(name: str | Path, folder: Path | None = None, data_dir: Path | str | None = None) -> DataSource:
    """Where a trace is read from (``data-dir:<path>``, ``packaged-sample``, or ``file:<folder>``) and its
    SHA-256."""
    path, source = _find(name, folder, data_dir)
    return file_source(path, source)


def load_trace(name: str | Path, folder: Path | None = None, data_dir: Path | str | None = None) -> Trace:
    """Load one trace by file stem (``umn_tmo_sa5g_ul_walking_run20070``), file name, or path."""
    path, _ = _find(name, folder, data_dir)
    step, mbps = _parse_csv(path)
    info = _info(path, step, mbps, _readme_table(path.parent).get(path.name))
    return Trace(info=info, rates_bps=mbps * BITS_PER_MBIT)


def list_traces(
    folder: Path | None = None, direction: Direction | None = None, data_dir: Path | str | None = None
) -> list[TraceInfo]:
    """Every ``*.csv`` trace in ``folder``, or by default in the data directory's traces and the packaged ones
    (a name in the data directory hides a packaged file of the same name), sorted by direction then name."""
    folders = [folder] if folder is not None else [where for where, _ in trace_folders(data_dir)]
    out: dict[str, TraceInfo] = {}
    for where in folders:
        table = _readme_table(where)
        for path in sorted(where.glob("*.csv")):
            if path.stem in out:
                continue
            step, mbps = _parse_csv(path)
            info = _info(path, step, mbps, table.get(path.name))
            out[path.stem] = info
    order = {"uplink": 0, "downlink": 1, "unknown": 2}
    keep = [i for i in out.values() if direction is None or i.direction == direction]
    return sorted(keep, key=lambda i: (order[i.direction], i.name))


def check_trace_file(path: Path) -> str | None:
    """What is wrong with a trace file (header ``t_s,mbps``, times from 0 on a uniform, increasing grid, finite
    non-negative rates), or None; for ``scout data import``."""
    try:
        _parse_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------------------------
# replay
# ----------------------------------------------------------------------------------------------------------------
class TraceReplayConfig(BaseModel):
    """How to replay a trace: which one, how fast, from where, looped or not (what a shaper sidecar receives).

    ``speed`` = 2 plays the trace twice as fast (process time t reads trace time ``offset_s + speed * t``);
    ``offset_s`` is in trace seconds; a looped replay wraps around (period = duration / speed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    trace: str
    speed: float = Field(default=1.0, gt=0)
    offset_s: float = Field(default=0.0, ge=0)
    loop: bool = True


class TraceReplay(StepProcess):
    """A trace as a `BandwidthProcess` (bit/s), shifted by ``offset_s``, scaled by ``speed``, maybe looped."""

    def __init__(self, trace: Trace, *, speed: float = 1.0, offset_s: float = 0.0, loop: bool = True) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be positive and finite, got {speed}")
        if not (offset_s >= 0 and math.isfinite(offset_s)):
            raise ValueError(f"offset_s must be finite and >= 0, got {offset_s}")
        n = trace.rates_bps.size
        step = trace.step_s
        period = n * step
        if loop:
            offset_s = math.fmod(offset_s, period)
        elif offset_s >= period:
            raise ValueError(f"offset_s {offset_s} is past the end of {trace.name} ({period} s) and loop is off")
        starts = np.arange(n, dtype=np.float64) * step
        i = min(int(np.searchsorted(starts, offset_s, side="right")) - 1, n - 1)
        head_starts = np.concatenate(([offset_s], starts[i + 1 :]))
        head_rates = trace.rates_bps[i:]
        if loop and offset_s > 0:
            # The pattern continues from the start of the trace up to the offset, then repeats.
            tail_starts = starts[: i + 1] + period
            tail_rates = trace.rates_bps[: i + 1]
            if offset_s == starts[i]:  # the offset sits on a row boundary: no partial piece i at the end
                tail_starts, tail_rates = tail_starts[:-1], tail_rates[:-1]
            all_starts = np.concatenate((head_starts, tail_starts))
            all_rates = np.concatenate((head_rates, tail_rates))
            end = period + offset_s
        else:
            all_starts, all_rates, end = head_starts, head_rates, period
        super().__init__((all_starts - offset_s) / speed, all_rates, (end - offset_s) / speed, loop=loop)
        self.trace = trace
        self.speed = float(speed)
        self.offset_s = float(offset_s)


def replay(config: TraceReplayConfig, folder: Path | None = None) -> TraceReplay:
    """Build the replay process a `TraceReplayConfig` describes."""
    return TraceReplay(load_trace(config.trace, folder), speed=config.speed, offset_s=config.offset_s, loop=config.loop)
