"""`scout demo` end to end: the four roles embedded in one process, the uplink paced by the cloud store, the policy
planning at the configured rate, and answers equal to the library path's."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from scout.pipeline import answer_inprocess
from scout_cli.demo import DemoResult, run_demo

pytestmark = pytest.mark.models

RATE_MBIT = 200.0  # not the policy's 50 Mbit/s prior, so planning at it shows the policy heard the link state
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def demo(ref_lm: Any) -> tuple[DemoResult, str]:
    out = io.StringIO()
    result = run_demo(
        Console(file=out, width=200), lm=ref_lm, rate_mbit=RATE_MBIT, max_new_tokens=MAX_NEW_TOKENS, example=5
    )
    return result, out.getvalue()


def test_every_ask_is_answered_by_the_right_end(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    assert [a.label for a in result.asks] == ["auto", "full", "int4", "scout", "local"]
    for a in result.asks:
        assert a.answer.strip(), a.label
        assert a.answered_by == ("edge" if a.label == "local" else "cloud"), a.label
        assert a.reason, a.label
        if a.label != "auto":
            assert a.mode == a.label
    assert result.answer == result.ask("auto").answer
    assert result.local_answer == result.ask("local").answer
    assert result.gold, "the default run uses a SQuAD v2 example and shows its gold answers"


def test_bytes_sent_by_mode(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    full, int4, scout, local = (result.ask(m).bytes_sent for m in ("full", "int4", "scout", "local"))
    assert 0 < 100 * scout < int4 < full
    assert int4 < full / 2  # 4-bit codes (+ scales) against bf16
    assert local == 0
    assert result.ask("scout").retention < 1.0


def test_uploads_are_paced_at_the_configured_rate(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    for mode in ("full", "int4"):
        a = result.ask(mode)
        assert a.upload_s is not None
        assert a.upload_s >= a.bytes_sent * 8 / (RATE_MBIT * 1e6), mode  # paced: never faster than the link
    assert result.ask("local").upload_s is None


def test_the_policy_plans_at_the_announced_rate(demo: tuple[DemoResult, str]) -> None:
    result, out = demo
    auto = result.ask("auto")
    assert auto.planned_rate_bps == RATE_MBIT * 1e6
    assert f"policy chose {auto.mode} at {RATE_MBIT:g} Mbit/s" in out
    assert auto.reason in out
    for text in ("four roles in-process", "edge only", "gold:", result.question):
        assert text in out


def test_full_mode_answers_as_the_library_path(demo: tuple[DemoResult, str], ref_lm: Any) -> None:
    result, _ = demo
    ref = answer_inprocess(
        ref_lm,
        ref_lm,
        question=result.question,
        document=result.context,
        mode="full",
        max_new_tokens=MAX_NEW_TOKENS,
    )
    assert (result.ask("full").answer, result.ask("full").bytes_sent) == (ref.answer, ref.bytes_sent)


def test_bad_arguments_fail_before_anything_starts() -> None:
    console = Console(file=io.StringIO())
    with pytest.raises(ValueError, match="both --question and --context"):
        run_demo(console, question="q?")
    with pytest.raises(ValueError, match="--rate must be a positive"):
        run_demo(console, rate_mbit=0.0)
    with pytest.raises(ValueError, match="modes must be among"):
        run_demo(console, modes=("local",))
