"""Evaluation examples: one schema for SQuAD v2, TriviaQA, HotpotQA and MMLU, read offline from files.

The files come from the data directory (``scout data import``, ``$SCOUT_DATA``, ``--data-dir``) or, failing
that, from the small samples packaged with Scout (`scout.dataroot`); `dataset_source` says which, with the file's
SHA-256.

Why this module exists: every experiment in Scout (selection, quantization, position transport) is a paired
comparison of methods *on the same samples*, as in the source study. That only holds if loading is
deterministic and independent of how the file happens to be read, so sampling here is a pure function of
``(name, n, seed, filters)``:

1. Stream the JSONL file line by line (``for line in f``; never ``str.splitlines()``, which also splits on
   U+2028/U+2029 that occur inside real strings).
2. Drop the examples the filters reject (``answerable_only``, ``max_context_chars``, ``subjects``).
3. Rank the survivors by ``sha256(f"{seed}:{id}")`` (ties, which would need a hash collision, by id) and keep
   the first ``n``. With ``n=None`` all survivors are returned in that same order.

The ranking depends only on each example's id, so the result is the same whatever the file order, the
chunking of reads, or the Python hash seed. And ``load_examples(name, n=50)`` is a prefix of
``load_examples(name, n=200)`` with the same seed, so a later, larger run extends an earlier one instead of
replacing it (the study went from 50 to 200 samples per configuration). Only ``n`` records are kept in memory
at a time (a bounded heap).

Nothing is downloaded here. ``HF_SOURCES`` names where the same sets live on the Hugging Face hub; the
evaluation layer streams them from there (`scout_eval.hub`, ``--source hub``) through `sample_records`, the same
filters and ranking.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scout.dataroot import DataSource, locate_dataset


class Example(BaseModel):
    """One evaluation item in the common schema.

    ``answers`` is the list of gold strings (aliases for TriviaQA; empty for unanswerable SQuAD v2 items; the
    letter, e.g. ``["B"]``, for MMLU). ``choices``/``answer_index`` are set for multiple-choice sets only.
    ``extra`` keeps every dataset-specific field of the record (title, subject, supporting facts, paragraphs,
    answer source, ...) so that nothing in the source is lost by the common schema.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    dataset: str
    context: str
    question: str
    answers: list[str]
    choices: list[str] | None = None
    answer_index: int | None = None
    is_impossible: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class HFSource:
    """Where a registered set lives on the Hugging Face hub (read only with ``source="hub"``)."""

    path: str
    config: str | None
    split: str
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its file under ``<data root>/data`` and the task whose metric scores it."""

    name: str
    relpath: str
    task: str
    description: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "squad_v2",
            "squad_v2/squad_v2_dev.jsonl",
            "squad_v2",
            "SQuAD 2.0 dev (9,829 items, about half unanswerable)",
        ),
        DatasetSpec(
            "triviaqa",
            "triviaqa/triviaqa_mrqa_dev.jsonl",
            "triviaqa",
            "TriviaQA-web dev in MRQA format (700 items; aliases for some)",
        ),
        DatasetSpec(
            "triviaqa_longbench",
            "triviaqa/triviaqa_longbench_sample.jsonl",
            "triviaqa",
            "LongBench triviaqa sample (12 items, 5k-20k token contexts)",
        ),
        DatasetSpec(
            "hotpotqa",
            "hotpotqa/hotpotqa_dev_distractor.jsonl",
            "hotpotqa",
            "HotpotQA dev, distractor setting (400 items)",
        ),
        DatasetSpec("mmlu", "mmlu/mmlu_test.jsonl", "mmlu", "MMLU test (13,339 items, 52 subjects)"),
        DatasetSpec("mmlu_dev", "mmlu/mmlu_dev.jsonl", "mmlu", "MMLU dev (5 per subject, the few-shot pool)"),
    )
}
"""Registered dataset names -> files. Adding a set is one entry here (plus a metric in ``metrics.score``)."""

HF_SOURCES: dict[str, HFSource] = {
    "squad_v2": HFSource("rajpurkar/squad_v2", None, "validation", "11,873 items; the local file has 9,829"),
    "triviaqa": HFSource("mrqa-workshop/mrqa", None, "validation", "filter subset == 'TriviaQA-web'"),
    "triviaqa_longbench": HFSource("THUDM/LongBench", "triviaqa", "test", "200 items"),
    "hotpotqa": HFSource("hotpotqa/hotpot_qa", "distractor", "validation", "7,405 items"),
    "mmlu": HFSource("cais/mmlu", "all", "test"),
    "mmlu_dev": HFSource("cais/mmlu", "all", "dev"),
}
"""Hub locations of the registered sets, for a machine with network access (`scout_eval.hub`)."""

_SCHEMA_FIELDS = frozenset({"id", "dataset", "context", "question", "answers", "choices", "answer_index"})


def dataset_source(
    name: str, data_dir: Path | str | None = None, *, packaged_only: bool = False, with_hash: bool = True
) -> DataSource:
    """Where a registered dataset is read from (data root or packaged sample) and the SHA-256 of that file.

    ValueError for an unknown name; `scout.dataroot.DataNotFound` (naming the ways to get it) when no source has it.
    """
    spec = _spec(name)
    return locate_dataset(name, spec.relpath, data_dir, packaged_only=packaged_only, with_hash=with_hash)


def dataset_path(name: str, data_dir: Path | str | None = None) -> Path:
    """Path of a registered dataset's JSONL file (see `dataset_source`)."""
    return Path(str(dataset_source(name, data_dir, with_hash=False).path))


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def load_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a UTF-8 JSONL file, streaming.

    Iterating the file object splits on ``\\n`` only; ``str.splitlines()`` would also split on U+2028/U+2029
    (and other separators) that appear inside JSON strings in the real data and corrupt those records.
    Errors name the file and line number.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, deep nesting
                raise ValueError(f"{path}:{lineno}: invalid JSON: {_json_error(exc)}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield record


def to_example(record: dict[str, Any], *, default_dataset: str) -> Example:
    """Map one raw record to an Example; every non-schema field goes to ``extra``.

    ``is_impossible`` is taken from the record when present, else inferred for SQuAD v2 from an empty answer
    list (the only way that set marks unanswerable items).
    """
    dataset = str(record.get("dataset") or default_dataset)
    answers = [str(a) for a in record.get("answers") or []]
    impossible = bool(record["is_impossible"]) if "is_impossible" in record else dataset == "squad_v2" and not answers
    extra = {k: v for k, v in record.items() if k not in _SCHEMA_FIELDS and k != "is_impossible"}
    choices = record.get("choices")
    return Example(
        id=str(record["id"]),
        dataset=dataset,
        context=str(record.get("context") or ""),
        question=str(record["question"]),
        answers=answers,
        choices=[str(c) for c in choices] if choices is not None else None,
        answer_index=record.get("answer_index"),
        is_impossible=impossible,
        extra=extra,
    )


def sample_key(seed: int, example_id: str) -> bytes:
    """The ranking key of an example for a seed: ``sha256(f"{seed}:{id}")``; see the module docstring."""
    return hashlib.sha256(f"{seed}:{example_id}".encode()).digest()


def sample_records(
    name: str,
    records: Iterable[dict[str, Any]],
    *,
    n: int | None = None,
    seed: int = 0,
    answerable_only: bool = False,
    max_context_chars: int | None = None,
    subjects: list[str] | None = None,
) -> list[Example]:
    """Filter, rank and keep ``n`` of a registered dataset's raw records (from a file or any other source).

    This is the one sampling rule (see the module docstring) for every source, so a run from the hub
    (`scout_eval.sources`) is the same pure function of ``(name, n, seed, filters)`` as a run from a file.
    Filters run before sampling, so ``n`` counts surviving examples:
    ``answerable_only`` drops unanswerable items (SQuAD v2 ``is_impossible`` or an empty answer list);
    ``max_context_chars`` drops (never truncates, which could cut the answer out) items whose context is
    longer; ``subjects`` keeps MMLU items of those subjects (ValueError for a set without subjects or for a
    subject that never occurs, so a typo does not silently yield an empty sample).
    Fewer than ``n`` items come back only when fewer survive the filters.
    """
    spec = _spec(name)
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_context_chars is not None and max_context_chars < 0:
        raise ValueError(f"max_context_chars must be >= 0, got {max_context_chars}")
    wanted_subjects = set(subjects) if subjects is not None else None
    seen_subjects: set[str] = set()

    def survivors() -> Iterator[tuple[bytes, str, dict[str, Any]]]:
        for record in records:
            if wanted_subjects is not None:
                subject = record.get("subject")
                if subject is None:
                    raise ValueError(f"dataset {name!r} has no subjects; 'subjects' applies to MMLU only")
                seen_subjects.add(subject)
                if subject not in wanted_subjects:
                    continue
            if answerable_only and (record.get("is_impossible") or not record.get("answers")):
                continue
            if max_context_chars is not None and len(record.get("context") or "") > max_context_chars:
                continue
            rid = str(record["id"])
            yield sample_key(seed, rid), rid, record

    def rank(item: tuple[bytes, str, dict[str, Any]]) -> tuple[bytes, str]:
        return item[0], item[1]

    ranked: list[tuple[bytes, str, dict[str, Any]]]
    if n is None:
        ranked = sorted(survivors(), key=rank)
    elif n == 0:
        # heapq.nsmallest(0, ...) would not read the records at all, which would skip the subject check below.
        for _ in survivors():
            pass
        ranked = []
    else:
        ranked = heapq.nsmallest(n, survivors(), key=rank)
    if wanted_subjects is not None:
        missing = wanted_subjects - seen_subjects
        if missing:
            known = ", ".join(sorted(seen_subjects))
            raise ValueError(f"unknown subjects for {name!r}: {sorted(missing)}; known: {known}")
    return [to_example(record, default_dataset=spec.task) for _, _, record in ranked]


def load_examples(
    name: str,
    *,
    n: int | None = None,
    seed: int = 0,
    answerable_only: bool = False,
    max_context_chars: int | None = None,
    subjects: list[str] | None = None,
    data_dir: Path | str | None = None,
    path: Path | str | None = None,
) -> list[Example]:
    """Load a deterministic, seeded sample of a registered dataset from its file (see `sample_records`).

    The file is ``path`` when given (a caller that already resolved it with `dataset_source`, so the hash it
    recorded is of the file read), else the data root's copy (``data_dir``, ``$SCOUT_DATA``, the default data
    directory) or, failing that, the packaged sample (`scout.dataroot`). Files only: the hub is read by
    `scout_eval.sources`.
    """
    _spec(name)
    file = Path(path) if path is not None else dataset_path(name, data_dir)
    return sample_records(
        name,
        load_jsonl(file),
        n=n,
        seed=seed,
        answerable_only=answerable_only,
        max_context_chars=max_context_chars,
        subjects=subjects,
    )


def check_dataset_file(path: Path, *, max_problems: int = 5) -> tuple[int, list[str]]:
    """(records, problems) of a JSONL file checked against the record schema, for ``scout data import``.

    Every line must be a JSON object with a non-empty ``id`` (unique in the file), a string ``question``, a list
    of string ``answers``, a string ``context`` if present, and map to an `Example`. Reading goes through
    `load_jsonl` (``for line in f``: strings hold U+2028). At most ``max_problems`` problems are listed.
    """
    problems: list[str] = []
    seen: set[str] = set()
    count = 0
    default = path.parent.name
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if len(problems) >= max_problems:
                    break
                if not line.strip():
                    continue
                count += 1
                problem = _record_problem(line, seen, default)
                if problem:
                    problems.append(f"{path.name}:{lineno}: {problem}")
    except UnicodeDecodeError as exc:
        problems.append(f"{path.name}: not UTF-8 ({exc.reason})")
    if count == 0 and not problems:
        problems.append(f"{path.name}: no records")
    return count, problems


def _json_error(exc: Exception) -> str:
    """A short reason for a line `json.loads` refused (a decode error's own message, or the error's kind)."""
    return str(getattr(exc, "msg", "") or type(exc).__name__)


def _record_problem(line: str, seen: set[str], default_dataset: str) -> str | None:
    """What is wrong with one JSONL line, or None."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, deep nesting
        return f"invalid JSON: {_json_error(exc)}"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    rid = record.get("id")
    if not isinstance(rid, str | int) or str(rid) == "":
        return "missing or empty 'id'"
    if str(rid) in seen:
        return f"duplicate id {rid!r}"
    seen.add(str(rid))
    if not isinstance(record.get("question"), str):
        return "'question' must be a string"
    answers = record.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "'answers' must be a list of strings"
    if "context" in record and not isinstance(record["context"], str):
        return "'context' must be a string"
    try:
        to_example(record, default_dataset=default_dataset)
    except (ValueError, TypeError) as exc:
        return f"does not fit the record schema: {str(exc).splitlines()[0]}"
    return None
