"""Bandwidth processes: exact transfer integration, the Markov chain's statistics, and the measured traces."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from scout.channel.markov import MarkovBandwidth, MarkovConfig, stationary_distribution, study_preset
from scout.channel.process import BandwidthProcess, StepProcess
from scout.channel.traces import (
    TraceReplay,
    TraceReplayConfig,
    list_traces,
    load_trace,
    replay,
    trace_source,
    traces_dir,
)
from scout.dataroot import DATA_ENV, DataNotFound


# ----------------------------------------------------------------------------------------------------------------
# StepProcess: a hand-made piecewise trace, checked exactly
# ----------------------------------------------------------------------------------------------------------------
def hand_made(loop: bool = False) -> StepProcess:
    """8 Mbit/s on [0, 1), nothing on [1, 3), 16 Mbit/s on [3, 4)."""
    return StepProcess([0.0, 1.0, 3.0], [8e6, 0.0, 16e6], 4.0, loop=loop)


def test_step_process_is_a_bandwidth_process() -> None:
    assert isinstance(hand_made(), BandwidthProcess)


def test_rate_at_pieces_and_after_the_end() -> None:
    p = hand_made()
    assert [p.rate_at(t) for t in (0.0, 0.999, 1.0, 2.5, 3.0, 3.999)] == [8e6, 8e6, 0.0, 0.0, 16e6, 16e6]
    assert p.rate_at(4.0) == 0.0 and p.rate_at(100.0) == 0.0  # a finite, non-looping trace is over
    assert hand_made(loop=True).rate_at(4.5) == 8e6 and hand_made(loop=True).rate_at(7.5) == 16e6


def test_transfer_finish_time_exact_on_hand_made_trace() -> None:
    p = hand_made()
    # 0.5 s at 8 Mbit/s = 4 Mbit; 2 s of nothing; the remaining 8 Mbit at 16 Mbit/s take 0.5 s.
    assert p.transfer_finish_time(0.5, 1_500_000) == 3.5
    assert p.transfer_finish_time(0.0, 1_000_000) == 1.0  # exactly the first piece
    assert p.transfer_finish_time(1.5, 1_000_000) == 3.5  # starts in the gap, waits for the rate to return
    assert p.transfer_finish_time(0.0, 3_000_000) == 4.0  # every bit the trace holds
    assert p.transfer_finish_time(2.0, 0) == 2.0  # nothing to send
    assert math.isinf(p.transfer_finish_time(0.0, 3_000_001))  # one byte more than the trace delivers
    assert math.isinf(p.transfer_finish_time(4.0, 1))  # started after the end: the rate stays 0
    assert p.mean_rate(0.0, 4.0) == 6e6
    assert p.mean_rate(0.5, 3.5) == 4e6
    assert p.mean_rate(2.0, 2.0) == 0.0  # empty interval: the rate at that instant


def test_transfer_finish_time_looping() -> None:
    p = hand_made(loop=True)
    assert p.transfer_finish_time(3.5, 2_000_000) == 5.0  # 8 Mbit to the end, 8 Mbit in the next period
    # Exactly three periods' worth of bits (72 Mbit): done when the third period's last rate piece ends.
    assert p.transfer_finish_time(0.0, 9_000_000) == 12.0
    assert p.bits_until(10.0) == 2 * 24e6 + 8e6
    silent = StepProcess([0.0], [0.0], 1.0, loop=True)
    assert math.isinf(silent.transfer_finish_time(0.0, 1))
    assert silent.transfer_finish_time(0.0, 0) == 0.0


def test_transfer_finish_time_matches_the_integral_on_random_step_processes() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        widths = rng.uniform(0.05, 2.0, n)
        starts = np.concatenate(([0.0], np.cumsum(widths)[:-1]))
        rates = rng.choice([0.0, 1e6, 5e6, 50e6], n) * rng.uniform(0.5, 1.5, n)
        loop = bool(rng.integers(0, 2))
        p = StepProcess(starts, rates, float(np.sum(widths)), loop=loop)
        t0 = float(rng.uniform(0, np.sum(widths) * (2 if loop else 1)))
        nbytes = float(rng.uniform(1, 5e6))
        finish = p.transfer_finish_time(t0, nbytes)
        if math.isinf(finish):
            assert not loop or p.period_bits == 0
            assert p.bits_until(1e9 if loop else p.end_s) - p.bits_until(t0) < 8 * nbytes or p.period_bits == 0
            continue
        assert finish >= t0
        assert p.bits_until(finish) - p.bits_until(t0) == pytest.approx(8 * nbytes, rel=1e-9)
        # finish is the *first* such time: a moment earlier, fewer bits are through
        if finish > t0 + 1e-6:
            assert p.bits_until(finish - 1e-6) - p.bits_until(t0) < 8 * nbytes


def test_segments_and_samples() -> None:
    p = hand_made()
    assert p.segments(0.5, 3.5) == [(0.5, 1.0, 8e6), (1.0, 3.0, 0.0), (3.0, 3.5, 16e6)]
    assert list(p.iter_samples(1.0)) == [(0.0, 8e6), (1.0, 0.0), (2.0, 0.0), (3.0, 16e6)]
    assert list(p.iter_samples(2.0)) == [(0.0, 4e6), (2.0, 8e6)]  # means over each step, not point samples
    with pytest.raises(ValueError):
        list(hand_made(loop=True).iter_samples(1.0))  # a looping process needs t1


@pytest.mark.parametrize(
    ("starts", "rates", "end"),
    [([0.5], [1.0], 2.0), ([0.0, 0.0], [1.0, 1.0], 2.0), ([0.0], [-1.0], 1.0), ([0.0], [1.0], 0.0), ([], [], 1.0)],
)
def test_step_process_rejects_bad_pieces(starts: list[float], rates: list[float], end: float) -> None:
    with pytest.raises(ValueError):
        StepProcess(starts, rates, end)


def test_step_process_rejects_bad_queries() -> None:
    p = hand_made()
    for bad in (lambda: p.rate_at(-1.0), lambda: p.transfer_finish_time(0.0, -1), lambda: p.mean_rate(2.0, 1.0)):
        with pytest.raises(ValueError):
            bad()


# ----------------------------------------------------------------------------------------------------------------
# Markov chain
# ----------------------------------------------------------------------------------------------------------------
def test_study_preset_is_labelled_and_shaped_as_described() -> None:
    cfg = study_preset()
    assert "study" in cfg.name and "AICoMM" in cfg.source
    assert len(cfg.states_mbps) == 6 and min(cfg.states_mbps) == 5 and max(cfg.states_mbps) == 200
    assert np.allclose(cfg.matrix.sum(axis=1), 1.0)


def test_stationary_distribution_two_state_closed_form() -> None:
    p, q = 0.1, 0.3  # leave state 0 w.p. p, leave state 1 w.p. q
    pi = stationary_distribution(np.array([[1 - p, p], [q, 1 - q]]))
    assert pi == pytest.approx([q / (p + q), p / (p + q)], abs=1e-12)
    preset = study_preset()
    assert preset.stationary() @ preset.matrix == pytest.approx(preset.stationary(), abs=1e-12)


def test_markov_empirical_frequencies_converge_to_stationary() -> None:
    cfg = study_preset(seed=11)
    m = MarkovBandwidth(cfg)
    states = m.states_until(200_000 * cfg.step_s)
    freq = np.bincount(states, minlength=6) / states.size
    assert np.max(np.abs(freq - cfg.stationary())) < 0.01
    # The time average of the rate converges to the stationary mean, through the exact integral.
    assert m.mean_rate(0.0, 200_000.0) / 1e6 == pytest.approx(cfg.mean_rate_mbps(), rel=0.02)
    two = MarkovConfig(states_mbps=[1.0, 9.0], transition=[[0.9, 0.1], [0.3, 0.7]], step_s=0.5, seed=2)
    s2 = MarkovBandwidth(two).states_until(100_000 * 0.5)
    assert np.mean(s2 == 0) == pytest.approx(0.75, abs=0.01)


def test_markov_path_is_a_pure_function_of_the_config() -> None:
    times = np.random.default_rng(0).uniform(0, 30_000, 200)
    a, b = MarkovBandwidth(study_preset(seed=5)), MarkovBandwidth(study_preset(seed=5))
    forward = [a.rate_at(t) for t in sorted(times)]
    backward = [b.rate_at(t) for t in sorted(times, reverse=True)][::-1]  # b grows its path in another order
    assert forward == backward
    other = MarkovBandwidth(study_preset(seed=6))
    assert [other.rate_at(t) for t in sorted(times)] != forward
    assert set(forward) <= {s * 1e6 for s in study_preset().states_mbps}


def test_markov_initial_state_transfer_and_horizon() -> None:
    cfg = study_preset(seed=1, initial_state=2, step_s=0.5)
    m = MarkovBandwidth(cfg)
    assert m.rate_at(0.0) == 25e6
    finish = m.transfer_finish_time(3.0, 2e8)
    assert m.bits_until(finish) - m.bits_until(3.0) == pytest.approx(1.6e9, rel=1e-9)
    short = MarkovBandwidth(cfg.model_copy(update={"max_steps": 10}))
    assert math.isinf(short.transfer_finish_time(0.0, 1e12))  # past the horizon: reported as never


@pytest.mark.parametrize(
    "fields",
    [
        {"states_mbps": [1.0, 2.0], "transition": [[0.5, 0.4], [0.5, 0.5]]},  # row does not sum to 1
        {"states_mbps": [1.0, 2.0], "transition": [[1.0]]},  # wrong shape
        {"states_mbps": [1.0], "transition": [[1.0]], "initial_state": 3},
        {"states_mbps": [-1.0], "transition": [[1.0]]},
    ],
)
def test_markov_config_rejects_invalid(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MarkovConfig(step_s=1.0, **fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Measured traces
# ----------------------------------------------------------------------------------------------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
SYNTHETIC = FIXTURES / "synthetic_lte_ul_walking.csv"
"""547 rows on a 0.1 s grid (54.7 s), seeded, with a 1 s outage: the parser and replay tests' own trace."""
PACKAGED = ["lumos5g_vzw_mmwave5g_dl_driving_trace103", "lumos5g_vzw_mmwave5g_dl_walking_trace100"]


