"""`scout data list` and `scout data import PATH`: where datasets and traces come from, and filling the data directory.

Why: Scout ships small samples (`scout/data`) so a fresh clone runs; the full sets and the measured uplink traces
are not redistributable with it and live in a data directory the user fills (`scout.dataroot`). ``import`` checks
every file before it copies it (a malformed record or trace would otherwise fail deep inside an experiment, or
worse, replay something else), and ``list`` says what each source holds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field
from rich.table import Table

from scout_cli.console import console, fail, print_table, say

__all__ = ["ImportReport", "data_inventory", "import_folder", "register"]

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="data directory (default: $SCOUT_DATA, then the user data directory)"),
]


class ImportReport(BaseModel):
    """What ``scout data import`` did: files copied, files rejected (with why), where to."""

    source: str
    destination: str
    copied: list[str] = Field(default_factory=list)
    rejected: dict[str, str] = Field(default_factory=dict)
    records: dict[str, int] = Field(default_factory=dict)


def _copy(src: Path, dest: Path) -> None:
    """Copy bytes only (the source may be read-only), through a temporary file and an atomic rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def import_folder(source: Path, destination: Path) -> ImportReport:
    """Validate and copy ``source/data/<dataset>/*.jsonl`` and ``source/traces/*.csv`` (plus the traces'
    ``README.md``, which says what each trace is) into ``destination``; invalid files are reported, not copied.

    ValueError when ``source`` holds neither ``data/`` nor ``traces/``.
    """
    from scout.channel.traces import check_trace_file
    from scout.datasets import check_dataset_file

    datasets = sorted((source / "data").glob("*/*.jsonl"))
    traces = sorted((source / "traces").glob("*.csv"))
    if not datasets and not traces:
        raise ValueError(
            f"{source} holds no data/<dataset>/*.jsonl and no traces/*.csv; "
            "give the folder that contains data/ and traces/ (for example a copy of the shared data folder)"
        )
    report = ImportReport(source=str(source), destination=str(destination))
    for path in datasets:
        rel = path.relative_to(source).as_posix()
        count, problems = check_dataset_file(path)
        if problems:
            report.rejected[rel] = "; ".join(problems)
            continue
        _copy(path, destination / rel)
        report.copied.append(rel)
        report.records[rel] = count
    for path in traces:
        rel = path.relative_to(source).as_posix()
        problem = check_trace_file(path)
        if problem:
            report.rejected[rel] = problem
            continue
        _copy(path, destination / rel)
        report.copied.append(rel)
    readme = source / "traces" / "README.md"
    if readme.is_file() and any(rel.startswith("traces/") for rel in report.copied):
        _copy(readme, destination / "traces" / "README.md")
    return report


def _count(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def data_inventory(data_dir: Path | None = None) -> dict[str, Any]:
    """What each source holds: the data directory (path, why, items per dataset, traces), the packaged samples,
    and whether the hub extra is installed."""
    from scout.dataroot import packaged_dir, target_data_dir
    from scout.datasets import DATASETS, HF_SOURCES

    root = target_data_dir(data_dir)
    assert root.path is not None  # target_data_dir always names a directory
    packaged = packaged_dir()
    rows = []
    for name, spec in DATASETS.items():
        hub = HF_SOURCES.get(name)
        rows.append(
            {
                "dataset": name,
                "file": spec.relpath,
                "packaged_items": _count(packaged / "datasets" / spec.relpath),
                "data_dir_items": _count(root.path / "data" / spec.relpath),
                "hub": f"{hub.path}:{hub.config or 'default'}:{hub.split}" if hub else None,
            }
        )
    traces = [{"trace": p.stem, "source": root.source} for p in sorted((root.path / "traces").glob("*.csv"))]
    seen = {t["trace"] for t in traces}
    traces += [
        {"trace": p.stem, "source": "packaged-sample"}
        for p in sorted((packaged / "traces").glob("*.csv"))
        if p.stem not in seen
    ]
    return {
        "data_dir": {"path": str(root.path), "origin": root.origin, "exists": root.path.is_dir()},
        "packaged_dir": str(packaged),
        "hub_installed": importlib.util.find_spec("datasets") is not None,
        "datasets": rows,
        "traces": traces,
    }


def data_list(
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """What is available from each source: the packaged samples, the data directory, the hub."""
    inv = data_inventory(data_dir)
    if as_json:
        console.print_json(data=inv)
        return
    d = inv["data_dir"]
    state = "" if d["exists"] else " (does not exist yet)"
    say(f"data directory: {d['path']} ({d['origin']}){state}")
    say(f"packaged samples: {inv['packaged_dir']}")
    hub = "installed" if inv["hub_installed"] else "not installed (pip install -e '.[hub]')"
    say(f"hub extra ('datasets' package): {hub}")
    table = Table("dataset", "packaged sample", "data directory", "hub (--source hub)", title="datasets (items)")
    for row in inv["datasets"]:
        table.add_row(
            row["dataset"],
            str(row["packaged_items"] if row["packaged_items"] is not None else "-"),
            str(row["data_dir_items"] if row["data_dir_items"] is not None else "-"),
            row["hub"] or "-",
        )
    print_table(table)
    traces = Table("trace", "source", title="traces")
    for t in inv["traces"]:
        traces.add_row(t["trace"], t["source"])
    print_table(traces)
    if not any(row["data_dir_items"] for row in inv["datasets"]):
        say("only the packaged samples are available: import the full sets with `scout data import PATH`")


def data_import(
    path: Annotated[Path, typer.Argument(help="folder with data/<dataset>/*.jsonl and/or traces/*.csv")],
    data_dir: DataDirOption = None,
) -> None:
    """Check every JSONL dataset and CSV trace under PATH and copy the valid ones into the data directory."""
    from scout.dataroot import target_data_dir

    if not path.is_dir():
        fail(f"{path} is not a directory")
    dest = target_data_dir(data_dir).path
    assert dest is not None
    try:
        report = import_folder(path, dest)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    for rel in report.copied:
        n = report.records.get(rel)
        say(f"  copied {rel}" + (f" ({n:,} records)" if n is not None else ""))
    for rel, why in report.rejected.items():
        say(f"  rejected {rel}: {why}")
    say(f"{len(report.copied)} files imported into {dest}, {len(report.rejected)} rejected")
    if report.rejected:
        raise typer.Exit(1)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Adds `scout data list` and `scout data import`."""
    del bench
    data_app = typer.Typer(
        help="Datasets and traces: the packaged samples, the data directory, the hub.", no_args_is_help=True
    )
    data_app.command("list")(data_list)
    data_app.command("import")(data_import)
    app.add_typer(data_app, name="data")
