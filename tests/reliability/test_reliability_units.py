"""The reliability harness's own logic, without a deployment: outcome and duplicate counting, the hostile corpora
(every case has the code it must get; every position set really is invalid), and the report files."""

from __future__ import annotations

from pathlib import Path

import pytest

from scout.positions import decode_positions
from scout_runtime.errors import ErrorCode
from scout_testbed.faults import FaultOutcome
from scout_testbed.hostile_cases import (
    ENTRY_POINTS,
    ask_cases,
    bad_position_sets,
    http_cases,
    link_cases,
    plan_cases,
)
from scout_testbed.reliability import verdict, write_report
from scout_testbed.soak import RequestRecord, parse_point, summarize


def _rec(i: int, outcome: str, **kw: object) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}", client=0, point="text", transport="nats", document="d", outcome=outcome, **kw
    )  # type: ignore[arg-type]


def test_summary_counts_lost_and_duplicates_from_either_end() -> None:
    records = [
        _rec(0, "answered", latency_s=1.0, client_replies=1, tap_results=1, mode="text"),
        _rec(1, "answered", latency_s=3.0, client_replies=2, tap_results=1, mode="text"),  # two replies at the client
        _rec(2, "answered", latency_s=2.0, client_replies=1, tap_results=2, mode="int8"),  # two decoder results
        _rec(3, "error", code="blob_missing", latency_s=0.5, client_replies=1, tap_results=1),
        _rec(4, "lost"),
    ]
    s = summarize(records, concurrency=2, requests_per_client=3, wall_s=10.0, tap_unreadable=0)
    assert (s.sent, s.answered, s.errors, s.lost, s.duplicated) == (5, 3, 1, 1, 2)
    assert s.duplicated_ids == ["r1", "r2"]
    assert s.errors_by_code == {"blob_missing": 1}
    assert s.p50_s == pytest.approx(2.0) and s.max_s == 3.0
    assert s.by_mode == {"text": 2, "int8": 1}


def test_points_name_a_mode_and_a_retention() -> None:
    assert parse_point("auto") == (None, None)
    assert parse_point("int4@0.5") == ("int4", 0.5)
    assert parse_point("text") == ("text", None)


def test_every_request_reply_case_expects_a_typed_error() -> None:
    for cases in (http_cases(), ask_cases(), plan_cases()):
        assert cases and all(isinstance(c.expect, ErrorCode) for c in cases)
        categories = {c.category for c in cases}
        assert {"random_bytes", "schema_version", "wrong_type", "oversized", "bad_field"} <= categories
    assert all(c.http_status in (400, 404, 413) for c in http_cases())
    assert any(c.expect == ErrorCode.TOO_LARGE and c.http_status == 413 for c in http_cases())
    assert not any(c.expect == ErrorCode.TOO_LARGE for c in ask_cases()), "NATS cannot carry a body over 1 MiB"
    assert {c.entry for c, _ in link_cases()} == {"link"}
    assert set(ENTRY_POINTS) == {"http", "ask", "plan", "encode", "decode", "link", "result"}


def test_random_bytes_are_seeded() -> None:
    assert [c.data for c in plan_cases(seed=3)] == [c.data for c in plan_cases(seed=3)]
    assert [c.data for c in plan_cases(seed=3)] != [c.data for c in plan_cases(seed=4)]


@pytest.mark.parametrize("n", [1, 7, 150])
def test_bad_position_sets_never_decode(n: int) -> None:
    sets = bad_position_sets(n, seed=1)
    assert len(sets) >= 8
    for label, data in sets:
        with pytest.raises(ValueError):
            decode_positions(data, n)
        assert label


def test_report_files_and_verdict(tmp_path: Path) -> None:
    soak = summarize(
        [_rec(0, "answered", latency_s=1.0, client_replies=1, tap_results=1, mode="text")],
        concurrency=1,
        requests_per_client=1,
        wall_s=1.0,
        tap_unreadable=0,
    )
    fault = FaultOutcome(
        name="link_zero",
        fault="link to zero",
        expectation="local",
        passed=False,
        outcome="x",
        sent=1,
        answered=1,
        errors_by_code={},
        lost=0,
        duplicated=0,
        seconds=1.0,
        details={
            "steps": [
                {
                    "rate_bps": 0.0,
                    "planned_mode": "local",
                    "reply_mode": "local",
                    "answered_by": "edge",
                    "latency_s": 0.5,
                    "deadline_s": 8.0,
                }
            ]
        },
    )
    v = verdict([soak], [fault], None)
    assert v == {"soak": True, "faults": False, "hostile": True, "ok": False}
    results = {
        "config": {
            "model": "m",
            "dtype": "fp32",
            "decoders": 2,
            "documents": 1,
            "max_context_chars": 600,
            "max_new_tokens": 6,
            "mix": ["text"],
        },
        "machine": {"cpu_count": 2, "load_average": [1.0, 1.0, 1.0]},
        "seconds": 60.0,
        "soak": [soak.model_dump()],
        "faults": [fault.model_dump()],
        "hostile": None,
        "verdict": v,
    }
    md, js, png = write_report(tmp_path / "reliability", results)
    text = md.read_text()
    assert md == tmp_path / "reliability.md" and js.exists() and png.stat().st_size > 1000
    assert "NOT all criteria met" in text and "| 1 | 1 x 1 | 1 | 1 | 0 | 0 | 0 | 1,000 |" in text
    assert "0 bit/s: policy planned `local`" in text


def test_commands_register_without_importing_torch_or_the_runtime() -> None:
    import subprocess
    import sys

    code = (
        "import sys, typer\n"
        "from scout_cli.commands.reliability import register\n"
        "app, bench = typer.Typer(), typer.Typer()\n"
        "register(app, bench)\n"
        "names = {c.name for c in bench.registered_commands}\n"
        "assert names == {'reliability', 'soak'}, names\n"
        "heavy = [m for m in ('torch', 'nats', 'redis', 'scout_services', 'scout_testbed') if m in sys.modules]\n"
        "sys.exit(str(heavy) if heavy else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_load_levels_pair_clients_with_requests() -> None:
    import typer

    from scout_cli.commands.reliability import _levels

    assert _levels([1, 8, 32], [16, 4, 3]) == [(1, 16), (8, 4), (32, 3)]
    assert _levels([1, 8], [5]) == [(1, 5), (8, 5)]
    with pytest.raises(typer.BadParameter):
        _levels([1, 8, 32], [1, 2])
    with pytest.raises(typer.BadParameter):
        _levels([0], [1])
