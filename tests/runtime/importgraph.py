"""Every import in the product's source, as data: who imports what, from which file and line.

The layering test reads the source with `ast` instead of importing it, so that an import hidden inside a function,
a method, a `TYPE_CHECKING` block or an `importlib.import_module("...")` call counts the same as one at the top of
a module: a lazy import that points up the layers is still an upward edge, it is only discovered later (at the
first call, in production). The checker is pure (paths in, findings out), so a test can run it over a tiny fake
package tree and watch it fail.

Edges are what the source names: `import a.b` and `from a import b` (b a submodule) are edges to `a.b`, and
`from a.b import thing` is an edge to `a.b`. Python also runs the parent packages' `__init__` first; that implied
edge is not drawn, or every package whose `__init__` re-exports its children would be a circle with each child.
`TYPE_CHECKING` imports count like any other: a circle that only type checkers see is still a circle in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Names a call may use to import a module by string.
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Package:
    """One top-level package of the product: its import name and the folder that holds it."""

    name: str
    parent: Path  # the folder that contains the package folder (what sits on sys.path)

    @property
    def folder(self) -> Path:
        return self.parent / self.name


@dataclass(frozen=True)
class Edge:
    """One import: `importer` (a module) pulls in `imported` (a module name, project or not)."""

    path: Path
    line: int
    importer: str
    imported: str
    how: str  # "import" | "from" | "dynamic" | "dynamic-fstring"

    @property
    def top(self) -> str:
        return self.imported.split(".")[0]

    def describe(self, root: Path | None = None) -> str:
        shown = self.path.relative_to(root) if root and self.path.is_relative_to(root) else self.path
        return f"{shown}:{self.line}: {self.importer} -> {self.imported} ({self.how})"


@dataclass
class ImportGraph:
    """The modules of a set of packages and every import edge out of them."""

    packages: tuple[Package, ...]
    modules: dict[str, Path] = field(default_factory=dict)  # module name -> file
    edges: list[Edge] = field(default_factory=list)

    def package_of(self, module: str) -> str | None:
        """The product package a module name belongs to, or None for a third-party/stdlib module."""
        top = module.split(".")[0]
        return top if any(p.name == top for p in self.packages) else None

    def project_edges(self) -> list[Edge]:
        return [e for e in self.edges if self.package_of(e.imported)]


def module_name(package: Package, path: Path) -> str:
    """`libs/scout/selection/base.py` -> `scout.selection.base`; a package's `__init__.py` names the package."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(importer: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a `from ..x import y` names, as Python resolves it (PEP 328)."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    if not base:
        raise ValueError(f"relative import beyond the top-level package in {importer}")
    return ".".join(base + ([name] if name else []))


def _nearest_module(name: str, modules: Mapping[str, Path]) -> str:
    """The longest prefix of `name` that is a known module (`scout.x.Thing` -> `scout.x`); `name` if none is."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def _dynamic_target(call: ast.Call) -> tuple[str, str] | None:
    """(module name, how) for `import_module("x")` / `__import__("x")`, or for an f-string, its constant prefix."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in DYNAMIC_IMPORTERS or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value, "dynamic"
    if isinstance(arg, ast.JoinedStr) and arg.values:
        head = arg.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value:
            return head.value.rstrip("."), "dynamic-fstring"
    return None


