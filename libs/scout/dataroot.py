"""Where datasets and traces come from: a data directory the user fills, else the samples packaged with Scout.

Why: a fresh clone has nothing beside it, so Scout carries small, licensed samples of every dataset and the
redistributable traces (``scout/data``, read with `importlib.resources`), and reads the full sets from a data
directory that ``scout data import PATH`` fills. Every read says where it came from (`DataSource`: the source and
the SHA-256 of the file), so a result can always be traced to the exact bytes behind it.

Resolution, first match wins:

1. an explicit directory (``--data-dir``: the ``data_dir`` argument, or `using_data_dir` around a call tree);
2. ``$SCOUT_DATA``;
3. the default data directory (platformdirs' user data dir, e.g. ``~/.local/share/scout``) if it holds data;
4. the packaged samples.

A data root mirrors the layout of the folder it is imported from: ``<root>/data/<dataset>/<file>.jsonl`` and
``<root>/traces/<name>.csv`` (so ``scout data import <folder with data/ and traces/>`` works). A dataset the root
lacks falls back to the packaged sample (the `DataSource` says so); one that exists nowhere raises `DataNotFound`,
naming the three ways to get it. The Hugging Face hub is not read here: the core reads files only, and the
evaluation layer (`scout_eval`) owns ``--source hub``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.resources import files
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict

__all__ = [
    "DATA_ENV",
    "HUB",
    "PACKAGED",
    "DataNotFound",
    "DataRoot",
    "DataRootError",
    "DataSource",
    "default_data_dir",
    "file_source",
    "locate_dataset",
    "packaged_dir",
    "resolve_data_root",
    "sha256_file",
    "target_data_dir",
    "trace_folders",
    "using_data_dir",
]

DATA_ENV = "SCOUT_DATA"
"""Environment variable naming the data directory (a root with ``data/`` and ``traces/``)."""
APP_NAME = "scout"
PACKAGED = "packaged-sample"
HUB = "hub"
DATASETS_SUBDIR = "data"
TRACES_SUBDIR = "traces"

_override: ContextVar[Path | None] = ContextVar("scout_data_dir", default=None)


class DataRootError(ValueError):
    """A data directory that was named explicitly (``--data-dir`` or ``$SCOUT_DATA``) is not a directory."""


class DataNotFound(FileNotFoundError):
    """A dataset or trace exists in no source; the message names the three ways to get it."""

    def __init__(self, what: str, searched: list[str]) -> None:
        self.what = what
        self.searched = searched
        where = "; ".join(searched) if searched else "nowhere"
        super().__init__(
            f"{what} is not available here (searched: {where}). Get it one of three ways: "
            f"`scout data import PATH` (a folder with data/<dataset>/*.jsonl and traces/*.csv), "
            f"point {DATA_ENV} or --data-dir at such a folder, "
            f"or read the full set from the Hugging Face hub with `--source hub` (needs the 'hub' extra)"
        )


class DataSource(BaseModel):
    """Where one dataset or trace file was read from, and the SHA-256 of its bytes (``None`` for the hub)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    """``data-dir:<path>``, ``packaged-sample`` or ``hub``."""
    path: str | None = None
    sha256: str | None = None

    @property
    def is_packaged(self) -> bool:
        return self.source == PACKAGED


class DataRoot(BaseModel):
    """The data directory in effect and why (``--data-dir``, ``SCOUT_DATA``, ``default``), or none."""

    model_config = ConfigDict(frozen=True)

    path: Path | None
    origin: str

    @property
    def source(self) -> str:
        return f"data-dir:{self.path}"


