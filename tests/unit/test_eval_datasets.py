"""Tests for scout.datasets: the real shared files load into the common schema, and sampling is a pure
function of (name, n, seed, filters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from scout import datasets as ds
from scout.datasets import DATASETS, Example, load_examples, load_jsonl, shared_dir


def _data_available() -> bool:
    try:
        root = shared_dir() / "data"
    except FileNotFoundError:
        return False
    return all((root / spec.relpath).is_file() for spec in DATASETS.values())


needs_data = pytest.mark.skipif(not _data_available(), reason="shared data folder not present")


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
def fake_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shared folder with a synthetic SQuAD file, selected through SCOUT_SHARED."""
    _write_jsonl(tmp_path / "data" / "squad_v2" / "squad_v2_dev.jsonl", _squad_records(30))
    monkeypatch.setenv(ds.SHARED_ENV, str(tmp_path))
    return tmp_path


# ---- shared_dir --------------------------------------------------------------------------------------------


def test_shared_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ds.SHARED_ENV, str(tmp_path))
    assert shared_dir() == tmp_path.resolve()


def test_shared_dir_env_missing_dir_names_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ds.SHARED_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="SCOUT_SHARED"):
        shared_dir()


def test_shared_dir_without_env_finds_repo_sibling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ds.SHARED_ENV, raising=False)
    repo_root = ds._find_repo_root(Path(ds.__file__).resolve().parent)
    assert repo_root is not None and (repo_root / "pyproject.toml").is_file()
    expected = repo_root.parent / "shared"
    if expected.is_dir():
        assert shared_dir() == expected.resolve()
    else:
        with pytest.raises(FileNotFoundError, match="SCOUT_SHARED"):
            shared_dir()


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
    monkeypatch.setenv(ds.SHARED_ENV, str(tmp_path))
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


def test_sampling_independent_of_file_order(fake_shared: Path) -> None:
    first = [ex.id for ex in load_examples("squad_v2", n=10, seed=3)]
    path = fake_shared / "data" / "squad_v2" / "squad_v2_dev.jsonl"
    _write_jsonl(path, list(reversed(_squad_records(30))))
    second = [ex.id for ex in load_examples("squad_v2", n=10, seed=3)]
    assert first == second


def test_sampling_order_is_sha256_ranking(fake_shared: Path) -> None:
    ids = [ex.id for ex in load_examples("squad_v2", seed=7)]
    assert ids == sorted((f"q{i}" for i in range(30)), key=lambda i: ds.sample_key(7, i))


def test_smaller_sample_is_prefix_of_larger(fake_shared: Path) -> None:
    small = [ex.id for ex in load_examples("squad_v2", n=5, seed=1)]
    large = [ex.id for ex in load_examples("squad_v2", n=20, seed=1)]
    full = [ex.id for ex in load_examples("squad_v2", seed=1)]
    assert large[:5] == small
    assert full[:20] == large
    assert load_examples("squad_v2", n=0) == []


def test_filters_apply_before_sampling(fake_shared: Path) -> None:
    answerable = load_examples("squad_v2", n=8, answerable_only=True)
    assert len(answerable) == 8
    assert all(not ex.is_impossible and ex.answers for ex in answerable)
    short = load_examples("squad_v2", max_context_chars=60)
    assert {ex.id for ex in short} == {f"q{i}" for i in range(30) if 10 * i + 7 <= 60}
    with pytest.raises(ValueError, match="MMLU"):
        load_examples("squad_v2", subjects=["anatomy"])
    with pytest.raises(ValueError):
        load_examples("squad_v2", n=-1)


# ---- the real shared files ---------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads(name: str) -> None:
    examples = load_examples(name, n=20)
    expected = 12 if name == "triviaqa_longbench" else 20
    assert len(examples) == expected
    assert len({ex.id for ex in examples}) == len(examples)
    task = DATASETS[name].task
    for ex in examples:
        assert ex.question.strip()
        assert ex.dataset == (name if name == "triviaqa_longbench" else task)
        if task != "squad_v2":
            assert ex.answers


@needs_data
def test_squad_answers_occur_in_context() -> None:
    examples = load_examples("squad_v2", n=200, seed=5)
    answerable = [ex for ex in examples if not ex.is_impossible]
    assert 50 < len(answerable) < 150  # the set is about half unanswerable
    for ex in answerable:
        assert ex.answers
        assert all(answer in ex.context for answer in ex.answers), ex.id
        assert ex.extra["title"]
    for ex in examples:
        if ex.is_impossible:
            assert ex.answers == []


@needs_data
def test_squad_answerable_only() -> None:
    examples = load_examples("squad_v2", n=50, answerable_only=True, seed=2)
    assert len(examples) == 50
    assert all(not ex.is_impossible and ex.answers for ex in examples)


@needs_data
@pytest.mark.parametrize("name", ["mmlu", "mmlu_dev"])
def test_mmlu_schema(name: str) -> None:
    for ex in load_examples(name, n=40, seed=11):
        assert ex.choices is not None and len(ex.choices) == 4
        assert ex.answer_index is not None and 0 <= ex.answer_index <= 3
        assert ex.answers[0] == "ABCD"[ex.answer_index]
        assert ex.context == ""
        assert ex.extra["subject"]


@needs_data
def test_mmlu_subject_filter() -> None:
    examples = load_examples("mmlu", n=30, subjects=["anatomy", "nutrition"])
    assert len(examples) == 30
    assert {ex.extra["subject"] for ex in examples} <= {"anatomy", "nutrition"}
    with pytest.raises(ValueError, match="anatomyy"):
        load_examples("mmlu", n=5, subjects=["anatomyy"])


@needs_data
def test_hotpot_contexts() -> None:
    for ex in load_examples("hotpotqa", n=20):
        assert ex.context.strip()
        assert ex.extra["paragraphs"]
        first_title = ex.extra["paragraphs"][0]["title"]
        assert ex.context.startswith(first_title)


@needs_data
def test_real_sampling_determinism() -> None:
    a = [ex.id for ex in load_examples("triviaqa", n=25, seed=0)]
    b = [ex.id for ex in load_examples("triviaqa", n=25, seed=0)]
    c = [ex.id for ex in load_examples("triviaqa", n=25, seed=1)]
    assert a == b
    assert a != c
    assert len(set(a) & set(c)) < 25


@needs_data
def test_max_context_chars_on_real_data() -> None:
    examples = load_examples("triviaqa", n=20, max_context_chars=2000)
    assert examples and all(len(ex.context) <= 2000 for ex in examples)