def scan_file(path: Path, importer: str, is_package: bool, modules: Mapping[str, Path]) -> list[Edge]:
    """Every import in one file, wherever it sits in the tree (ast.walk visits function bodies and `if` blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []

    def add(line: int, target: str, how: str) -> None:
        edges.append(Edge(path, line, importer, _nearest_module(target, modules), how))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name, "import")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                source = _resolve_relative(importer, is_package, node.level, node.module)
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import sub` where `sub` is a module is an edge to the submodule, not to pkg/__init__.
                sub = f"{source}.{alias.name}"
                add(node.lineno, sub if sub in modules else source, "from")
        elif isinstance(node, ast.Call) and (found := _dynamic_target(node)):
            target, how = found
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                target = _resolve_relative(importer, is_package, level, target.lstrip(".") or None)
            add(node.lineno, target, how)
    return edges


def build_graph(packages: Iterable[Package]) -> ImportGraph:
    """Index every module of `packages`, then scan each for its imports."""
    graph = ImportGraph(tuple(packages))
    files: list[tuple[Package, Path]] = []
    for package in graph.packages:
        for path in sorted(package.folder.rglob("*.py")):
            graph.modules[module_name(package, path)] = path
            files.append((package, path))
    for package, path in files:
        graph.edges += scan_file(path, module_name(package, path), path.name == "__init__.py", graph.modules)
    return graph


def layer_violations(graph: ImportGraph, allowed: Mapping[str, Iterable[str]]) -> list[Edge]:
    """Edges from one product package into another that `allowed` does not list (a package may import itself)."""
    bad = []
    for edge in graph.project_edges():
        source = graph.package_of(edge.importer)
        target = graph.package_of(edge.imported)
        if source and target and target != source and target not in set(allowed.get(source, ())):
            bad.append(edge)
    return bad


def forbidden_imports(graph: ImportGraph, package: str, forbidden: Iterable[str]) -> list[Edge]:
    """Edges from `package` to any module under one of the top-level names in `forbidden`."""
    names = set(forbidden)
    return [e for e in graph.edges if graph.package_of(e.importer) == package and e.top in names]


def dynamic_project_imports(graph: ImportGraph) -> list[Edge]:
    """`import_module`/`__import__` of the product's own modules: they hide an edge from readers and from tools."""
    return [e for e in graph.project_edges() if e.how.startswith("dynamic")]


def unpickling(graph: ImportGraph, unpicklers: Iterable[str]) -> list[str]:
    """`file:line: what` for each import of an unpickler, each `torch.load`, each `allow_pickle=` that is not False."""
    names = set(unpicklers)
    found = [(e.path, e.line, f"{e.importer} imports {e.imported}") for e in graph.edges if e.top in names]
    for module, path in graph.modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", "") == "torch":
                found.append((path, node.lineno, f"{module} calls torch.load"))
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not _is_false(node.value):
                found.append((path, node.value.lineno, f"{module} passes allow_pickle"))
    return [f"{path}:{line}: {what}" for path, line, what in sorted(found)]


def _is_false(value: ast.expr) -> bool:
    return isinstance(value, ast.Constant) and value.value is False


def module_cycles(graph: ImportGraph) -> list[list[Edge]]:
    """One concrete cycle per strongly connected group of modules (Tarjan), as the edges that close it.

    A group of modules that reach each other is one circle to break, however many distinct cycles run through it;
    printing one shortest cycle per group keeps the failure readable and names a file:line to start from.
    """
    out: dict[str, dict[str, Edge]] = {}
    for edge in graph.project_edges():
        if edge.imported in graph.modules and edge.imported != edge.importer:
            out.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    return [_shortest_cycle(group, out) for group in _strongly_connected(graph.modules, out) if len(group) > 1]


def _strongly_connected(nodes: Iterable[str], out: Mapping[str, Mapping[str, Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a deep package would overflow Python's recursion limit otherwise)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(out.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(out.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def _shortest_cycle(group: list[str], out: Mapping[str, Mapping[str, Edge]]) -> list[Edge]:
    """A shortest cycle through the group's first module (breadth-first inside the group)."""
    members = set(group)
    start = group[0]
    parent: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child, edge in sorted(out.get(node, {}).items()):
                if child not in members:
                    continue
                if child == start:
                    path = [edge]
                    while path[0].importer != start:
                        path.insert(0, parent[path[0].importer])
                    return path
                if child not in parent:
                    parent[child] = edge
                    following.append(child)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")  # unreachable for a Tarjan group


def format_cycle(cycle: list[Edge], root: Path | None = None) -> str:
    """`a -> b -> a`, then each edge's file:line, so the reader knows which import to move."""
    chain = " -> ".join([cycle[0].importer] + [e.imported for e in cycle])
    return chain + "".join(f"\n    {e.describe(root)}" for e in cycle)
