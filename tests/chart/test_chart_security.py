"""Pod security and credentials (every template's pods; secrets.yaml; serviceaccount.yaml): non-root, read-only root
filesystems, no capabilities except the shaper's NET_ADMIN, secrets only by reference, and generated credentials
that the real servers accept (nats-server with the rendered configuration, redis-server with the rendered ACL file)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import chartlib
import pytest
from chartlib import containers, env_of, find

PROFILES = list(chartlib.PROFILES)


def _secret_data(docs, name) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in find(docs, "Secret", name)["data"].items()}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_pod_is_non_root_read_only_and_drops_all_capabilities(render, profile: str) -> None:
    docs = render(profile)
    seen = 0
    for obj, spec in chartlib.pod_specs(docs):
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod_sc["runAsUser"] > 0
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key)
        for c in containers(spec):
            seen += 1
            sc = c["securityContext"]
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc.get("runAsUser", pod_sc["runAsUser"]) > 0, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            if c["name"] == "shaper":
                assert sc["capabilities"]["add"] == ["NET_ADMIN"], where
                # tc gains cap_net_admin from its file capability, which no_new_privs would block.
                assert sc["allowPrivilegeEscalation"] is True, where
            else:
                assert "add" not in sc["capabilities"], where
                assert sc["allowPrivilegeEscalation"] is False, where
            assert "memory" in c["resources"]["limits"], where
            assert c["resources"]["requests"], where
    assert seen


@pytest.mark.parametrize("profile", PROFILES)
def test_only_the_shaper_has_net_admin(render, profile: str) -> None:
    with_caps = {
        (obj["metadata"]["name"], c["name"])
        for obj, spec in chartlib.pod_specs(render(profile))
        for c in containers(spec)
        if c["securityContext"]["capabilities"].get("add")
    }
    devices = [
        d["metadata"]["name"]
        for d in chartlib.by_kind(render(profile), "Deployment")
        if "device" in d["metadata"]["name"]
    ]
    assert with_caps == {(name, "shaper") for name in devices}


def test_without_the_shaper_no_container_adds_a_capability_or_escalates(render) -> None:
    docs = render("default", {"edge": {"shaper": {"enabled": False}}})
    for _, spec in chartlib.pod_specs(docs):
        for c in containers(spec):
            assert c["name"] != "shaper"
            assert "add" not in c["securityContext"]["capabilities"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_shaper_as_root_keeps_net_admin_as_its_only_capability(render) -> None:
    docs = render("default", {"edge": {"shaper": {"runAsRoot": True}}})
    for obj, spec in chartlib.pod_specs(docs):
        for c in containers(spec):
            sc = c["securityContext"]
            if c["name"] == "shaper":
                assert (sc["runAsUser"], sc["runAsNonRoot"]) == (0, False)
                assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            else:
                assert sc["runAsNonRoot"] is True and "runAsUser" not in sc, (obj["metadata"]["name"], c["name"])


@pytest.mark.parametrize("profile", PROFILES)
def test_credentials_reach_pods_only_through_secret_references(render, profile: str) -> None:
    docs = render(profile)
    secret_values = set()
    for s in chartlib.by_kind(docs, "Secret"):
        for v in s["data"].values():
            secret_values.add(base64.b64decode(v).decode())
    for obj, spec in chartlib.pod_specs(docs):
        for c in containers(spec):
            env = env_of(c)
            for name in ("SCOUT_NATS_PASSWORD", "SCOUT_CLOUD_STORE_URL", "SCOUT_REDIS_PASSWORD", "REDISCLI_AUTH"):
                if name in env:
                    assert "secretKeyRef" in env[name], (obj["metadata"]["name"], c["name"], name)
            literal = " ".join(str(v) for v in env.values() if isinstance(v, str)) + " ".join(c.get("args", []))
            for secret in secret_values:
                if len(secret) >= 12 and "\n" not in secret:
                    assert secret not in literal
    for cm in chartlib.by_kind(docs, "ConfigMap"):
        text = str(cm["data"])
        assert not any(len(s) >= 12 and s in text for s in secret_values if "\n" not in s), cm["metadata"]["name"]


def test_generated_passwords_are_strong_and_config_safe(render) -> None:
    docs = render()
    nats = _secret_data(docs, "scout-nats")["nats-password"]
    redis = _secret_data(docs, "scout-redis")
    pattern = re.compile(r"^[A-Za-z][A-Za-z0-9]{31}$")  # a letter first: NATS parses 1234... as a number
    assert pattern.match(nats)
    assert pattern.match(redis["redis-password"])
    assert pattern.match(redis["device-phone-1-password"]) and pattern.match(redis["device-car-1-password"])
    assert len({nats, redis["redis-password"], redis["device-phone-1-password"], redis["device-car-1-password"]}) == 4
    assert redis["cloud-store-url"] == f"redis://default:{redis['redis-password']}@scout-redis.scout.svc:6379/0"
    assert redis["device-phone-1-cloud-store-url"] == (
        f"redis://scout-device-phone-1:{redis['device-phone-1-password']}@scout-redis.scout.svc:6379/0"
    )


def test_given_passwords_are_used(render) -> None:
    docs = render("default", {"nats": {"password": "Natspassword1"}, "redis": {"password": "Redispassword1"}})
    assert _secret_data(docs, "scout-nats")["nats-password"] == "Natspassword1"
    assert _secret_data(docs, "scout-redis")["redis-password"] == "Redispassword1"


def test_existing_nats_secret_is_referenced_not_created(render) -> None:
    docs = render("default", {"nats": {"existingSecret": "my-nats", "passwordKey": "pw"}})
    assert "scout-nats" not in {s["metadata"]["name"] for s in chartlib.by_kind(docs, "Secret")}
    for _, spec in chartlib.pod_specs(docs):
        for c in spec["containers"]:
            env = env_of(c)
            if "SCOUT_NATS_PASSWORD" in env:
                assert env["SCOUT_NATS_PASSWORD"] == {"secretKeyRef": {"name": "my-nats", "key": "pw"}}


def test_redis_acl_file_matches_the_store_device_rules(render) -> None:
    from scout_runtime.store import redis_device_acl, redis_device_user

    for namespace in ("", "lab"):
        docs = render("default", {"scout": {"namespace": namespace}})
        data = _secret_data(docs, "scout-redis")
        lines = data["users.acl"].strip().split("\n")
        assert lines[0] == f"user default on >{data['redis-password']} ~* &* +@all"
        prefix = f"{namespace}:scout:" if namespace else "scout:"
        for device, line in zip(("phone-1", "car-1"), lines[1:], strict=True):
            rules = redis_device_acl(device, data[f"device-{device}-password"], prefix=prefix)
            assert line == " ".join(["user", redis_device_user(device), *rules])


def test_device_acl_off_gives_devices_the_default_user(render) -> None:
    data = _secret_data(render("default", {"redis": {"deviceAcl": False}}), "scout-redis")
    assert data["device-phone-1-cloud-store-url"] == data["cloud-store-url"]
    assert "device-phone-1-password" not in data
    assert data["users.acl"].count("\n") == 1


def test_service_account_without_token(render) -> None:
    docs = render()
    sa = find(docs, "ServiceAccount", "scout")
    assert sa["automountServiceAccountToken"] is False
    for obj, spec in chartlib.pod_specs(docs):
        if chartlib.component(obj) in ("edge-device", "transport-policy", "cloud-decoder", "helm-test"):
            assert spec["serviceAccountName"] == "scout"
    docs = render("default", {"serviceAccount": {"create": False, "name": "platform-sa"}})
    assert not chartlib.by_kind(docs, "ServiceAccount")
    assert find(docs, "Deployment", "scout-cloud-decoder")["spec"]["template"]["spec"]["serviceAccountName"] == (
        "platform-sa"
    )


# --- the rendered configuration against real servers ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")
def test_nats_server_accepts_the_rendered_configuration_and_password(render) -> None:
    import nats
    from nats.errors import NoServersError

    docs = render()
    conf = find(docs, "ConfigMap", "scout-nats")["data"]["nats.conf"]
    password = _secret_data(docs, "scout-nats")["nats-password"]
    port, monitor = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="scout-nats-") as tmp:
        conf = conf.replace("port: 4222", f"port: {port}").replace("http_port: 8222", f"http_port: {monitor}")
        conf = conf.replace('store_dir: "/data"', f'store_dir: "{tmp}/js"')
        (Path(tmp) / "nats.conf").write_text(conf)
        env = {**os.environ, "SCOUT_NATS_PASSWORD": password, "POD_NAME": "scout-nats-0"}
        proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-c", f"{tmp}/nats.conf"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_port(port, proc)

            async def check() -> None:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", user="scout", password=password)
                info = await nc.jetstream().account_info()
                assert info.limits.max_memory != 0
                await nc.close()
                with pytest.raises((NoServersError, nats.errors.Error, OSError)):
                    await nats.connect(
                        f"nats://127.0.0.1:{port}",
                        user="scout",
                        password="wrong-password",
                        max_reconnect_attempts=0,
                        allow_reconnect=False,
                        connect_timeout=2,
                    )

            asyncio.run(check())
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=5) as r:
                assert r.status == 200
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_server_enforces_the_rendered_device_acls(render) -> None:
    from scout_runtime.errors import Forbidden
    from scout_runtime.settings import Settings
    from scout_runtime.store import open_store

    docs = render()
    data = _secret_data(docs, "scout-redis")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="scout-redis-") as tmp:
        (Path(tmp) / "users.acl").write_text(data["users.acl"])
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--aclfile",
                f"{tmp}/users.acl",
                "--dir",
                tmp,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_port(port, proc)
            local = lambda key: data[key].replace("scout-redis.scout.svc:6379", f"127.0.0.1:{port}")  # noqa: E731

            async def check() -> None:
                settings = Settings()
                phone = open_store(local("device-phone-1-cloud-store-url"), settings=settings)
                car = open_store(local("device-car-1-cloud-store-url"), settings=settings)
                decoder = open_store(local("cloud-store-url"), settings=settings)
                try:
                    assert await phone.ping() and await car.ping() and await decoder.ping()
                    ref = await phone.put_blob("phone-1", b"kv bytes" * 100, ttl_s=60)
                    # The decoders (default user) read every device's blob ...
                    assert await decoder.get_blob(ref, device_id="phone-1") == b"kv bytes" * 100
                    # ... another device's Redis user cannot read or write it: Redis itself refuses (NOPERM).
                    with pytest.raises(Forbidden):
                        await car.get(ref.key)
                    with pytest.raises(Forbidden):
                        await car.put(ref.key, b"forged", ttl_s=60)
                    with pytest.raises(Forbidden):
                        await car.put_blob("phone-1", b"forged", ttl_s=60)
                    doc = await car.put_document("a shared document")
                    assert await phone.get_document(doc) == "a shared document"
                finally:
                    for s in (phone, car, decoder):
                        await s.close()

            asyncio.run(check())
        finally:
            proc.terminate()
            proc.wait(10)
