"""Fixtures shared by the unit tests: a process with no data directory.

Why here: several modules check what the library finds when nothing but the packaged data is there (datasets,
traces, hub records, the data-root resolution); one definition keeps them from drifting apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scout.dataroot import DATA_ENV


@pytest.fixture
def no_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME (returned) and no ``SCOUT_DATA``, ``XDG_DATA_HOME`` or ``SCOUT_SHARED``: the library sees the
    packaged samples only, so a developer's data directory cannot leak into a test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in (DATA_ENV, "XDG_DATA_HOME", "SCOUT_SHARED"):
        monkeypatch.delenv(var, raising=False)
    return home