def _readme_rows(folder: Path) -> dict[str, str]:
    rows = {}
    for line in (folder / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `") and ".csv`" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1]
    return rows


@pytest.mark.usefixtures("no_data_dir")
def test_every_packaged_trace_parses_with_sane_values() -> None:
    infos = list_traces()
    assert [i.name for i in infos] == PACKAGED
    assert [p.stem for p in sorted(traces_dir().glob("*.csv"))] == PACKAGED
    readme = _readme_rows(traces_dir())
    for info in infos:
        tr = load_trace(info.name)
        assert info.duration_s > 0 and info.step_s in (0.1, 1.0)
        assert info.duration_s == pytest.approx(info.rows * info.step_s)
        assert np.all(tr.rates_bps >= 0) and np.all(np.isfinite(tr.rates_bps))
        # The README's table, recomputed from the rows (it rounds to 2 decimals).
        for key, ours in (("mean", info.mean_mbps), ("median", info.median_mbps), ("p10", info.p10_mbps)):
            assert ours == pytest.approx(info.readme_stats[key], abs=0.006), (info.name, key)
        assert info.p90_mbps == pytest.approx(info.readme_stats["p90"], abs=0.006)
        assert info.duration_s == pytest.approx(info.readme_stats["duration"])
        marker = readme[Path(info.path).name].lstrip("*")
        assert info.direction == ("uplink" if marker.startswith("UL") else "downlink")
        assert info.generation == "5G"
        process = TraceReplay(tr, loop=False)
        assert process.duration_s == pytest.approx(info.duration_s)
        assert process.mean_rate(0.0, process.duration_s) == pytest.approx(info.mean_mbps * 1e6, rel=1e-9)
        assert trace_source(info.name).source == "packaged-sample"


@pytest.mark.usefixtures("no_data_dir")
def test_unit_conversion_by_hand_from_first_rows() -> None:
    # lumos5g_..._driving_trace103.csv starts: "0.0,361.000", "1.0,703.000", "2.0,924.000" (1 s grid, Mbit/s).
    name = "lumos5g_vzw_mmwave5g_dl_driving_trace103"
    path = traces_dir() / f"{name}.csv"
    first = path.read_text(encoding="utf-8").splitlines()[:4]
    assert first == ["t_s,mbps", "0.0,361.000", "1.0,703.000", "2.0,924.000"]
    p = TraceReplay(load_trace(name), loop=False)
    assert p.rate_at(0.5) == 361_000_000.0  # 361 Mbit/s = 361 * 10^6 bit/s
    assert p.rate_at(1.5) == 703_000_000.0
    # 361 + 703 + 924 Mbit in the first three seconds = 1988e6 bit = 248,500,000 bytes.
    assert p.bits_until(3.0) == pytest.approx(1988e6, rel=1e-12)
    assert p.transfer_finish_time(0.0, 248_500_000) == pytest.approx(3.0, abs=1e-9)
    assert p.transfer_finish_time(0.0, 45_125_000) == pytest.approx(1.0, abs=1e-9)  # 361e6 bit = 45.125 MB


def test_replay_speed_offset_and_loop_agree_with_direct_lookup() -> None:
    tr = load_trace(SYNTHETIC)
    assert tr.step_s == pytest.approx(0.1) and tr.info.rows == 547
    rng = np.random.default_rng(4)
    for speed, offset in ((1.0, 0.0), (2.0, 12.34), (0.5, 50.0), (3.0, 0.3)):
        p = TraceReplay(tr, speed=speed, offset_s=offset, loop=True)
        assert p.end_s == pytest.approx(tr.duration_s / speed)
        for t in rng.uniform(0, 3 * tr.duration_s / speed, 300):
            trace_t = math.fmod(offset + speed * t, tr.duration_s)
            k = trace_t / tr.step_s
            if abs(k - round(k)) < 1e-6:  # too close to a row boundary to compare two roundings
                continue
            assert p.rate_at(float(t)) == tr.rates_bps[int(k)], (speed, offset, t)
        # a looped replay delivers the trace's mean over any whole period
        assert p.mean_rate(1.0, 1.0 + p.end_s) == pytest.approx(tr.rates_bps.mean(), rel=1e-9)


def test_replay_without_loop_ends_and_config_round_trip() -> None:
    cfg = TraceReplayConfig(trace=SYNTHETIC.stem, speed=2.0, offset_s=20.0, loop=False)
    p = replay(TraceReplayConfig.model_validate_json(cfg.model_dump_json()), FIXTURES)
    assert p.duration_s == pytest.approx((54.7 - 20.0) / 2.0)
    assert p.rate_at(p.duration_s + 1.0) == 0.0
    assert math.isinf(p.transfer_finish_time(0.0, 1e12))
    with pytest.raises(ValueError):
        TraceReplay(p.trace, offset_s=500.0, loop=False)
    samples = list(TraceReplay(p.trace, loop=False).iter_samples(p.trace.step_s))
    assert len(samples) == p.trace.info.rows
    assert [r for _, r in samples[:5]] == pytest.approx(list(p.trace.rates_bps[:5]))
    assert p.trace.info.direction == "uplink" and p.trace.info.link == "LTE (synthetic)"  # from the README table


def test_data_directory_traces_come_first_and_unknown_names_say_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_data_dir: Path
) -> None:
    root = tmp_path / "root"
    (root / "traces").mkdir(parents=True)
    (root / "traces" / f"{PACKAGED[0]}.csv").write_text("t_s,mbps\n0.0,1.0\n1.0,2.0\n", encoding="utf-8")
    (root / "traces" / SYNTHETIC.name).write_bytes(SYNTHETIC.read_bytes())
    monkeypatch.setenv(DATA_ENV, str(root))
    names = [i.name for i in list_traces()]
    assert sorted(names) == sorted([*PACKAGED, SYNTHETIC.stem])  # one entry per name: the data directory's wins
    assert load_trace(PACKAGED[0]).info.rows == 2
    assert trace_source(PACKAGED[0]).source == f"data-dir:{root.resolve()}"
    assert trace_source(PACKAGED[1]).source == "packaged-sample"
    assert trace_source(SYNTHETIC.stem).sha256 == hashlib.sha256(SYNTHETIC.read_bytes()).hexdigest()
    assert traces_dir() == root.resolve() / "traces"
    with pytest.raises(DataNotFound, match="scout data import PATH") as info:
        load_trace("umn_tmo_sa5g_ul_walking_run20070")
    assert "--source hub" in str(info.value) and "SCOUT_DATA" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,rate\n0.0,1.0\n1.0,2.0\n", "first line"),
        ("t_s,mbps\n0.0,1.0\n1.0,2.0\n2.5,3.0\n", "grid"),
        ("t_s,mbps\n0.0,1.0\n1.0,-2.0\n", ">= 0"),
        ("t_s,mbps\n0.0,1.0\n1.0,x\n", "not a number"),
        ("t_s,mbps\n0.0,1.0\n", "at least 2 rows"),
    ],
)
def test_parser_rejects_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad_ul_trace.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_trace(path)


def test_direction_falls_back_to_file_name_and_unknown_names_fail(tmp_path: Path) -> None:
    (tmp_path / "x_lte_ul_test.csv").write_text("t_s,mbps\n0.0,1.0\n0.1,2.0\n", encoding="utf-8")
    (tmp_path / "y_5g_dl_test.csv").write_text("t_s,mbps\n0.0,1.0\n1.0,2.0\n", encoding="utf-8")
    infos = {i.name: i for i in list_traces(tmp_path)}
    assert infos["x_lte_ul_test"].direction == "uplink" and infos["x_lte_ul_test"].generation == "LTE"
    assert infos["y_5g_dl_test"].direction == "downlink" and infos["y_5g_dl_test"].duration_s == 2.0
    assert [i.name for i in list_traces(tmp_path, "uplink")] == ["x_lte_ul_test"]
    with pytest.raises(FileNotFoundError, match="x_lte_ul_test"):
        load_trace("nope", tmp_path)
