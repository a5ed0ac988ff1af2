"""A non-root shaper may rely on tc's NET_ADMIN file capability (how the Helm chart runs the sidecar)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scout_services.shaper import handlers

STATUS = "Name:\tpython\nCapEff:\t0000000000000000\nCapBnd:\t{bnd}\nNoNewPrivs:\t{nnp}\n"
NET_ADMIN_BND = f"{1 << 12:016x}"


def _fake_tc(tmp_path: Path, caps_low_word: int | None) -> Path:
    tc = tmp_path / "tc"
    shutil.copy(shutil.which("true") or "/bin/true", tc)
    if caps_low_word is not None:
        # vfs_cap_data revision 2: magic_etc, then permitted/inheritable low and high words
        data = (0x02000001).to_bytes(4, "little") + caps_low_word.to_bytes(4, "little") + bytes(12)
        try:
            os.setxattr(tc, "security.capability", data)
        except OSError as exc:
            pytest.skip(f"cannot set file capabilities here: {exc}")
    return tc


@pytest.mark.parametrize(
    ("file_caps", "bnd", "nnp", "expected"),
    [
        (1 << 12, NET_ADMIN_BND, "0", True),
        (1 << 12, NET_ADMIN_BND, "1", False),  # no_new_privs: file capabilities are ignored
        (1 << 12, "0" * 16, "0", False),  # NET_ADMIN not in the bounding set
        (1 << 21, NET_ADMIN_BND, "0", False),  # tc carries another capability
        (None, NET_ADMIN_BND, "0", False),  # tc carries none
    ],
)
def test_tc_file_capability_counts_only_when_it_can_take_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_caps: int | None, bnd: str, nnp: str, expected: bool
) -> None:
    tc = _fake_tc(tmp_path, file_caps)
    status = tmp_path / "status"
    status.write_text(STATUS.format(bnd=bnd, nnp=nnp))
    monkeypatch.setattr(handlers.shutil, "which", lambda name: str(tc) if name == "tc" else None)
    assert handlers.tc_gains_net_admin(status) is expected
