"""House rules that keep the layers apart: the core never imports network/observability packages, and importing the
runtime does not drag in torch (services start fast; the CLI stays instant)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import scout
import scout_runtime

FORBIDDEN_IN_CORE = ("nats", "redis", "opentelemetry", "kubernetes", "aiohttp", "prometheus_client", "scout_runtime")


def test_core_library_never_imports_runtime_packages() -> None:
    offenders = []
    for path in Path(scout.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE]
    assert offenders == []


def test_runtime_imports_without_torch() -> None:
    modules = sorted(p.stem for p in Path(scout_runtime.__file__).parent.glob("*.py") if p.stem != "__init__")
    assert {
        "bus",
        "errors",
        "limits",
        "messages",
        "metrics",
        "rpc",
        "settings",
        "store",
        "subjects",
        "telemetry",
    } <= set(modules)
    code = (
        "import sys\n"
        + "".join(f"import scout_runtime.{m}\n" for m in modules)
        + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_pickle_anywhere_in_the_runtime() -> None:
    for path in Path(scout_runtime.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name not in ("pickle", "marshal", "shelve", "dill") for a in node.names), path.name
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("pickle", "marshal", "shelve", "dill"), path.name
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", "") == "torch":
                raise AssertionError(f"torch.load in {path.name}")
