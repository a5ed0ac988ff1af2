"""The CI fuzz step (issue 22): the saved corpus replays with typed outcomes only, and a few hundred fresh
mutations per target (deterministic seed) find no untyped exception. The long run is `scout bench fuzz`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_regressions import CASES

from scout_testbed.fuzz import Target, fuzz, load_corpus, replay, run_one
from scout_testbed.fuzz_targets import targets

CORPUS = Path(__file__).parent / "corpus"
TARGETS = targets()
FRESH = 300


def _marks(name: str) -> list[pytest.MarkDecorator]:
    """Per-target marks (none today: the dataset reader's deep-nesting and long-integer escapes are fixed)."""
    del name
    return []


def _untyped(result_failures: list[tuple[bytes, str]]) -> list[str]:
    return [f"{err} (input {data[:40]!r}…)" for data, err in result_failures]


def test_every_target_has_a_saved_corpus() -> None:
    assert set(TARGETS) == {p.name for p in CORPUS.iterdir() if p.is_dir()}
    for name in TARGETS:
        assert load_corpus(CORPUS, name), name


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in TARGETS])
def test_corpus_replays_typed(name: str) -> None:
    result = replay(TARGETS[name], load_corpus(CORPUS, name))
    assert result.counts["untyped"] == 0, _untyped(result.failures)
    assert result.inputs == len(load_corpus(CORPUS, name))


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in TARGETS])
def test_fresh_mutations_are_typed(name: str) -> None:
    result = fuzz(TARGETS[name], FRESH, seed=22, corpus=load_corpus(CORPUS, name))
    assert result.inputs == FRESH
    assert result.counts["untyped"] == 0, _untyped(result.failures)
    assert result.counts["rejected"] > 0  # the mutations reach the parser's checks


@pytest.mark.parametrize(
    ("name", "case"),
    [
        pytest.param(name, case, id=f"{name}-{case}", marks=_marks(name))
        for name, build in CASES.items()
        for case in build()
    ],
)
def test_issue_22_inputs_are_typed_rejections_and_saved(name: str, case: str) -> None:
    data = CASES[name]()[case]
    outcome, detail, _ = run_one(TARGETS[name], data)
    assert outcome == "rejected", detail
    assert data in load_corpus(CORPUS, name)


def test_an_untyped_exception_is_reported_as_one() -> None:
    """The harness itself: a parser that raises something other than its typed error is counted as a finding."""

    def parse(data: bytes) -> None:
        if data[:1] == b"k":
            raise KeyError("boom")
        raise ValueError("typed")

    target = Target("probe", parse, (ValueError,), lambda: [b"k", b"v"], lambda d, rng: d)
    result = fuzz(target, 50, seed=1)
    assert result.counts["untyped"] > 0 and result.counts["rejected"] > 0
    assert "KeyError" in result.failures[0][1]
