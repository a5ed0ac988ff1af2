"""The Scout workloads: device pods (devices.yaml), the transport policy (transport-policy.yaml) and the cloud decoders
(cloud-decoder.yaml): what runs where, with which settings, on which accelerators, with which probes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import chartlib
import pytest
from chartlib import containers, env_of, find, parse_scout_cli

from scout_runtime.settings import Settings

TRACE = "t_s,mbps\n0.0,10.0\n1.0,20.0\n"

ROLE_ARGS = {
    "selector": ("scout_services.selector.args", "SelectorArgs"),
    "quantizer": ("scout_services.quantizer.args", "QuantizerArgs"),
    "transport_policy": ("scout_services.transport_policy.args", "PolicyArgs"),
    "cloud_decoder": ("scout_services.cloud_decoder.args", "DecoderArgs"),
}


def _device_deployments(docs):
    return [d for d in docs if d["kind"] == "Deployment" and chartlib.component(d) == "edge-device"]


def _container(pod_spec, name):
    (c,) = [c for c in containers(pod_spec) if c["name"] == name]
    return c


def test_one_device_pod_per_entry_with_its_model_link_and_deadline(render) -> None:
    values = {
        "traces": {"lte": TRACE},
        "devices": [
            {"id": "phone-1", "model": "smollm2-135m", "rate": "50mbit", "deadlineMs": 1500},
            {"id": "car-1", "model": "qwen2.5-coder-0.5b", "trace": "lte", "traceSpeed": 10, "deadlineMs": 3000},
            {"id": "robot-7", "model": "smollm2-135m", "rate": "800kbit", "deadlineMs": 9000, "delayMs": 20},
        ],
    }
    docs = render("default", values)
    deps = {d["metadata"]["labels"]["scout.dev/device"]: d for d in _device_deployments(docs)}
    assert set(deps) == {"phone-1", "car-1", "robot-7"}
    for dev in values["devices"]:
        dep = deps[dev["id"]]
        assert dep["metadata"]["name"] == f"scout-device-{dev['id']}"
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"]["type"] == "Recreate"
        meta = dep["spec"]["template"]["metadata"]
        assert meta["annotations"]["scout.dev/model"] == dev["model"]
        assert meta["annotations"]["scout.dev/deadline-ms"] == str(dev["deadlineMs"])
        spec = dep["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["containers"]] == ["selector", "quantizer", "shaper", "local-store"]
        assert env_of(_container(spec, "selector"))["SCOUT_SELECTOR_MODEL"] == dev["model"]
        # each device's selector serves only its own device's asks (scout.v1.ask.<device>)
        assert env_of(_container(spec, "selector"))["SCOUT_SELECTOR_DEVICE_ID"] == dev["id"]
        shaper = _container(spec, "shaper")
        assert shaper["command"] == ["scout"] and shaper["args"][0] == "shape"
        params = parse_scout_cli(shaper["args"])
        assert params["iface"] == "eth0"
        assert params["device_id"] == dev["id"]
        assert params["nats"] == "$(SCOUT_NATS_URL)"  # expanded by the kubelet from the container's env
        assert "SCOUT_NATS_URL" in env_of(shaper)
        svc = find(docs, "Service", f"scout-device-{dev['id']}")
        assert svc["spec"]["selector"]["scout.dev/device"] == dev["id"]
        assert svc["metadata"]["annotations"]["scout.dev/deadline-ms"] == str(dev["deadlineMs"])

    def shaper_params(device: str) -> dict:
        return parse_scout_cli(_container(deps[device]["spec"]["template"]["spec"], "shaper")["args"])

    phone = shaper_params("phone-1")
    assert (phone["rate"], phone["trace"], phone["delay_ms"]) == ("50mbit", None, 0.0)
    assert deps["phone-1"]["spec"]["template"]["metadata"]["annotations"]["scout.dev/link"] == "rate=50mbit"
    car = shaper_params("car-1")
    assert (car["rate"], car["trace"], car["speed"]) == (None, "/etc/scout/traces/lte.csv", "10x")
    car_spec = deps["car-1"]["spec"]["template"]["spec"]
    assert deps["car-1"]["spec"]["template"]["metadata"]["annotations"]["scout.dev/link"] == "trace=lte@10x"
    (vol,) = [v for v in car_spec["volumes"] if v["name"] == "traces"]
    assert vol["configMap"] == {"name": "scout-traces", "items": [{"key": "lte.csv", "path": "lte.csv"}]}
    assert {"name": "traces", "mountPath": "/etc/scout/traces", "readOnly": True} in _container(car_spec, "shaper")[
        "volumeMounts"
    ]
    assert find(docs, "ConfigMap", "scout-traces")["data"] == {"lte.csv": TRACE}
    assert "traces" not in {v["name"] for v in deps["phone-1"]["spec"]["template"]["spec"]["volumes"]}
    robot = shaper_params("robot-7")
    assert (robot["rate"], robot["delay_ms"]) == ("800kbit", 20.0)
    assert (robot["relay_listen"], robot["relay_target"]) == ("127.0.0.1:16379", "scout-redis.scout.svc:6379")
    # With a delay, the device reaches the cloud store through the relay; without, directly.
    robot_sel = env_of(_container(deps["robot-7"]["spec"]["template"]["spec"], "selector"))
    assert robot_sel["SCOUT_CLOUD_STORE_URL"]["secretKeyRef"]["key"] == "device-robot-7-relayed-cloud-store-url"
    import base64

    secret = {k: base64.b64decode(v).decode() for k, v in find(docs, "Secret", "scout-redis")["data"].items()}
    assert secret["device-robot-7-relayed-cloud-store-url"].endswith("@127.0.0.1:16379/0")
    assert "device-phone-1-relayed-cloud-store-url" not in secret


def test_shaper_arguments_are_valid_shaper_settings(render) -> None:
    """What the chart passes `scout shape` is accepted by the shaper's own settings model."""
    from scout_services.shaper.args import ShaperArgs

    values = {
        "traces": {"lte": TRACE},
        "edge": {"shaper": {"destinations": ["10.0.0.0/8", "redis.example:6379"]}},
        "devices": [
            {"id": "a", "model": "m", "rate": "50mbit", "deadlineMs": 10, "delayMs": 15},
            {"id": "b", "model": "m", "trace": "lte", "traceSpeed": 2.5, "deadlineMs": 10},
        ],
    }
    for dep in _device_deployments(render("default", values)):
        params = parse_scout_cli(_container(dep["spec"]["template"]["spec"], "shaper")["args"])
        assert list(params["dst"]) == ["10.0.0.0/8", "redis.example:6379"]
        ShaperArgs(
            iface=params["iface"],
            rate=params["rate"],
            trace=params["trace"],
            speed=params["speed"],
            dst=",".join(params["dst"]),
            delay_ms=params["delay_ms"],
            relay_listen=params["relay_listen"],
            relay_target=params["relay_target"],
            device_id=params["device_id"],
        )


