"""NetworkPolicies (networkpolicies.yaml): evaluated as Kubernetes does (a flow needs the destination's ingress and the
source's egress to allow it), over every pair of pods and every declared port, the open flows are exactly DESIGN.md's
data-flow paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import chartlib
import pytest

NAMESPACE = "scout"

# Pods outside the release that may (or may not) talk to it.
OUTSIDERS = {
    "client": ("scout", {"app": "client"}),
    "keda-operator": ("keda", {"app": "keda-operator"}),
    "prometheus": ("monitoring", {"app": "prometheus"}),
    "stranger": ("other", {"app": "stranger"}),
}

ROLES = ("edge-device", "transport-policy", "cloud-decoder")


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, pod_ns: str, labels: Mapping[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # cluster pods are matched by selectors in these policies, never by CIDR
    ns_labels = {"kubernetes.io/metadata.name": pod_ns}
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif pod_ns != policy_ns:
        return False
    return _selector_matches(peer.get("podSelector"), labels)


def _rule_allows(rule: Mapping[str, Any], key: str, peer_ns: str, peer_labels, port: int) -> bool:
    peers = rule.get(key)
    if peers is not None and not any(_peer_matches(p, NAMESPACE, peer_ns, peer_labels) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port for p in ports)


class Cluster:
    def __init__(self, docs: Sequence[Mapping[str, Any]]) -> None:
        self.policies = chartlib.by_kind(docs, "NetworkPolicy")
        self.pods: dict[str, tuple[str, dict[str, str], set[int]]] = {}
        for obj, spec in chartlib.pod_specs(docs):
            labels = dict((obj["spec"]["template"]["metadata"] if obj["kind"] != "Pod" else obj["metadata"])["labels"])
            ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            name = chartlib.component(obj)
            prev = self.pods.get(name)
            self.pods[name] = (NAMESPACE, labels, ports | (prev[2] if prev else set()))
        for name, (ns, labels) in OUTSIDERS.items():
            self.pods[name] = (ns, labels, set())

    def selecting(self, name: str, kind: str) -> list[Mapping[str, Any]]:
        ns, labels, _ = self.pods[name]
        return [
            p
            for p in self.policies
            if ns == NAMESPACE
            and kind in p["spec"]["policyTypes"]
            and _selector_matches(p["spec"]["podSelector"], labels)
        ]

    def allowed(self, src: str, dst: str, port: int) -> bool:
        src_ns, src_labels, _ = self.pods[src]
        dst_ns, dst_labels, _ = self.pods[dst]
        ingress = self.selecting(dst, "Ingress")
        if ingress and not any(
            _rule_allows(r, "from", src_ns, src_labels, port) for p in ingress for r in p["spec"].get("ingress") or []
        ):
            return False
        egress = self.selecting(src, "Egress")
        return not egress or any(
            _rule_allows(r, "to", dst_ns, dst_labels, port) for p in egress for r in p["spec"].get("egress") or []
        )

    def open_flows(self) -> set[tuple[str, str, int]]:
        return {
            (src, dst, port)
            for dst, (_, _, ports) in self.pods.items()
            for port in ports
            for src in self.pods
            if src != dst and self.allowed(src, dst, port)
        }


BASE = {
    ("client", "edge-device", 8080),
    ("helm-test", "edge-device", 8080),
    ("edge-device", "nats", 4222),
    ("edge-device", "redis", 6379),
    ("transport-policy", "nats", 4222),
    ("cloud-decoder", "nats", 4222),
    ("cloud-decoder", "redis", 6379),
}


def test_default_profile_opens_only_the_data_flow(render) -> None:
    assert Cluster(render()).open_flows() == BASE


def test_cpu_profile_adds_only_the_tracing_paths(render) -> None:
    tracing = {(role, "otel-collector", 4318) for role in ROLES} | {
        ("otel-collector", "jaeger", 4317),
        ("client", "jaeger", 16686),
        ("helm-test", "jaeger", 16686),
    }
    assert Cluster(render("cpu")).open_flows() == BASE | tracing


def test_gpu_profile_lets_keda_read_the_consumer_lag(render) -> None:
    assert Cluster(render("gpu")).open_flows() == BASE | {("keda-operator", "nats", 8222)}


def test_metrics_scrapers_reach_only_metrics_ports(render) -> None:
    values = {
        "networkPolicy": {
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        }
    }
    flows = Cluster(render("default", values)).open_flows()
    scraped = {(dst, port) for src, dst, port in flows if src == "prometheus"}
    assert scraped == {
        ("edge-device", 9090),
        ("edge-device", 9091),
        ("edge-device", 9092),
        ("transport-policy", 9090),
        ("cloud-decoder", 9090),
        ("nats", 8222),
    }
    assert flows - {f for f in flows if f[0] == "prometheus"} == BASE


def test_ask_from_restricts_who_may_call_the_devices(render) -> None:
    values = {
        "networkPolicy": {"askFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}]}
    }
    flows = Cluster(render("default", values)).open_flows()
    callers = {src for src, dst, port in flows if dst == "edge-device"}
    assert callers == {"stranger", "helm-test"}


def test_every_release_pod_is_selected_for_both_directions(render) -> None:
    for profile in chartlib.PROFILES:
        cluster = Cluster(render(profile))
        for name in cluster.pods:
            if name in OUTSIDERS or name == "helm-test":
                continue
            assert len(cluster.selecting(name, "Ingress")) == 1, (profile, name)
            assert len(cluster.selecting(name, "Egress")) == 1, (profile, name)


@pytest.mark.parametrize("profile", ["default", "cpu", "gpu"])
def test_scout_roles_may_resolve_dns(render, profile: str) -> None:
    for p in chartlib.by_kind(render(profile), "NetworkPolicy"):
        if chartlib.component(p) not in ROLES:
            continue
        dns = [r for r in p["spec"]["egress"] if any(port.get("port") == 53 for port in r.get("ports", []))]
        assert dns and dns[0]["to"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"
        }


def test_external_profile_egress_goes_to_the_external_services(render) -> None:
    docs = render("external")
    for p in chartlib.by_kind(docs, "NetworkPolicy"):
        if chartlib.component(p) in ROLES:
            ports = {port["port"] for r in p["spec"]["egress"] for port in r.get("ports", [])}
            assert {4222, 6379} <= ports
            (rule,) = [r for r in p["spec"]["egress"] if {q["port"] for q in r.get("ports", [])} == {4222, 6379}]
            assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}]


def test_external_tracing_endpoint_opens_only_its_port(render) -> None:
    docs = render("default", {"tracing": {"endpoint": "http://otel.observability.svc:4318"}})
    for p in chartlib.by_kind(docs, "NetworkPolicy"):
        if chartlib.component(p) in ROLES:
            assert {"ports": [{"port": 4318, "protocol": "TCP"}]} in p["spec"]["egress"]
    docs = render("default", {"tracing": {"endpoint": "https://traces.example.com"}})
    p = chartlib.find(docs, "NetworkPolicy", "scout-cloud-decoder")
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in p["spec"]["egress"]


def test_network_policies_can_be_turned_off(render) -> None:
    assert not chartlib.by_kind(render("default", {"networkPolicy": {"enabled": False}}), "NetworkPolicy")
