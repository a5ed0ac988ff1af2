#!/usr/bin/env python3
"""Rebuild the packaged dataset samples (``libs/scout/data/datasets``) from a full data folder.

Why a script: the samples a fresh clone runs on must be chosen deterministically and reproducibly, and must hold
the items the product's and the tests' own calls ask for (``load_examples("squad_v2", n=4, seed=7,
answerable_only=True, max_context_chars=600)`` and the like), so that those calls return exactly what they return
on the full set. Because `scout.datasets.load_examples` ranks by ``sha256(f"{seed}:{id}")`` over the items that
survive the filters, a sample that contains the full set's top-k for a call returns that same top-k.

Usage (a development tool; the product and the tests never run it)::

    python scripts/make-samples.py /path/to/shared            # the folder holding data/<dataset>/*.jsonl
    python scripts/make-samples.py /path/to/shared --out libs/scout/data/datasets

Lines are copied verbatim, in the source file's order. JSONL is read with ``for line in f`` (never
``splitlines()``, which would also split on U+2028 inside strings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

SQUAD_ITEMS = 32
TRIVIAQA_ITEMS = 16
HOTPOTQA_ITEMS = 16
MMLU_ITEMS = 16
SQUAD_UNANSWERABLE_MIN = 6

SQUAD_CALLS: list[tuple[int, bool, int | None, int]] = [
    # (seed, answerable_only, max_context_chars, n): the calls whose results the sample must reproduce
    (7, True, 600, 8),  # tests/services/conftest.py (n=4), the pipeline bench (n=1), soak documents (n=8)
    (7, True, 700, 16),  # tests/conftest.py squad_answerable (n=8, its first 8), tests/models/test_codec_real (n=16)
    (0, True, 1200, 6),  # scout demo --example 0..5
    (0, True, 700, 2),  # tests/models/test_eval_runner.py
    (0, True, 3000, 2),  # scout eval run ... --n 2 with the default --max-context-chars
]

Record = tuple[str, dict]  # (the verbatim line, its parsed object)


def read(path: Path) -> list[Record]:
    """Every non-blank line of a JSONL file with its parsed record, in file order."""
    out: list[Record] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append((line if line.endswith("\n") else line + "\n", json.loads(line)))
    return out


def key(seed: int, rid: str) -> bytes:
    """`scout.datasets.sample_key`, repeated here so the script runs without the package installed."""
    return hashlib.sha256(f"{seed}:{rid}".encode()).digest()


def top(records: list[Record], seed: int, n: int, keep: Callable[[dict], bool] = lambda r: True) -> list[str]:
    """The ids ``load_examples`` would return: survivors ranked by ``key(seed, id)``, first ``n``."""
    ranked = sorted((key(seed, str(r["id"])), str(r["id"])) for _, r in records if keep(r))
    return [rid for _, rid in ranked[:n]]


def answerable(r: dict) -> bool:
    return bool(r.get("answers")) and not r.get("is_impossible")


def short(limit: int | None) -> Callable[[dict], bool]:
    return lambda r: limit is None or len(r.get("context") or "") <= limit


def squad_ids(records: list[Record]) -> list[str]:
    """The callers' top-k sets, then unanswerable items, then short answerable ones, up to `SQUAD_ITEMS`."""
    chosen: list[str] = []
    for seed, only_answerable, limit, n in SQUAD_CALLS:
        fits = short(limit)
        for rid in top(records, seed, n, lambda r, f=fits, a=only_answerable: f(r) and (answerable(r) or not a)):
            if rid not in chosen:
                chosen.append(rid)
    unanswerable = top(records, 1, SQUAD_ITEMS, lambda r: not answerable(r) and short(1200)(r))
    for rid in unanswerable[:SQUAD_UNANSWERABLE_MIN]:
        if rid not in chosen:
            chosen.append(rid)
    for rid in top(records, 1, 10 * SQUAD_ITEMS, lambda r: answerable(r) and short(1200)(r)):
        if len(chosen) >= SQUAD_ITEMS:
            break
        if rid not in chosen:
            chosen.append(rid)
    if len(chosen) > SQUAD_ITEMS:
        raise SystemExit(f"the callers' sets need {len(chosen)} SQuAD items, more than {SQUAD_ITEMS}")
    return chosen


def write(records: list[Record], ids: list[str], dest: Path) -> int:
    """Copy the lines whose id is in ``ids`` verbatim, in file order; returns how many were written."""
    wanted = set(ids)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line, r in records if str(r["id"]) in wanted]
    if len(lines) != len(wanted):
        raise SystemExit(f"{dest.name}: {len(wanted)} ids chosen, {len(lines)} lines found")
    with dest.open("w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder holding data/<dataset>/<file>.jsonl (a copy of the source datasets)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "libs" / "scout" / "data" / "datasets",
        help="destination (default: libs/scout/data/datasets)",
    )
    args = parser.parse_args()
    data = args.source / "data"
    if not data.is_dir():
        raise SystemExit(f"{data} is not a directory")

    squad = read(data / "squad_v2" / "squad_v2_dev.jsonl")
    trivia = read(data / "triviaqa" / "triviaqa_mrqa_dev.jsonl")
    hotpot = read(data / "hotpotqa" / "hotpotqa_dev_distractor.jsonl")
    mmlu = read(data / "mmlu" / "mmlu_test.jsonl")
    mmlu_dev = read(data / "mmlu" / "mmlu_dev.jsonl")

    mmlu_ids = top(mmlu, 0, MMLU_ITEMS)
    subjects = {r["subject"] for _, r in mmlu if str(r["id"]) in set(mmlu_ids)}
    plan = [
        ("squad_v2/squad_v2_dev.jsonl", squad, squad_ids(squad)),
        ("triviaqa/triviaqa_mrqa_dev.jsonl", trivia, top(trivia, 0, TRIVIAQA_ITEMS)),
        ("hotpotqa/hotpotqa_dev_distractor.jsonl", hotpot, top(hotpot, 0, HOTPOTQA_ITEMS)),
        ("mmlu/mmlu_test.jsonl", mmlu, mmlu_ids),
        ("mmlu/mmlu_dev.jsonl", mmlu_dev, [str(r["id"]) for _, r in mmlu_dev if r["subject"] in subjects]),
    ]
    for rel, records, ids in plan:
        count = write(records, ids, args.out / rel)
        print(f"{rel}: {count} items ({(args.out / rel).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
