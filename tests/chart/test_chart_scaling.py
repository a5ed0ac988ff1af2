"""Decoder scaling (autoscaling.yaml, cloud-decoder.yaml): KEDA on the JetStream consumer lag or a CPU HPA, never both;
the PodDisruptionBudget; `replicas` only when nothing autoscales."""

from __future__ import annotations

import subprocess

import chartlib
import pytest
from chartlib import find

from scout_runtime.subjects import Subjects

KEDA_ON = {"cloudDecoder": {"autoscaling": {"keda": {"enabled": True}}}}


def test_keda_scaledobject_scales_decoders_on_jetstream_consumer_lag(render) -> None:
    docs = render("gpu")
    so = find(docs, "ScaledObject", "scout-cloud-decoder")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "scout-cloud-decoder",
    }
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 8)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), meta  # KEDA's CRD: strings only
    subjects = Subjects()
    assert meta["stream"] == subjects.decode_stream
    assert meta["consumer"] == subjects.decode_durable
    assert meta["natsServerMonitoringEndpoint"] == "scout-nats.scout.svc.cluster.local:8222"
    assert meta["account"] == "$G"
    assert meta["lagThreshold"] == "2" and meta["activationLagThreshold"] == "0" and meta["useHttps"] == "false"
    assert not chartlib.by_kind(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in find(docs, "Deployment", "scout-cloud-decoder")["spec"]


def test_keda_stream_follows_the_scout_namespace(render) -> None:
    so = find(render("default", {**KEDA_ON, "scout": {"namespace": "lab2"}}), "ScaledObject", "scout-cloud-decoder")
    assert so["spec"]["triggers"][0]["metadata"]["stream"] == Subjects("lab2").decode_stream == "SCOUT_DECODE_LAB2"


def test_hpa_is_the_fallback_when_keda_is_off(render) -> None:
    docs = render()
    assert not chartlib.by_kind(docs, "ScaledObject")
    hpa = find(docs, "HorizontalPodAutoscaler", "scout-cloud-decoder")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scout-cloud-decoder"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "replicas" not in find(docs, "Deployment", "scout-cloud-decoder")["spec"]


@pytest.mark.parametrize("keda", [True, False])
@pytest.mark.parametrize("hpa", [True, False])
def test_keda_and_hpa_are_exclusive(render, keda: bool, hpa: bool) -> None:
    docs = render(
        "default",
        {"cloudDecoder": {"replicas": 3, "autoscaling": {"keda": {"enabled": keda}, "hpa": {"enabled": hpa}}}},
    )
    scalers = chartlib.by_kind(docs, "ScaledObject") + chartlib.by_kind(docs, "HorizontalPodAutoscaler")
    deployment = find(docs, "Deployment", "scout-cloud-decoder")["spec"]
    if keda:
        assert [s["kind"] for s in scalers] == ["ScaledObject"]
    elif hpa:
        assert [s["kind"] for s in scalers] == ["HorizontalPodAutoscaler"]
    else:
        assert scalers == []
    assert deployment.get("replicas") == (None if (keda or hpa) else 3)


def test_keda_scale_to_zero_keeps_hpa_floor_at_one(render) -> None:
    docs = render(
        "default",
        {"cloudDecoder": {"autoscaling": {"minReplicas": 0, "keda": {"enabled": True, "activationLagThreshold": 1}}}},
    )
    so = find(docs, "ScaledObject", "scout-cloud-decoder")
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["triggers"][0]["metadata"]["activationLagThreshold"] == "1"
    hpa = find(
        render("default", {"cloudDecoder": {"autoscaling": {"minReplicas": 0}}}),
        "HorizontalPodAutoscaler",
        "scout-cloud-decoder",
    )
    assert hpa["spec"]["minReplicas"] == 1  # an HPA cannot scale to zero


def test_keda_with_external_nats_needs_a_monitoring_endpoint(helm_bin: str) -> None:
    values = {
        **KEDA_ON,
        "nats": {"enabled": False, "external": {"url": "nats://nats.example:4222"}},
        "redis": {"enabled": False, "external": {"existingSecret": "r"}},
    }
    with pytest.raises(subprocess.CalledProcessError) as exc:
        chartlib.render_text(values=values)
    assert "natsMonitoringEndpoint is required" in exc.value.stderr
    docs = chartlib.render(("values-gpu.yaml", "values-external.yaml"))
    meta = find(docs, "ScaledObject", "scout-cloud-decoder")["spec"]["triggers"][0]["metadata"]
    assert meta["natsServerMonitoringEndpoint"] == "nats.messaging.svc.cluster.local:8222"


def test_decoders_have_a_disruption_budget(render) -> None:
    docs = render()
    pdb = find(docs, "PodDisruptionBudget", "scout-cloud-decoder")
    pods = find(docs, "Deployment", "scout-cloud-decoder")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert all(pods[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert not [
        p
        for p in chartlib.by_kind(
            render("default", {"cloudDecoder": {"pdb": {"enabled": False}}}), "PodDisruptionBudget"
        )
    ]


def test_decoder_rollout_never_drops_capacity_and_drains_gracefully(render) -> None:
    spec = find(render("gpu"), "Deployment", "scout-cloud-decoder")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    ack_wait = 30
    assert pod["terminationGracePeriodSeconds"] > ack_wait
    assert pod["affinity"]["podAntiAffinity"]
