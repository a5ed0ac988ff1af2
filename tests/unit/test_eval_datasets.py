"""Tests for scout.datasets: the packaged sample files load into the common schema, and sampling is a pure
function of (name, n, seed, filters). Each test sees only the packaged samples or its own tmp data directory
(HOME and SCOUT_DATA point at empty tmp folders), so a developer's data directory cannot leak in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from scout import datasets as ds
from scout.dataroot import DATA_ENV, DataNotFound
from scout.datasets import DATASETS, Example, load_examples, load_jsonl

PACKAGED = {"squad_v2": 32, "triviaqa": 16, "hotpotqa": 16, "mmlu": 16, "mmlu_dev": 65}
"""The packaged sample sizes (libs/scout/data/README.md)."""


pytestmark = pytest.mark.usefixtures("no_data_dir")
"""Packaged samples only (tests/unit/conftest.py): an empty HOME, no SCOUT_DATA or XDG_DATA_HOME."""


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _squad_records(count: int) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    for i in range(count):
        impossible = i % 3 == 0
        records.append(
            {
                "id": f"q{i}",
                "dataset": "squad_v2",
                "title": "T",
                "context": "x" * (10 * i) + " answer",
                "question": f"question {i}?",
                "answers": [] if impossible else ["answer"],
                "is_impossible": impossible,
            }
        )
    return records


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with a synthetic SQuAD file, selected through SCOUT_DATA."""
    _write_jsonl(tmp_path / "data" / "squad_v2" / "squad_v2_dev.jsonl", _squad_records(30))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    return tmp_path


# ---- load_jsonl and schema ---------------------------------------------------------------------------------


def test_load_jsonl_keeps_line_separator_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "sep.jsonl"
    tricky = "first\u2028second\u2029third\x85fourth"
    _write_jsonl(path, [{"id": "a", "text": tricky}, {"id": "b", "text": "plain"}])
    raw = path.read_text(encoding="utf-8")
    assert "\u2028" in raw and len(raw.splitlines()) > 2  # splitlines() would have broken the records
    records = list(load_jsonl(path))
    assert [r["id"] for r in records] == ["a", "b"]
    assert records[0]["text"] == tricky


def test_load_examples_reads_u2028_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _squad_records(4)
    records[1]["context"] = "line one\u2028line two answer"
    _write_jsonl(tmp_path / "data" / "squad_v2" / "squad_v2_dev.jsonl", records)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    by_id = {ex.id: ex for ex in load_examples("squad_v2")}
    assert len(by_id) == 4
    assert by_id["q1"].context == "line one\u2028line two answer"


def test_load_jsonl_reports_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        list(load_jsonl(path))


def test_example_is_frozen_and_strict() -> None:
    ex = Example(id="1", dataset="squad_v2", context="c", question="q", answers=["a"])
    with pytest.raises(ValidationError):
        ex.id = "2"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Example(id="1", dataset="d", context="c", question="q", answers=[], bogus=1)  # type: ignore[call-arg]


def test_to_example_moves_unknown_fields_to_extra() -> None:
    ex = ds.to_example(
        {"id": "x", "context": "", "question": "q?", "answers": [], "title": "T", "subject": "s"},
        default_dataset="squad_v2",
    )
    assert ex.dataset == "squad_v2"
    assert ex.is_impossible  # inferred from the empty answer list
    assert ex.extra == {"title": "T", "subject": "s"}


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        load_examples("squad_v3")
    message = str(info.value)
    for name in DATASETS:
        assert name in message


def test_hf_sources_cover_registry() -> None:
    assert set(ds.HF_SOURCES) == set(DATASETS)


# ---- sampling on a synthetic file --------------------------------------------------------------------------


def test_sampling_independent_of_file_order(fake_root: Path) -> None:
    first = [ex.id for ex in load_examples("squad_v2", n=10, seed=3)]
    path = fake_root / "data" / "squad_v2" / "squad_v2_dev.jsonl"
    _write_jsonl(path, list(reversed(_squad_records(30))))
    second = [ex.id for ex in load_examples("squad_v2", n=10, seed=3)]
    assert first == second


def test_sampling_order_is_sha256_ranking(fake_root: Path) -> None:
    ids = [ex.id for ex in load_examples("squad_v2", seed=7)]
    assert ids == sorted((f"q{i}" for i in range(30)), key=lambda i: ds.sample_key(7, i))


def test_smaller_sample_is_prefix_of_larger(fake_root: Path) -> None:
    small = [ex.id for ex in load_examples("squad_v2", n=5, seed=1)]
    large = [ex.id for ex in load_examples("squad_v2", n=20, seed=1)]
    full = [ex.id for ex in load_examples("squad_v2", seed=1)]
    assert large[:5] == small
    assert full[:20] == large
    assert load_examples("squad_v2", n=0) == []


def test_filters_apply_before_sampling(fake_root: Path) -> None:
    answerable = load_examples("squad_v2", n=8, answerable_only=True)
    assert len(answerable) == 8
    assert all(not ex.is_impossible and ex.answers for ex in answerable)
    short = load_examples("squad_v2", max_context_chars=60)
    assert {ex.id for ex in short} == {f"q{i}" for i in range(30) if 10 * i + 7 <= 60}
    with pytest.raises(ValueError, match="MMLU"):
        load_examples("squad_v2", subjects=["anatomy"])
    with pytest.raises(ValueError):
        load_examples("squad_v2", n=-1)


# ---- the packaged samples (real records) -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_every_packaged_dataset_loads(name: str) -> None:
    examples = load_examples(name, n=100)
    assert len(examples) == PACKAGED[name]
    assert ds.dataset_source(name).is_packaged
    assert len({ex.id for ex in examples}) == len(examples)
    task = DATASETS[name].task
    for ex in examples:
        assert ex.question.strip()
        assert ex.dataset == (name if name == "triviaqa_longbench" else task)
        if task != "squad_v2":
            assert ex.answers