def test_delay_needs_the_in_chart_redis(helm_bin: str) -> None:
    values = {
        "devices": [{"id": "a", "model": "m", "rate": "1mbit", "deadlineMs": 1, "delayMs": 5}],
        "redis": {"enabled": False, "external": {"existingSecret": "r"}},
    }
    with pytest.raises(subprocess.CalledProcessError) as exc:
        chartlib.render_text(values=values)
    assert "delayMs needs the in-chart Redis" in exc.value.stderr


def test_device_pod_stores_raw_kv_locally_and_uploads_with_its_own_credentials(render) -> None:
    docs = render()
    for dep in _device_deployments(docs):
        device = dep["metadata"]["labels"]["scout.dev/device"]
        spec = dep["spec"]["template"]["spec"]
        store = _container(spec, "local-store")
        assert store["args"][:2] == ["--bind", "127.0.0.1"]  # unreachable from outside the pod
        for role in ("selector", "quantizer"):
            env = env_of(_container(spec, role))
            assert env["SCOUT_EDGE_STORE_URL"] == "redis://127.0.0.1:6379/0"
            assert env["SCOUT_CLOUD_STORE_URL"] == {
                "secretKeyRef": {"name": "scout-redis", "key": f"device-{device}-cloud-store-url"}
            }


def test_device_errors_are_reported_by_the_template(helm_bin: str) -> None:
    cases = {
        "appears twice": [
            {"id": "a", "model": "m", "rate": "1mbit", "deadlineMs": 1},
            {"id": "a", "model": "m", "rate": "2mbit", "deadlineMs": 1},
        ],
        "is not a key of .Values.traces": [{"id": "a", "model": "m", "trace": "nope", "deadlineMs": 1}],
    }
    for message, devices in cases.items():
        with pytest.raises(subprocess.CalledProcessError) as exc:
            chartlib.render_text(values={"devices": devices})
        assert message in exc.value.stderr


