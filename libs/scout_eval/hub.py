"""Read the registered sets from the Hugging Face hub instead of local files, in the same record schema.

Why: the committed results use offline JSONL files (a data directory filled by ``scout data import``; no hub is
reachable on the machines that made them), but a researcher with network access wants the full sets (all 11,873
SQuAD v2 dev items, all 7,405 HotpotQA distractor items) without converting files by hand. ``scout eval run
--source hub`` (`scout_eval.runner.load_run_examples`) streams the rows named in `HF_SOURCES` through the
converters below and then filters, ranks and samples them with `scout.datasets.sample_records`, exactly as it does
the local files, so a run is still a pure function of ``(name, n, seed, filters)``. The core library never imports
this module: it reads files only.

The converters produce the local files' layout field for field (the record schema in ``scout/data/README.md``
and `scout.datasets.Example`): SQuAD v2 keeps
every gold answer (duplicates included) and marks unanswerable items; HotpotQA joins each paragraph's title
and sentences the way the local context does and keeps ``paragraphs``/``supporting_facts``; MMLU numbers items
per subject and split (``abstract_algebra_test_0``) and turns the answer index into its letter; TriviaQA keeps
the MRQA TriviaQA-web rows (ids are MRQA's ``qid``, so samples differ from the local file's).
`tests/unit/test_hub.py` holds each converter equal to the local records it mirrors.

Needs the optional ``datasets`` package (``pip install -e '.[hub]'``); without it, or without a reachable hub,
`HubUnavailable` says so. Nothing here is imported unless ``--source hub`` is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["CONVERTERS", "HubUnavailable", "hub_records"]


class HubUnavailable(RuntimeError):
    """The hub cannot be read here: ``datasets`` is not installed, or the hub is unreachable or refuses."""


def squad_v2(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``rajpurkar/squad_v2``: answers are ``{"text": [...], "answer_start": [...]}``; empty = unanswerable."""
    for row in rows:
        answers = [str(t) for t in (row.get("answers") or {}).get("text") or []]
        yield {
            "id": str(row["id"]),
            "dataset": "squad_v2",
            "title": str(row.get("title") or ""),
            "context": str(row["context"]),
            "question": str(row["question"]),
            "answers": answers,
            "is_impossible": not answers,
        }


def hotpotqa(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``hotpotqa/hotpot_qa`` (distractor): context is ``{"title": [...], "sentences": [[...], ...]}``."""
    for row in rows:
        ctx = row.get("context") or {}
        paragraphs = [
            {"title": str(t), "sentences": [str(s) for s in sents]}
            for t, sents in zip(ctx.get("title") or [], ctx.get("sentences") or [], strict=True)
        ]
        facts = row.get("supporting_facts") or {}
        yield {
            "id": str(row["id"]),
            "dataset": "hotpotqa",
            "context": "\n\n".join(p["title"] + "\n" + "".join(p["sentences"]) for p in paragraphs),
            "question": str(row["question"]),
            "answers": [str(row["answer"])],
            "type": row.get("type"),
            "level": row.get("level"),
            "supporting_facts": [
                [str(t), int(i)] for t, i in zip(facts.get("title") or [], facts.get("sent_id") or [], strict=True)
            ],
            "paragraphs": paragraphs,
        }


def _mmlu(split: str) -> Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]:
    def convert(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``cais/mmlu``: ``answer`` is the choice index; ids number the items of each subject in order."""
        seen: dict[str, int] = {}
        for row in rows:
            subject = str(row["subject"])
            index = seen.get(subject, 0)
            seen[subject] = index + 1
            choices = [str(c) for c in row["choices"]]
            answer = int(row["answer"])
            if not 0 <= answer < len(choices):
                raise ValueError(f"MMLU row {subject}_{split}_{index}: answer {answer} outside its choices")
            yield {
                "id": f"{subject}_{split}_{index}",
                "dataset": "mmlu",
                "subject": subject,
                "split": split,
                "context": "",
                "question": str(row["question"]),
                "choices": choices,
                "answer_index": answer,
                "answers": ["ABCDEFGHIJ"[answer]],
            }

    return convert


def triviaqa(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``mrqa-workshop/mrqa``: every MRQA subset in one split; only TriviaQA-web rows are kept."""
    for row in rows:
        if row.get("subset") != "TriviaQA-web":
            continue
        yield {
            "id": str(row["qid"]),
            "dataset": "triviaqa",
            "context": str(row["context"]),
            "question": str(row["question"]),
            "answers": [str(a) for a in row.get("answers") or []],
            "answer_source": "mrqa",
        }


def _longbench(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``THUDM/LongBench`` triviaqa: ``input`` is the question, ``context`` the few-shot passages."""
    for row in rows:
        yield {
            "id": str(row["_id"]),
            "dataset": "triviaqa",
            "context": str(row["context"]),
            "question": str(row["input"]),
            "answers": [str(a) for a in row.get("answers") or []],
            "answer_source": "longbench",
        }


CONVERTERS: dict[str, Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]] = {
    "squad_v2": squad_v2,
    "hotpotqa": hotpotqa,
    "mmlu": _mmlu("test"),
    "mmlu_dev": _mmlu("dev"),
    "triviaqa": triviaqa,
    "triviaqa_longbench": _longbench,
}
"""Registered dataset name -> converter from its hub rows (`scout.datasets.HF_SOURCES`) to local records."""


def hub_records(name: str) -> Iterator[dict[str, Any]]:
    """Stream the hub rows of a registered set, converted to the local record schema.

    Raises `HubUnavailable` (with what to do) when ``datasets`` is missing or the hub cannot be read, and
    ValueError for a set with no hub source.
    """
    from scout.datasets import HF_SOURCES

    if name not in HF_SOURCES or name not in CONVERTERS:
        raise ValueError(f"no hub source for dataset {name!r}; hub sets: {', '.join(sorted(HF_SOURCES))}")
    if importlib.util.find_spec("datasets") is None:
        raise HubUnavailable(
            "reading from the Hugging Face hub needs the 'datasets' package: pip install -e '.[hub]' "
            "(or use local files: --source file, after `scout data import PATH`)"
        )
    import datasets

    src = HF_SOURCES[name]
    try:
        rows = datasets.load_dataset(src.path, src.config, split=src.split, streaming=True)
        yield from CONVERTERS[name](rows)
    except OSError as exc:  # network, offline mode, missing repo (hub errors derive from OSError)
        raise HubUnavailable(
            f"cannot read {src.path} ({src.config or 'default'}, {src.split}) from the hub: {type(exc).__name__}: {exc}"
        ) from exc