def test_the_one_dataset_not_packaged_names_the_ways_to_get_it() -> None:
    with pytest.raises(DataNotFound, match="scout data import PATH") as info:
        load_examples("triviaqa_longbench", n=2)
    assert "--source hub" in str(info.value) and "SCOUT_DATA" in str(info.value)


def test_squad_answers_occur_in_context() -> None:
    examples = load_examples("squad_v2", n=200, seed=5)
    answerable = [ex for ex in examples if not ex.is_impossible]
    assert len(answerable) == 26 and len(examples) - len(answerable) == 6
    for ex in answerable:
        assert ex.answers
        assert all(answer in ex.context for answer in ex.answers), ex.id
        assert ex.extra["title"]
    for ex in examples:
        if ex.is_impossible:
            assert ex.answers == []


def test_squad_answerable_only() -> None:
    examples = load_examples("squad_v2", n=50, answerable_only=True, seed=2)
    assert len(examples) == 26  # fewer than n survive: what exists, no error
    assert all(not ex.is_impossible and ex.answers for ex in examples)


@pytest.mark.parametrize("name", ["mmlu", "mmlu_dev"])
def test_mmlu_schema(name: str) -> None:
    examples = load_examples(name, n=100, seed=11)
    assert len(examples) == PACKAGED[name]
    for ex in examples:
        assert ex.choices is not None and len(ex.choices) == 4
        assert ex.answer_index is not None and 0 <= ex.answer_index <= 3
        assert ex.answers[0] == "ABCD"[ex.answer_index]
        assert ex.context == ""
        assert ex.extra["subject"]


def test_mmlu_subject_filter() -> None:
    examples = load_examples("mmlu_dev", n=30, subjects=["philosophy", "jurisprudence"])
    assert len(examples) == 10  # the dev pool: five per subject
    assert {ex.extra["subject"] for ex in examples} == {"philosophy", "jurisprudence"}
    with pytest.raises(ValueError, match="anatomyy"):
        load_examples("mmlu", n=5, subjects=["anatomyy"])


def test_hotpot_contexts() -> None:
    for ex in load_examples("hotpotqa", n=16):
        assert ex.context.strip()
        assert ex.extra["paragraphs"]
        first_title = ex.extra["paragraphs"][0]["title"]
        assert ex.context.startswith(first_title)


def test_real_sampling_determinism() -> None:
    a = [ex.id for ex in load_examples("triviaqa", n=8, seed=0)]
    b = [ex.id for ex in load_examples("triviaqa", n=8, seed=0)]
    c = [ex.id for ex in load_examples("triviaqa", n=8, seed=1)]
    assert a == b
    assert a != c
    assert len(set(a) & set(c)) < 8


def test_max_context_chars_on_real_data() -> None:
    examples = load_examples("triviaqa", n=20, max_context_chars=2000)
    assert examples and all(len(ex.context) <= 2000 for ex in examples)
    assert len(examples) < len(load_examples("triviaqa"))


def test_callers_get_the_items_they_ask_for() -> None:
    """The packaged SQuAD v2 sample serves the demo's, the fixtures' and the benchmarks' calls."""
    assert len(load_examples("squad_v2", n=4, seed=7, answerable_only=True, max_context_chars=600)) == 4
    assert len(load_examples("squad_v2", n=16, seed=7, answerable_only=True, max_context_chars=700)) == 16
    assert len(load_examples("squad_v2", n=6, seed=0, answerable_only=True, max_context_chars=1200)) == 6
    few = load_examples("squad_v2", n=400, seed=11, answerable_only=True, max_context_chars=400)
    assert 0 < len(few) < 400


def test_data_directory_copy_wins_over_the_packaged_sample(fake_root: Path) -> None:
    source = ds.dataset_source("squad_v2")
    assert source.source == f"data-dir:{fake_root.resolve()}"
    assert len(load_examples("squad_v2")) == 30
    assert ds.dataset_source("triviaqa").is_packaged  # the root lacks it: the packaged sample
    assert ds.dataset_source("squad_v2", packaged_only=True).is_packaged


def test_sample_records_is_the_file_rule(fake_root: Path) -> None:
    records = list(load_jsonl(fake_root / "data" / "squad_v2" / "squad_v2_dev.jsonl"))
    direct = ds.sample_records("squad_v2", reversed(records), n=7, seed=4, answerable_only=True)
    assert direct == load_examples("squad_v2", n=7, seed=4, answerable_only=True)


def test_check_dataset_file_finds_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "squad_v2" / "x.jsonl"
    good = _squad_records(3)
    _write_jsonl(path, [*good, {"id": "q0", "question": "dup?", "answers": []}, {"question": "q", "answers": ["a"]}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"id": "z", "question": 3, "answers": []}\n{broken\n')
    count, problems = ds.check_dataset_file(path)
    assert count == 7
    assert [p.split(": ", 1)[0] for p in problems] == ["x.jsonl:4", "x.jsonl:5", "x.jsonl:6", "x.jsonl:7"]
    assert "duplicate id" in problems[0] and "'id'" in problems[1] and "question" in problems[2]
    assert "invalid JSON" in problems[3]
    assert ds.check_dataset_file(tmp_path / "squad_v2" / "x.jsonl", max_problems=1)[1] == problems[:1]
    clean = tmp_path / "clean.jsonl"
    _write_jsonl(clean, [*good, {"id": "u", "question": "q\u2028?", "answers": [], "context": "a\u2028b"}])
    assert ds.check_dataset_file(clean) == (4, [])
