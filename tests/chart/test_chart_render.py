"""Every profile lints, renders and validates offline: helm lint --strict, kubernetes-validate --strict at the chart's
minimum and the newest Kubernetes version, the KEDA ScaledObject against its CRD, skaffold.yaml against its schema,
and the plain manifests under k8s/."""

from __future__ import annotations

from pathlib import Path

import chartlib
import pytest
import yaml

PROFILES = list(chartlib.PROFILES)
TEMPLATES = [*sorted(p.name for p in (chartlib.CHART / "templates").glob("*.yaml")), "tests/ask.yaml"]


@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_strict(helm_bin: str, profile: str) -> None:
    files = [str(chartlib.CHART / f) for f in chartlib.PROFILES[profile]]
    args = [a for f in files for a in ("-f", f)]
    proc = chartlib.helm("lint", "--strict", str(chartlib.CHART), *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_validates_against_kubernetes_schemas(render, profile: str) -> None:
    docs = render(profile)
    assert docs
    for version in chartlib.KUBE_VERSIONS:
        assert chartlib.validate_kubernetes(docs, version) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_is_labelled_for_the_release(render, profile: str) -> None:
    for d in render(profile):
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "scout"
        assert labels["app.kubernetes.io/part-of"] == "scout"
        assert labels["app.kubernetes.io/component"]
        assert len(d["metadata"]["name"]) <= 63


def test_every_template_renders_something_in_some_profile(render) -> None:
    """No dead template: each file under templates/ produces at least one object in one of the profiles."""
    sources: set[str] = set()
    for profile in PROFILES:
        text = chartlib.render_text(chartlib.PROFILES[profile])
        sources |= {line.split("scout/templates/", 1)[1] for line in text.splitlines() if line.startswith("# Source:")}
    missing = set(TEMPLATES) - sources
    assert not missing, f"templates that render nothing in any profile: {missing}"


def test_gpu_scaledobject_validates_against_keda_crd(render) -> None:
    checked, errors = chartlib.validate_keda(render("gpu"))
    assert checked == 1
    assert errors == []


def test_keda_crd_schema_is_strict_and_catches_a_misspelt_field(render) -> None:
    so = chartlib.find(render("gpu"), "ScaledObject", "scout-cloud-decoder")
    bad = {**so, "spec": {**so["spec"], "minReplicas": 1}}  # the field is minReplicaCount
    _, errors = chartlib.validate_keda([bad])
    assert any("minReplicas" in e for e in errors)
    numeric = {**so, "spec": {**so["spec"], "triggers": [{"type": "nats-jetstream", "metadata": {"lagThreshold": 5}}]}}
    _, errors = chartlib.validate_keda([numeric])
    assert any("lagThreshold" in e for e in errors)


def test_skaffold_and_its_profiles_validate() -> None:
    configs = chartlib.skaffold_configs()
    assert set(configs) == {"", "cpu", "gpu", "traces"}
    assert chartlib.validate_skaffold() == []
    # Each profile deploys the chart with its values; gpu builds the CUDA variant.
    releases = {n: c["deploy"]["helm"]["releases"][0] for n, c in configs.items()}
    assert releases[""]["valuesFiles"] == ["charts/scout/values-cpu.yaml"]
    assert releases["gpu"]["valuesFiles"] == ["charts/scout/values-gpu.yaml"]
    assert configs["gpu"]["build"]["artifacts"][0]["docker"]["buildArgs"]["TORCH_VARIANT"].startswith("cu")
    assert "k8s/dev/values-traces.yaml" in releases["traces"]["valuesFiles"]
    assert all(r["chartPath"] == "charts/scout" for r in releases.values())


def test_skaffold_traces_profile_renders_with_real_traces(helm_bin: str) -> None:
    """The dev overlay renders with the trace files skaffold passes: the ones packaged with the library, inside the
    checkout, so `skaffold dev -p traces` works from a fresh clone."""
    release = chartlib.skaffold_configs()["traces"]["deploy"]["helm"]["releases"][0]
    files = [chartlib.REPO / f for f in release["valuesFiles"]]
    set_files = {k: (chartlib.REPO / v).resolve() for k, v in release["setFiles"].items()}
    assert all(p.is_relative_to(chartlib.PACKAGED_TRACES) for p in set_files.values()), set_files
    docs = chartlib.render(files, set_files=set_files)
    traces = chartlib.find(docs, "ConfigMap", "scout-traces")
    assert set(traces["data"]) == {"lumos_driving.csv", "lumos_walking.csv"}
    assert all(v.startswith("t_s,mbps\n") for v in traces["data"].values())
    assert chartlib.validate_kubernetes(docs, chartlib.KUBE_VERSIONS[-1]) == []
    # Every device of the overlay that replays a trace names one that skaffold loads.
    overlay = yaml.safe_load((chartlib.REPO / "k8s/dev/values-traces.yaml").read_text())
    named = {d["trace"] for d in overlay["devices"] if "trace" in d}
    assert named and named <= {k.removeprefix("traces.") for k in set_files}


SELF_CONTAINED = [
    "skaffold.yaml",
    "charts",
    "k8s",
    "scripts/check-chart.sh",
    "scripts/get-helm.sh",
    "tests/chart",
    "tests/fixtures/schemas",
]
"""What a user's fresh clone deploys and checks the deployment with: none of it may read a folder beside the checkout
(development tools that import data from such a folder, e.g. scripts/make-samples.py, may name one)."""


def test_deployment_files_read_nothing_beside_the_checkout() -> None:
    """No `../shared` path and no SCOUT_SHARED: a fresh clone has neither (schemas and traces are in the repository)."""
    this = Path(__file__).resolve()
    offenders = []
    for root in SELF_CONTAINED:
        base = chartlib.REPO / root
        for path in [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()):
            if path.resolve() == this or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(chartlib.REPO)}: {m}" for m in ("../shared", "SCOUT_SHARED") if m in text]
    assert offenders == []


