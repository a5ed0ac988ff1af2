"""values.schema.json rejects wrong values before anything renders; NOTES.txt and the helm test tell the user how to
send a request, scale the decoders and open Jaeger."""

from __future__ import annotations

import json
import subprocess

import chartlib
import jsonschema
import pytest
import yaml

SCHEMA = json.loads((chartlib.CHART / "values.schema.json").read_text())


def _rejected(values: dict | None = None, set_values: dict | None = None) -> str:
    with pytest.raises(subprocess.CalledProcessError) as exc:
        chartlib.render_text(values=values, set_values=set_values)
    assert "values don't meet the specifications of the schema" in exc.value.stderr, exc.value.stderr
    return str(exc.value.stderr)


def _merge(base: dict, over: dict) -> dict:
    """Helm's merge of a values file over the defaults: maps merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_schema_is_valid_draft7_and_every_values_file_conforms() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA)
    defaults = yaml.safe_load((chartlib.CHART / "values.yaml").read_text())
    for profile, files in chartlib.PROFILES.items():
        values = defaults
        for f in files:
            values = _merge(values, yaml.safe_load((chartlib.CHART / f).read_text()))
        assert [e.message for e in validator.iter_errors(values)] == [], profile
    overlay = yaml.safe_load((chartlib.REPO / "k8s/dev/values-traces.yaml").read_text())
    values = _merge(defaults, {**overlay, "traces": {"lumos_driving": "t_s,mbps\n", "lumos_walking": "t_s,mbps\n"}})
    assert [e.message for e in validator.iter_errors(values)] == []


def test_string_replica_count_is_rejected(helm_bin: str) -> None:
    err = _rejected(values={"cloudDecoder": {"replicas": "3"}})
    assert "cloudDecoder.replicas" in err
    err = _rejected(values={"transportPolicy": {"replicas": "two"}})
    assert "transportPolicy.replicas" in err


def test_unknown_keys_are_rejected(helm_bin: str) -> None:
    assert "replicaCount" in _rejected(values={"cloudDecoder": {"replicaCount": 2}})
    assert "natsUrl" in _rejected(values={"natsUrl": "nats://x:4222"})
    assert "gpus" in _rejected(values={"edge": {"gpus": 1}})
    device = {"id": "a", "model": "m", "rate": "1mbit", "deadlineMs": 100, "bandwidth": "1mbit"}
    assert "bandwidth" in _rejected(values={"devices": [device]})


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"devices": [{"id": "Phone_1", "model": "m", "rate": "1mbit", "deadlineMs": 1}]}, "devices.0.id"),
        ({"devices": [{"id": "a", "model": "m", "rate": "fast", "deadlineMs": 1}]}, "devices.0.rate"),
        ({"devices": [{"id": "a", "model": "m", "rate": "1mbit"}]}, "deadlineMs"),
        ({"devices": [{"id": "a", "model": "m", "deadlineMs": 5}]}, "devices.0"),  # neither rate nor trace
        ({"devices": [{"id": "a", "model": "m", "rate": "1mbit", "trace": "t", "deadlineMs": 5}]}, "devices.0"),
        ({"traces": {"t": "time,rate\n0,1\n"}}, "traces.t"),
        ({"securityContext": {"runAsUser": 0, "runAsGroup": 1, "fsGroup": 1}}, "securityContext.runAsUser"),
        ({"edge": {"gpu": {"enabled": True, "resource": "nvidia.com/gpu", "count": 0}}}, "edge.gpu.count"),
        ({"nats": {"enabled": True, "password": "12345678901234"}}, "nats.password"),
        ({"redis": {"enabled": True, "password": "has space in it"}}, "redis.password"),
        ({"cloudDecoder": {"autoscaling": {"keda": {"lagThreshold": 0}}}}, "lagThreshold"),
        ({"cloudDecoder": {"env": {"SCOUT_X": 5}}}, "cloudDecoder.env.SCOUT_X"),
        ({"scout": {"storePrefix": "scout"}}, "scout.storePrefix"),
        ({"tracing": {"samplingRatio": 2}}, "tracing.samplingRatio"),
    ],
)
def test_wrong_values_are_rejected(helm_bin: str, values: dict, where: str) -> None:
    assert where in _rejected(values=values)


def test_set_string_on_a_number_is_rejected(helm_bin: str) -> None:
    proc = chartlib.helm(
        "template", "scout", str(chartlib.CHART), "--set-string", "cloudDecoder.replicas=2", check=False
    )
    assert proc.returncode != 0 and "cloudDecoder.replicas" in proc.stderr


def test_notes_tell_how_to_ask_scale_and_trace(helm_bin: str) -> None:
    notes = chartlib.render_notes(("values-cpu.yaml",))
    assert "kubectl -n scout port-forward svc/scout-device-phone-1 8080:8080" in notes
    assert "--http http://127.0.0.1:8080 --device-id phone-1 --deadline-ms 2000" in notes
    assert "curl -s http://127.0.0.1:8080/v1/ask" in notes
    assert "kubectl -n scout port-forward svc/scout-jaeger 16686:16686" in notes
    assert "http://127.0.0.1:16686" in notes
    assert "helm test scout" in notes
    assert "car-1: model smollm2-135m, uplink 10mbit, deadline 5000 ms" in notes
    gpu = chartlib.render_notes(("values-gpu.yaml",))
    assert "scaled by KEDA between 1 and 8 replicas" in gpu
    assert "--set cloudDecoder.autoscaling.maxReplicas=16" in gpu
    assert "Tracing has nowhere to go" in gpu
    fixed = chartlib.render_notes(
        (), values={"cloudDecoder": {"replicas": 2, "autoscaling": {"hpa": {"enabled": False}}}}
    )
    assert "kubectl -n scout scale deployment/scout-cloud-decoder --replicas=4" in fixed


def test_the_helm_test_asks_every_device_with_its_deadline(render) -> None:
    docs = render("cpu")
    (pod,) = chartlib.by_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    by_name = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(by_name) == {"ask-phone-1", "ask-car-1"}
    script = by_name["ask-car-1"]["args"][0]
    assert 'scout ask "$QUESTION" --document /tmp/document.txt --json' in script
    assert '--http "http://scout-device-car-1:8080"' in script
    assert '--device-id "car-1" --deadline-ms "5000"' in script
    assert not chartlib.by_kind(render("default", {"tests": {"enabled": False}}), "Pod")


def test_the_helm_test_command_line_parses(render) -> None:
    """The helm test's `scout ask` command line is accepted by the real CLI parser (an unknown option would only
    fail in the cluster otherwise)."""
    import shlex

    (pod,) = chartlib.by_kind(render(), "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    argv = shlex.split(script.split("exec ", 1)[1].replace('"$QUESTION"', "'q'"))
    assert argv[0] == "scout"
    params = chartlib.parse_scout_cli(argv[1:])
    assert params["http"] == "http://scout-device-phone-1:8080"
    assert (params["device_id"], params["deadline_ms"], params["as_json"]) == ("phone-1", 2000, True)
