"""House rules that keep the layers apart, checked over every import in the product (see docs in `importgraph`).

Layers, bottom to top: scout (computation) < scout_runtime (what services share) < scout_services (the roles);
scout_eval sits on scout alone; scout_testbed drives all of those; scout_cli fronts everything. An arrow may only
point down, the module graph has no circles, the core never imports network/observability packages, importing the
runtime does not drag in torch (services start fast; the CLI stays instant), and nothing unpickles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from importgraph import (
    Edge,
    ImportGraph,
    Package,
    build_graph,
    dynamic_project_imports,
    forbidden_imports,
    format_cycle,
    layer_violations,
    module_cycles,
    unpickling,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    Package("scout", ROOT / "libs"),
    Package("scout_runtime", ROOT / "libs"),
    Package("scout_services", ROOT / "services"),
    Package("scout_eval", ROOT / "libs"),
    Package("scout_testbed", ROOT / "libs" / "testbed"),
    Package("scout_cli", ROOT / "libs"),
)
ALLOWED = {
    "scout": (),
    "scout_runtime": ("scout",),
    "scout_services": ("scout", "scout_runtime"),
    "scout_eval": ("scout",),
    "scout_testbed": ("scout", "scout_runtime", "scout_services", "scout_eval"),
    "scout_cli": ("scout", "scout_runtime", "scout_services", "scout_eval", "scout_testbed"),
}
FORBIDDEN_IN_CORE = ("nats", "redis", "opentelemetry", "kubernetes", "aiohttp", "prometheus_client")
UNPICKLERS = ("pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib")


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(PACKAGES)


def _report(title: str, edges: list[Edge], root: Path | None = ROOT) -> str:
    return f"{title} ({len(edges)}):\n  " + "\n  ".join(e.describe(root) for e in edges)


def test_every_package_is_found(graph: ImportGraph) -> None:
    """A moved package must fail here, not silently drop out of every check below."""
    for package in PACKAGES:
        assert package.name in graph.modules, f"{package.folder} is missing"
    assert len(graph.modules) > 50
    assert any(e.how == "from" for e in graph.edges)


def test_imports_only_point_down_the_layers(graph: ImportGraph) -> None:
    bad = layer_violations(graph, ALLOWED)
    assert not bad, _report("imports that point up or across the layers", bad)


def test_no_import_module_of_the_products_own_modules(graph: ImportGraph) -> None:
    """A string import hides the edge from readers, linters and packagers; import the module by name (lazily if
    it is heavy) instead."""
    bad = dynamic_project_imports(graph)
    assert not bad, _report("import_module/__import__ of the product's own modules", bad)


def test_module_graph_has_no_cycles(graph: ImportGraph) -> None:
    cycles = module_cycles(graph)
    assert not cycles, f"import cycles ({len(cycles)}):\n" + "\n".join(format_cycle(c, ROOT) for c in cycles)


def test_core_library_never_imports_runtime_packages(graph: ImportGraph) -> None:
    bad = forbidden_imports(graph, "scout", FORBIDDEN_IN_CORE)
    assert not bad, _report("network/observability imports in the core", bad)


def test_runtime_imports_without_torch(graph: ImportGraph) -> None:
    modules = sorted(m for m in graph.modules if graph.package_of(m) == "scout_runtime")
    names = {m.split(".")[1] for m in modules if "." in m}
    assert {"bus", "errors", "messages", "settings", "store", "subjects", "telemetry"} <= names
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_nothing_in_the_product_unpickles(graph: ImportGraph) -> None:
    """Blobs and messages cross trust boundaries; a pickle load runs whatever the sender wrote."""
    bad = unpickling(graph, UNPICKLERS)
    assert not bad, "unpickling in the product:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------------------------------------------------------
# the checker itself: a fake tree with one of each offence, which it must report
# ---------------------------------------------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def planted(tmp_path: Path) -> ImportGraph:
    _write(
        tmp_path,
        {
            "scout/__init__.py": "",
            "scout/x.py": "def late():\n    import scout_cli.main\n    return scout_cli.main\n",
            "scout/y.py": "import importlib\n\n\ndef load():\n    return importlib.import_module('scout_eval.y')\n",
            "scout/z.py": "def pick(role):\n    return __import__(f'scout_cli.{role}')\n",
            "scout/typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from scout_runtime import bus\n",
            "scout/ring/__init__.py": "from .a import A\n",
            "scout/ring/a.py": "class A:\n    def b(self):\n        from . import b\n        return b\n",
            "scout/ring/b.py": "from scout.ring import a\n",
            "scout/fine.py": "import json\nfrom scout import ring\nfrom .ring.a import A\n",
            "scout/net.py": "class Link:\n    async def open(self):\n        import redis.asyncio\n",
            "scout_cli/__init__.py": "",
            "scout_cli/main.py": "from scout import fine\nfrom scout_eval import y\n",
            "scout_eval/__init__.py": "",
            "scout_eval/y.py": "import scout.x\n",
            "scout_runtime/__init__.py": "",
            "scout_runtime/bus.py": "",
            "scout_runtime/store.py": "def get(b):\n    import numpy, pickle, torch\n"
            "    numpy.load(b, allow_pickle=True)\n"
            "    numpy.load(b, allow_pickle=False)\n"
            "    return torch.load(b), pickle\n",
        },
    )
    return build_graph(Package(name, tmp_path) for name in ("scout", "scout_runtime", "scout_eval", "scout_cli"))


def test_checker_reports_each_planted_upward_import(planted: ImportGraph) -> None:
    found = {(e.importer, e.imported, e.how, e.line) for e in layer_violations(planted, ALLOWED)}
    assert found == {
        ("scout.x", "scout_cli.main", "import", 2),  # inside a function
        ("scout.y", "scout_eval.y", "dynamic", 5),  # importlib.import_module("...")
        ("scout.z", "scout_cli", "dynamic-fstring", 2),  # __import__(f"scout_cli.{role}")
        ("scout.typed", "scout_runtime.bus", "from", 3),  # under TYPE_CHECKING, `from pkg import submodule`
    }
    assert {e.importer for e in dynamic_project_imports(planted)} == {"scout.y", "scout.z"}
    assert [(e.importer, e.imported, e.line) for e in forbidden_imports(planted, "scout", FORBIDDEN_IN_CORE)] == [
        ("scout.net", "redis.asyncio", 3)  # inside a method
    ]
    message = _report("up", layer_violations(planted, ALLOWED), planted.packages[0].parent)
    assert "scout/x.py:2: scout.x -> scout_cli.main (import)" in message


def test_checker_reports_each_planted_unpickler(planted: ImportGraph) -> None:
    assert [line.split(": ", 1)[0].rsplit("/", 1)[-1] for line in unpickling(planted, UNPICKLERS)] == [
        "store.py:2",  # import pickle
        "store.py:3",  # allow_pickle=True (allow_pickle=False on line 4 is fine)
        "store.py:5",  # torch.load
    ]


def test_checker_reports_each_planted_cycle(planted: ImportGraph) -> None:
    cycles = module_cycles(planted)
    rings = sorted(sorted(e.importer for e in cycle) for cycle in cycles)
    # scout.ring.a <-> scout.ring.b (relative, function-level); scout.x -> scout_cli.main -> scout_eval.y -> scout.x
    assert rings == [["scout.ring.a", "scout.ring.b"], ["scout.x", "scout_cli.main", "scout_eval.y"]]
    text = format_cycle(next(c for c in cycles if c[0].importer.startswith("scout.ring")))
    assert text.splitlines()[0] == "scout.ring.a -> scout.ring.b -> scout.ring.a"
    assert "scout/ring/a.py:3: scout.ring.a -> scout.ring.b (from)" in text


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "scout/__init__.py": "from scout import a\n",
            "scout/a.py": "import os\nfrom . import b\n",
            "scout/b.py": "from scout.c import f\n",
            "scout/c.py": "def f():\n    import json\n    return json\n",
            "scout_cli/__init__.py": "import importlib\nM = importlib.import_module('json')\nfrom scout import c\n",
        },
    )
    clean = build_graph(Package(name, tmp_path) for name in ("scout", "scout_cli"))
    assert layer_violations(clean, ALLOWED) == []
    assert dynamic_project_imports(clean) == []
    assert module_cycles(clean) == []
