"""What the roles depend on (nats.yaml, redis.yaml, tracing.yaml): NATS with JetStream and Redis as in-chart
StatefulSets that switch off for external URLs, and the OpenTelemetry collector + Jaeger for development."""

from __future__ import annotations

import chartlib
from chartlib import env_of, find

SCOUT_COMPONENTS = ("edge-device", "transport-policy", "cloud-decoder")


def _scout_containers(docs):
    for obj, spec in chartlib.pod_specs(docs):
        for c in spec["containers"]:
            if c.get("command") == ["scout"]:
                yield obj, c


def test_nats_statefulset_runs_jetstream_with_password_auth(render) -> None:
    docs = render()
    sts = find(docs, "StatefulSet", "scout-nats")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--config", "/etc/nats/nats.conf"]
    assert env_of(c)["SCOUT_NATS_PASSWORD"] == {"secretKeyRef": {"name": "scout-nats", "key": "nats-password"}}
    assert {p["containerPort"] for p in c["ports"]} == {4222, 8222}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"
    conf = find(docs, "ConfigMap", "scout-nats")["data"]["nats.conf"]
    assert "jetstream {" in conf and 'store_dir: "/data"' in conf
    assert "password: $SCOUT_NATS_PASSWORD" in conf
    # JetStream's store is a PersistentVolumeClaim by default, an emptyDir in the CPU dev profile.
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    cpu = find(render("cpu"), "StatefulSet", "scout-nats")
    assert "volumeClaimTemplates" not in cpu["spec"]
    assert {"name": "data", "emptyDir": {}} in cpu["spec"]["template"]["spec"]["volumes"]
    svc = find(docs, "Service", "scout-nats")
    assert {p["port"] for p in svc["spec"]["ports"]} == {4222, 8222}


def test_redis_statefulset_loads_the_acl_file_and_never_evicts(render) -> None:
    docs = render()
    sts = find(docs, "StatefulSet", "scout-redis")
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = c["args"]
    assert args[args.index("--aclfile") + 1] == "/etc/redis/users.acl"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (acl,) = [v for v in spec["volumes"] if v["name"] == "acl"]
    assert acl["secret"]["secretName"] == "scout-redis"
    assert acl["secret"]["items"] == [{"key": "users.acl", "path": "users.acl"}]
    assert env_of(c)["REDISCLI_AUTH"] == {"secretKeyRef": {"name": "scout-redis", "key": "redis-password"}}
    # A device change rolls Redis (its ACL file changed).
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    other = find(render("gpu"), "StatefulSet", "scout-redis")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/devices"] != other["checksum/devices"]


def test_in_chart_services_are_what_every_role_connects_to(render) -> None:
    docs = render()
    for obj, c in _scout_containers(docs):
        env = env_of(c)
        assert env["SCOUT_NATS_URL"] == "nats://scout-nats.scout.svc:4222"
        assert env["SCOUT_NATS_USER"] == "scout"
        if chartlib.component(obj) == "cloud-decoder":
            assert env["SCOUT_CLOUD_STORE_URL"]["secretKeyRef"] == {"name": "scout-redis", "key": "cloud-store-url"}


def test_turning_nats_and_redis_off_switches_every_role_to_the_external_urls(render) -> None:
    docs = render("external")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for gone in ("scout-nats", "scout-redis"):
        assert ("StatefulSet", gone) not in kinds
        assert ("Service", gone) not in kinds
        assert ("Secret", gone) not in kinds
        assert ("NetworkPolicy", gone) not in kinds
    n = 0
    for _, c in _scout_containers(docs):
        env = env_of(c)
        assert env["SCOUT_NATS_URL"] == "nats://nats.messaging.svc.cluster.local:4222"
        assert env["SCOUT_NATS_USER"] == "scout"
        assert env["SCOUT_NATS_PASSWORD"] == {
            "secretKeyRef": {"name": "scout-nats-credentials", "key": "nats-password"}
        }
        if c["name"] in ("selector", "quantizer", "cloud-decoder"):
            assert env["SCOUT_CLOUD_STORE_URL"] == {
                "secretKeyRef": {"name": "scout-redis-credentials", "key": "cloud-store-url"}
            }
        n += 1
    assert n == 8  # 2 devices x (selector, quantizer, shaper) + policy + decoder


def test_external_nats_without_a_password(render) -> None:
    docs = render(
        "default",
        {
            "nats": {"enabled": False, "external": {"url": "tls://a:4222,tls://b:4222"}},
            "redis": {"enabled": False, "external": {"existingSecret": "redis-url"}},
        },
    )
    for _, c in _scout_containers(docs):
        env = env_of(c)
        assert env["SCOUT_NATS_URL"] == "tls://a:4222,tls://b:4222"
        assert "SCOUT_NATS_PASSWORD" not in env and "SCOUT_NATS_USER" not in env


def test_tracing_is_off_in_production_values_and_on_in_development(render) -> None:
    for profile in ("default", "gpu"):
        docs = render(profile)
        components = {chartlib.component(d) for d in docs}
        assert "otel-collector" not in components and "jaeger" not in components
        for _, c in _scout_containers(docs):
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of(c)
    docs = render("cpu")
    collector = find(docs, "Deployment", "scout-otel-collector")
    jaeger = find(docs, "Deployment", "scout-jaeger")
    assert jaeger["spec"]["template"]["spec"]["containers"][0]["image"].startswith("jaegertracing/all-in-one:")
    config = find(docs, "ConfigMap", "scout-otel-collector")["data"]["config.yaml"]
    import yaml

    cfg = yaml.safe_load(config)
    assert cfg["exporters"]["otlp/jaeger"]["endpoint"] == "scout-jaeger.scout.svc:4317"
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert set(cfg["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert collector["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] == "health"
    for _, c in _scout_containers(docs):
        env = env_of(c)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://scout-otel-collector.scout.svc:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    ui = find(docs, "Service", "scout-jaeger")
    assert {"name": "ui", "port": 16686, "targetPort": "ui", "protocol": "TCP"} in ui["spec"]["ports"]


def test_tracing_to_your_own_collector(render) -> None:
    docs = render("gpu", {"tracing": {"endpoint": "http://otel.observability.svc:4318", "samplingRatio": 0.25}})
    for _, c in _scout_containers(docs):
        env = env_of(c)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability.svc:4318"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    # The chart's collector without Jaeger forwards to that endpoint.
    docs = render("default", {"tracing": {"endpoint": "https://traces.example.com", "collector": {"enabled": True}}})
    import yaml

    cfg = yaml.safe_load(find(docs, "ConfigMap", "scout-otel-collector")["data"]["config.yaml"])
    assert cfg["exporters"] == {"otlphttp/upstream": {"endpoint": "https://traces.example.com"}}


def test_jaeger_alone_receives_otlp_directly(render) -> None:
    docs = render("default", {"tracing": {"jaeger": {"enabled": True}}})
    assert not [d for d in docs if chartlib.component(d) == "otel-collector"]
    for _, c in _scout_containers(docs):
        assert env_of(c)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://scout-jaeger.scout.svc:4318"