def default_data_dir() -> Path:
    """The per-user data directory (``~/.local/share/scout`` on Linux), whether or not it exists."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def packaged_dir() -> Path:
    """The samples shipped inside the package (``scout/data``); Scout installs as plain files, never zipped."""
    root = files("scout") / "data"
    return Path(str(root))


def holds_data(root: Path) -> bool:
    """True when ``root`` has at least one dataset JSONL under ``data/`` or one trace CSV under ``traces/``."""
    return any((root / DATASETS_SUBDIR).glob("*/*.jsonl")) or any((root / TRACES_SUBDIR).glob("*.csv"))


@contextmanager
def using_data_dir(path: Path | str | None) -> Iterator[None]:
    """Make ``path`` the explicit data directory for every lookup inside the block (``--data-dir`` of a command
    whose reads happen deep in library code); ``None`` changes nothing."""
    token = _override.set(Path(path).expanduser() if path is not None else _override.get())
    try:
        yield
    finally:
        _override.reset(token)


def _checked(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise DataRootError(f"{origin} {str(path)!r} is not a directory")
    return path.resolve()


def resolve_data_root(data_dir: Path | str | None = None) -> DataRoot:
    """The data directory in effect: ``data_dir`` > `using_data_dir` > ``$SCOUT_DATA`` > the default one if it
    holds data; ``DataRoot(path=None)`` when only the packaged samples are left. An explicitly named directory
    that does not exist is a `DataRootError` (a typo should not silently fall back to the samples)."""
    if data_dir is not None:
        return DataRoot(path=_checked(Path(data_dir).expanduser(), "--data-dir"), origin="--data-dir")
    override = _override.get()
    if override is not None:
        return DataRoot(path=_checked(override, "--data-dir"), origin="--data-dir")
    env = os.environ.get(DATA_ENV)
    if env:
        return DataRoot(path=_checked(Path(env).expanduser(), DATA_ENV), origin=DATA_ENV)
    default = default_data_dir()
    if default.is_dir() and holds_data(default):
        return DataRoot(path=default.resolve(), origin="default")
    return DataRoot(path=None, origin="packaged samples only")


def target_data_dir(data_dir: Path | str | None = None) -> DataRoot:
    """The directory ``scout data import`` writes to and ``scout data list`` shows: ``data_dir`` >
    `using_data_dir` > ``$SCOUT_DATA`` > the default data directory, whether or not it exists yet."""
    if data_dir is not None:
        return DataRoot(path=Path(data_dir).expanduser().absolute(), origin="--data-dir")
    override = _override.get()
    if override is not None:
        return DataRoot(path=override.absolute(), origin="--data-dir")
    env = os.environ.get(DATA_ENV)
    if env:
        return DataRoot(path=Path(env).expanduser().absolute(), origin=DATA_ENV)
    return DataRoot(path=default_data_dir(), origin="default")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_source(path: Path, source: str, *, with_hash: bool = True) -> DataSource:
    """A `DataSource` for a file that was found, with its hash unless ``with_hash`` is off (a caller that only
    needs the path should not read 10 MB to hash it)."""
    return DataSource(source=source, path=str(path), sha256=sha256_file(path) if with_hash else None)


def locate_dataset(
    name: str,
    relpath: str,
    data_dir: Path | str | None = None,
    *,
    packaged_only: bool = False,
    with_hash: bool = True,
) -> DataSource:
    """Find a registered dataset's file (``relpath`` under ``data/``): the data root, then the packaged sample.

    ``packaged_only`` skips the data root (``--source sample``). Raises `DataNotFound` when neither has it.
    """
    searched: list[str] = []
    if not packaged_only:
        root = resolve_data_root(data_dir)
        if root.path is not None:
            candidate = root.path / DATASETS_SUBDIR / relpath
            if candidate.is_file():
                return file_source(candidate, root.source, with_hash=with_hash)
            searched.append(f"{root.origin} {root.path}")
    packaged = packaged_dir() / "datasets" / relpath
    if packaged.is_file():
        return file_source(packaged, PACKAGED, with_hash=with_hash)
    searched.append("the packaged samples")
    raise DataNotFound(f"dataset {name!r}", searched)


def trace_folders(data_dir: Path | str | None = None) -> list[tuple[Path, str]]:
    """The trace folders to search, in order, with each one's source: the data root's ``traces/`` (if it has
    one), then the packaged traces."""
    out: list[tuple[Path, str]] = []
    root = resolve_data_root(data_dir)
    if root.path is not None and (root.path / TRACES_SUBDIR).is_dir():
        out.append((root.path / TRACES_SUBDIR, root.source))
    packaged = packaged_dir() / "traces"
    if packaged.is_dir():
        out.append((packaged, PACKAGED))
    return out