K8S_MANIFESTS = [
    "k8s/namespace.yaml",
    "k8s/external-credentials.example.yaml",
    "k8s/observability/namespace.yaml",
    "k8s/observability/otel-collector.yaml",
    "k8s/observability/jaeger.yaml",
]


@pytest.mark.parametrize("path", K8S_MANIFESTS)
def test_plain_manifests_validate(path: str) -> None:
    docs = [d for d in yaml.safe_load_all((chartlib.REPO / path).read_text()) if d]
    assert docs
    for version in chartlib.KUBE_VERSIONS:
        assert chartlib.validate_kubernetes(docs, version) == []


def test_keda_example_validates_against_crd() -> None:
    docs = list(yaml.safe_load_all(Path(chartlib.REPO / "k8s/keda/scaledobject-example.yaml").read_text()))
    assert chartlib.validate_keda(docs) == (1, [])


def test_check_chart_script_is_executable() -> None:
    for script in ("scripts/check-chart.sh", "scripts/get-helm.sh"):
        path = chartlib.REPO / script
        assert path.is_file() and path.stat().st_mode & 0o111, script


def test_names_fit_kubernetes_limits_for_long_release_and_device_names(helm_bin: str) -> None:
    device = "d" * 24  # the longest id the schema allows
    values = {"devices": [{"id": device, "model": "smollm2-135m", "rate": "1mbit", "deadlineMs": 100}]}
    docs = chartlib.render(values=values, release="a-very-long-release-name-for-a-lab-cluster")
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 for n in names), max(names, key=len)
    assert any(n.endswith(f"-device-{device}") for n in names)
    for d in docs:
        assert all(len(str(v)) <= 63 for v in d["metadata"]["labels"].values())
    assert chartlib.validate_kubernetes(docs, chartlib.KUBE_VERSIONS[-1]) == []
