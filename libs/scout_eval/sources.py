"""Where an evaluation run's examples come from: a file (data directory or packaged sample) or the hub.

Why here and not in `scout.datasets`: the core library reads files only and never imports the evaluation layer,
while ``--source hub`` needs `scout_eval.hub` (the optional ``datasets`` package and the network). So the
dispatch lives one layer up, and both paths go through the same `scout.datasets.sample_records`, so a run is the
same pure function of ``(dataset, n, seed, filters)`` whatever the source.

Sources:

* ``file``: the data directory's copy (``--data-dir``, ``$SCOUT_DATA``, the default data directory; see
  `scout.dataroot`), else the sample packaged with Scout;
* ``sample``: the packaged sample outright;
* ``hub``: the Hugging Face hub (`scout.datasets.HF_SOURCES`).

Every load returns a `DataSource` (the source and the SHA-256 of the file read); `provenance` adds the file's item
count for ``run.json`` and `describe_source` says it in one line, with how to get the full set when the run used
the sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scout.dataroot import HUB, PACKAGED, DataSource
from scout.datasets import HF_SOURCES, Example, dataset_source, load_examples, sample_records

__all__ = ["SOURCES", "count_records", "describe_source", "load_from_source", "provenance"]

SOURCES = ("file", "sample", "hub")


def load_from_source(
    source: str,
    dataset: str,
    *,
    n: int | None,
    seed: int = 0,
    answerable_only: bool = False,
    max_context_chars: int | None = None,
) -> tuple[list[Example], DataSource]:
    """A seeded sample of ``dataset`` from ``source`` and where it came from.

    ValueError for an unknown source or dataset; `scout.dataroot.DataNotFound` when no file has the dataset;
    `scout_eval.hub.HubUnavailable` when the hub cannot be read.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    filters: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "answerable_only": answerable_only,
        "max_context_chars": max_context_chars,
    }
    if source == HUB:
        from scout_eval.hub import hub_records

        examples = sample_records(dataset, hub_records(dataset), **filters)
        src = HF_SOURCES[dataset]
        return examples, DataSource(source=HUB, path=f"{src.path}:{src.config or 'default'}:{src.split}")
    data = dataset_source(dataset, packaged_only=source == "sample")
    return load_examples(dataset, path=data.path, **filters), data


def count_records(path: str | Path) -> int:
    """Non-blank lines of a JSONL file (``for line in f``: records hold U+2028)."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def provenance(data: DataSource) -> dict[str, Any]:
    """What ``run.json`` records about the data: source, file, SHA-256 and the file's item count."""
    items = count_records(data.path) if data.source != HUB and data.path else None
    return {**data.model_dump(), "items": items}


def describe_source(dataset: str, record: dict[str, Any]) -> str:
    """One line saying where a run's data came from (a `provenance` record), and how to get the full set when it
    is the packaged sample."""
    source = str(record["source"])
    items = f"{record['items']:,}" if isinstance(record.get("items"), int) else "?"
    digest = f", sha256 {str(record['sha256'])[:12]}…" if record.get("sha256") else ""
    if source == PACKAGED:
        return (
            f"{dataset}: using the packaged sample ({items} items{digest}) — import the full set with "
            "`scout data import PATH` (or point SCOUT_DATA/--data-dir at it, or use --source hub)"
        )
    if source == HUB:
        return f"{dataset}: using the Hugging Face hub ({record.get('path')})"
    return f"{dataset}: using the data directory {source.removeprefix('data-dir:')} ({items} items{digest})"