def test_default_profile_requests_no_gpu(render) -> None:
    for _, spec in chartlib.pod_specs(render()):
        for c in containers(spec):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), c["name"]
            assert env_of(c).get("SCOUT_SELECTOR_DEVICE", "cpu") == "cpu"
            assert env_of(c).get("SCOUT_DECODER_DEVICE", "cpu") == "cpu"


def test_gpu_profile_puts_selectors_and_decoders_on_their_gpu_pools(render) -> None:
    docs = render("gpu")
    decoder = find(docs, "Deployment", "scout-cloud-decoder")["spec"]["template"]["spec"]
    (dc,) = decoder["containers"]
    assert dc["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(dc)["SCOUT_DECODER_DEVICE"] == "cuda"
    assert env_of(dc)["SCOUT_DECODER_MODEL"] == "qwen2.5-coder-1.5b"
    assert json.loads(env_of(dc)["SCOUT_DECODER_EDGE_MODELS"]) == ["qwen2.5-coder-0.5b"]
    assert decoder["nodeSelector"] == {"scout.dev/pool": "cloud-gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in decoder["tolerations"]
    devices = _device_deployments(docs)
    assert len(devices) == 3
    for dep in devices:
        spec = dep["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"scout.dev/pool": "edge-gpu"}
        assert {"key": "scout.dev/pool", "operator": "Equal", "value": "edge-gpu", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        gpus = {c["name"]: c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in spec["containers"]}
        assert gpus == {"selector": 1, "quantizer": None, "shaper": None, "local-store": None}
        assert env_of(_container(spec, "selector"))["SCOUT_SELECTOR_DEVICE"] == "cuda"
    # Non-GPU components stay off the GPU pools.
    for name in ("scout-transport-policy",):
        assert "nodeSelector" not in find(docs, "Deployment", name)["spec"]["template"]["spec"]


def test_node_selector_tolerations_and_gpu_count_come_from_values(render) -> None:
    values = {
        "cloudDecoder": {
            "gpu": {"enabled": True, "resource": "nvidia.com/gpu", "count": 2},
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoExecute"}],
        },
        "edge": {
            "gpu": {"enabled": True, "resource": "amd.com/gpu", "count": 1},
            "nodeSelector": {"pool": "jetson"},
            "tolerations": [{"key": "edge", "operator": "Exists"}],
        },
        "devices": [
            {"id": "a", "model": "m", "rate": "1mbit", "deadlineMs": 10},
            {"id": "b", "model": "m", "rate": "1mbit", "deadlineMs": 10, "nodeSelector": {"pool": "orin"}},
        ],
    }
    docs = render("default", values)
    dec = find(docs, "Deployment", "scout-cloud-decoder")["spec"]["template"]["spec"]
    assert dec["nodeSelector"] == {"pool": "a100"}
    assert dec["tolerations"] == values["cloudDecoder"]["tolerations"]
    assert dec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert dec["containers"][0]["resources"]["limits"]["memory"] == "8Gi"  # merged, not replaced
    a = find(docs, "Deployment", "scout-device-a")["spec"]["template"]["spec"]
    b = find(docs, "Deployment", "scout-device-b")["spec"]["template"]["spec"]
    assert a["nodeSelector"] == {"pool": "jetson"} and b["nodeSelector"] == {"pool": "orin"}
    assert a["tolerations"] == [{"key": "edge", "operator": "Exists"}]
    assert _container(a, "selector")["resources"]["limits"]["amd.com/gpu"] == 1


def _env_for_settings(container) -> dict[str, str]:
    """The container's literal env, with secret references replaced by valid stand-ins."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"].replace("$(POD_NAME)", "pod-0")
        elif e["name"] == "SCOUT_CLOUD_STORE_URL":
            out[e["name"]] = "redis://user:pw@redis:6379/0"
        elif "secretKeyRef" in e.get("valueFrom", {}):
            out[e["name"]] = "secret-value"
    return out


@pytest.mark.parametrize("profile", ["default", "gpu", "cpu", "external"])
def test_every_scout_setting_the_chart_sets_exists_and_parses(render, profile: str, monkeypatch) -> None:
    """Each SCOUT_* variable is a field of Settings or of the role's args (settings ignore unknown variables, so a
    misspelt name would silently do nothing), and the values parse."""
    import importlib
    import os

    checked = 0
    for _, spec in chartlib.pod_specs(render(profile)):
        for c in containers(spec):
            if c.get("command") != ["scout"]:
                continue
            args = c["args"]
            role = args[1] if args[0] == "serve" else "shaper"
            env = _env_for_settings(c)
            known = {f"SCOUT_{f.upper()}" for f in Settings.model_fields} | {"SCOUT_CACHE", "SCOUT_LOG_LEVEL"}
            with monkeypatch.context() as m:
                for key in [k for k in os.environ if k.startswith("SCOUT_")]:
                    m.delenv(key)
                for k, v in env.items():
                    m.setenv(k, v)
                Settings()
                if role in ROLE_ARGS:
                    module, cls_name = ROLE_ARGS[role]
                    cls = getattr(importlib.import_module(module), cls_name)
                    prefix = cls.model_config["env_prefix"]
                    known |= {f"{prefix}{f.upper()}" for f in cls.model_fields}
                    cls()
                else:  # scout shape: its settings come as options (test_shaper_arguments_are_valid_shaper_settings)
                    from scout_services.shaper.args import ShaperArgs

                    known |= {f"SCOUT_SHAPER_{f.upper()}" for f in ShaperArgs.model_fields}
            unknown = {k for k in env if k.startswith("SCOUT_")} - known
            assert not unknown, f"{c['name']}: {unknown}"
            checked += 1
    assert checked >= 4


def test_scout_containers_run_their_role(render) -> None:
    docs = render()
    roles = {}
    for obj, spec in chartlib.pod_specs(docs):
        for c in spec["containers"]:
            if c.get("command") == ["scout"]:
                roles.setdefault(chartlib.component(obj), set()).add(tuple(c["args"][:2]))
    assert roles["edge-device"] == {("serve", "selector"), ("serve", "quantizer"), ("shape", "--iface")}
    assert roles["transport-policy"] == {("serve", "transport_policy")}
    assert roles["cloud-decoder"] == {("serve", "cloud_decoder")}
    from scout_cli.commands.serve import ROLES

    for args in (a for s in roles.values() for a in s if a[0] == "serve"):
        assert args[1] in ROLES
        assert parse_scout_cli(list(args)) == {"role": args[1]}


def test_probes_point_at_each_roles_health_endpoints(render) -> None:
    for _, spec in chartlib.pod_specs(render()):
        ports_seen: list[int] = []
        for c in spec["containers"]:
            if c.get("command") != ["scout"]:
                continue
            port = int(env_of(c)["SCOUT_METRICS_PORT"])
            ports_seen.append(port)
            named = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe, path in (
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ):
                get = c[probe]["httpGet"]
                assert get["path"] == path, (c["name"], probe)
                assert named[get["port"]] == port, (c["name"], probe)
        assert len(ports_seen) == len(set(ports_seen)), "roles sharing a pod need distinct metrics ports"
    for name in ("selector", "quantizer", "shaper", "local-store"):
        dep = find(render(), "Deployment", "scout-device-phone-1")["spec"]["template"]["spec"]
        c = _container(dep, name)
        assert "livenessProbe" in c and "readinessProbe" in c


def test_selector_serves_the_http_api_on_its_port(render) -> None:
    docs = render("default", {"ports": {"http": 8181, "metrics": 9300}})
    spec = find(docs, "Deployment", "scout-device-phone-1")["spec"]["template"]["spec"]
    sel = _container(spec, "selector")
    assert env_of(sel)["SCOUT_HTTP_PORT"] == "8181"
    assert {"name": "http", "containerPort": 8181, "protocol": "TCP"} in sel["ports"]
    assert [env_of(_container(spec, n))["SCOUT_METRICS_PORT"] for n in ("selector", "quantizer", "shaper")] == [
        "9300",
        "9301",
        "9302",
    ]
    svc = find(docs, "Service", "scout-device-phone-1")
    assert {"name": "http", "port": 8181, "targetPort": "http", "protocol": "TCP"} in svc["spec"]["ports"]


def test_transport_policy_defaults_to_first_devices_model_and_mounts_its_table(render) -> None:
    docs = render("gpu")
    pol = find(docs, "Deployment", "scout-transport-policy")
    (c,) = pol["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["SCOUT_POLICY_EDGE_MODEL"] == "qwen2.5-coder-0.5b"
    assert pol["spec"]["replicas"] == 2
    assert "SCOUT_POLICY_TABLE" not in env_of(c)
    table = json.dumps({"pairs": []})
    docs = render("default", {"transportPolicy": {"table": table}})
    pol = find(docs, "Deployment", "scout-transport-policy")
    (c,) = pol["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["SCOUT_POLICY_TABLE"] == "/etc/scout/policy/table.json"
    assert env_of(c)["SCOUT_POLICY_EDGE_MODEL"] == "smollm2-135m"
    assert find(docs, "ConfigMap", "scout-transport-policy")["data"] == {"table.json": table}
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mount["policy"] == "/etc/scout/policy"


def test_model_cache_is_a_volume_at_scout_cache(render) -> None:
    docs = render("default", {"modelCache": {"existingClaim": "models-rwx", "mountPath": "/models"}})
    for obj, spec in chartlib.pod_specs(docs):
        for c in spec["containers"]:
            if c.get("command") != ["scout"]:
                continue
            assert env_of(c)["SCOUT_CACHE"] == "/models"
            assert {"name": "model-cache", "mountPath": "/models"} in c["volumeMounts"]
        if chartlib.component(obj) in ("edge-device", "cloud-decoder", "transport-policy"):
            (vol,) = [v for v in spec["volumes"] if v["name"] == "model-cache"]
            assert vol == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models-rwx"}}


def test_dockerfile_matches_the_chart() -> None:
    """The image and the chart agree: the uid the pods run as, the model cache path, the entry point, the torch pin."""
    import tomllib

    import yaml

    dockerfile = (chartlib.REPO / "Dockerfile").read_text()
    values = yaml.safe_load((chartlib.CHART / "values.yaml").read_text())
    assert f"ARG SCOUT_UID={values['securityContext']['runAsUser']}" in dockerfile
    assert f"ARG SCOUT_GID={values['securityContext']['runAsGroup']}" in dockerfile
    assert f"SCOUT_CACHE={values['modelCache']['mountPath']}" in dockerfile
    assert f'VOLUME ["{values["modelCache"]["mountPath"]}"]' in dockerfile
    assert 'ENTRYPOINT ["scout"]' in dockerfile and 'CMD ["serve", "selector"]' in dockerfile
    assert "USER ${SCOUT_UID}:${SCOUT_GID}" in dockerfile
    pyproject = tomllib.loads((chartlib.REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in dockerfile
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    # The build context lets in exactly what `pip install .` needs.
    ignore = (chartlib.REPO / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if line.strip() and not line.startswith("#"))] == "*"
    for needed in ("pyproject.toml", "README.md", "libs/", "services/"):
        assert f"!{needed}" in ignore
    for src in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        assert src == "." or f"!{src}/" in ignore
    assert Path(chartlib.REPO / "libs").is_dir()
