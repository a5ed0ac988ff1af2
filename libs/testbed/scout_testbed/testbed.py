"""A whole deployment on one machine, authentication on: our own nats-server (JetStream, user/password) and
redis-server (``requirepass`` on the default user plus one ACL user for the services), and every role as its own
OS process (`scout_testbed.launcher`) holding those credentials only through ``SCOUT_*`` settings.

What ``scout bench reliability`` and ``tests/reliability`` run the load, the faults and the hostile input against.
Why our own servers rather than the machine's: the fault scenarios restart NATS and Redis, which must never touch a
server somebody else uses; and the production path has credentials on both, so the roles must be shown to work
(and to reconnect) with them. Secrets live in 0600 config files in a private folder and in the role processes'
environment, never on a command line (``ps`` shows those to every local user) and never in a log.

Loopback only: both servers bind 127.0.0.1 on free ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from scout_runtime.settings import Settings
from scout_runtime.store import RedisStore
from scout_testbed.launcher import RoleProcess, role_env, spawn_role, wait_ready

__all__ = ["ROLE_DEFAULTS", "AuthServers", "Deployment", "ServerProcess", "deployment", "free_port"]

SERVICE_USER = "scout-services"
"""The Redis ACL user every role logs in as (keys of the deployment's namespace only)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    """A file only this user can read (it holds passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class ServerProcess:
    """A server we started (nats-server or redis-server): restartable on the same port and data folder."""

    kind: str
    args: list[str]
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self, timeout_s: float = 15.0) -> None:
        if shutil.which(self.args[0]) is None:
            raise RuntimeError(f"{self.args[0]} is not on PATH (the reliability runs need a real {self.kind})")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _reachable(self.port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not start on port {self.port}; see {self.log}")
            time.sleep(0.02)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 10
        while _reachable(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self, sig: int = signal.SIGTERM, down_s: float = 0.0) -> float:
        """Stop (``sig``: SIGTERM graceful, SIGKILL a crash), stay down ``down_s``, start again; seconds the server
        was away."""
        t0 = time.perf_counter()
        self.stop(sig)
        time.sleep(down_s)
        self.start()
        self.restarts += 1
        return time.perf_counter() - t0


@dataclass
class AuthServers:
    """nats-server with JetStream and user/password auth, redis-server with a password and an ACL service user."""

    namespace: str
    workdir: Path
    nats: ServerProcess
    redis: ServerProcess
    nats_user: str
    nats_password: SecretStr
    redis_password: SecretStr
    """The service ACL user's password (`SERVICE_USER`)."""
    redis_admin_password: SecretStr
    """The default user's (``requirepass``): what a fault scenario uses to look behind the services' back."""

    @classmethod
    def start(cls, namespace: str, workdir: Path) -> AuthServers:
        """Start both servers on free loopback ports with fresh random credentials."""
        nats_pw, redis_pw, admin_pw = (secrets.token_urlsafe(18) for _ in range(3))
        (workdir / "js").mkdir(parents=True, exist_ok=True)
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        nats_port, redis_port = free_port(), free_port()
        nats_conf = workdir / "nats.conf"
        _write_private(
            nats_conf,
            f'listen: "127.0.0.1:{nats_port}"\n'
            f'jetstream {{ store_dir: "{workdir / "js"}" }}\n'
            f'authorization {{ user: "scout", password: "{nats_pw}" }}\n',
        )
        redis_conf = workdir / "redis.conf"
        # No persistence: a restart loses every staged blob (the fault the reliability run provokes). The ACL user
        # is configuration, so it survives restarts, as a Kubernetes-mounted ACL file would.
        _write_private(
            redis_conf,
            f'port {redis_port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {workdir / "redis"}\n'
            f"requirepass {admin_pw}\n"
            f"user {SERVICE_USER} on >{redis_pw} ~{namespace}:* resetchannels +@all -@dangerous\n",
        )
        nats = ServerProcess("nats-server", ["nats-server", "-c", str(nats_conf)], nats_port, workdir / "nats.log")
        redis = ServerProcess("redis-server", ["redis-server", str(redis_conf)], redis_port, workdir / "redis.log")
        nats.start()
        try:
            redis.start()
        except BaseException:
            nats.stop()
            raise
        return cls(
            namespace=namespace,
            workdir=workdir,
            nats=nats,
            redis=redis,
            nats_user="scout",
            nats_password=SecretStr(nats_pw),
            redis_password=SecretStr(redis_pw),
            redis_admin_password=SecretStr(admin_pw),
        )

    @property
    def nats_url(self) -> str:
        """The server URL, without credentials (those travel as settings)."""
        return f"nats://127.0.0.1:{self.nats.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def credentials_env(self) -> dict[str, str]:
        """The ``SCOUT_*`` variables that give a role its credentials (the way a pod gets them from Secrets)."""
        return {
            "SCOUT_NATS_USER": self.nats_user,
            "SCOUT_NATS_PASSWORD": self.nats_password.get_secret_value(),
            "SCOUT_REDIS_USERNAME": SERVICE_USER,
            "SCOUT_REDIS_PASSWORD": self.redis_password.get_secret_value(),
        }

    def stop(self) -> None:
        for server in (self.redis, self.nats):
            with contextlib.suppress(Exception):
                server.stop()


ROLE_DEFAULTS: dict[str, str] = {
    "SCOUT_ACK_WAIT_S": "6",
    "SCOUT_MAX_DELIVER": "3",
    "SCOUT_NAK_DELAY_S": "0.2",
    "SCOUT_REQUEST_TIMEOUT_S": "45",
    "SCOUT_STORE_TTL_S": "900",
    "SCOUT_DECODER_HEARTBEAT_S": "1",
    "SCOUT_POLICY_ESTIMATOR": "last",
    "SCOUT_SELECTOR_PLAN_TIMEOUT_S": "10",
    "SCOUT_SELECTOR_ENCODE_TIMEOUT_S": "30",
    "SCOUT_NATS_RECONNECT_WAIT_S": "0.25",
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
}
"""Role settings of the reliability deployment: a short ack wait (a killed decoder's work comes back in seconds,
heartbeats every second keep a slow but live decode its own), request timeouts (45 s for a decode result, 30 s for
the quantizer, 10 s for a plan) below the clients' (a request the services give up on, e.g. because core NATS dropped
a reply during an outage, ends in a typed ``timeout`` the client still receives, not in silence), and no trace
export."""


@dataclass
class Deployment:
    """Policy, quantizer, ``decoders`` cloud decoders and a selector, each its own process, against `AuthServers`."""

    servers: AuthServers
    workdir: Path
    model: str = "smollm2-135m"
    dtype: str = "fp32"
    decoders: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, RoleProcess] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.servers.namespace

    def env(self, name: str) -> dict[str, str]:
        extra = {
            **ROLE_DEFAULTS,
            "SCOUT_SELECTOR_MODEL": self.model,
            "SCOUT_SELECTOR_DTYPE": self.dtype,
            "SCOUT_DECODER_MODEL": self.model,
            "SCOUT_DECODER_DTYPE": self.dtype,
            "SCOUT_POLICY_EDGE_MODEL": self.model,
            **self.servers.credentials_env(),
            **self.extra_env,
        }
        return role_env(
            name=name,
            namespace=self.namespace,
            nats_url=self.servers.nats_url,
            store_url=self.servers.redis_url,
            extra=extra,
        )

    def spawn(self, role: str, name: str) -> RoleProcess:
        proc = spawn_role(role, name, self.env(name), self.workdir)
        self.procs[name] = proc
        return proc

    def start(self, timeout_s: float = 600.0) -> None:
        procs = [self.spawn("transport_policy", "policy"), self.spawn("quantizer", "quantizer")]
        procs += [self.spawn("cloud_decoder", f"decoder-{chr(ord('a') + i)}") for i in range(self.decoders)]
        procs.append(self.spawn("selector", "selector"))
        wait_ready(procs, timeout_s)

    @property
    def selector(self) -> RoleProcess:
        return self.procs["selector"]

    @property
    def policy(self) -> RoleProcess:
        return self.procs["policy"]

    def decoder_procs(self) -> list[RoleProcess]:
        return [p for name, p in sorted(self.procs.items()) if name.startswith("decoder-")]

    def ensure_decoders(self, timeout_s: float = 600.0) -> list[RoleProcess]:
        """Every decoder alive (restarting any a fault killed)."""
        fresh = [self.spawn("cloud_decoder", p.name) for p in self.decoder_procs() if not p.alive]
        if fresh:
            wait_ready(fresh, timeout_s)
        return self.decoder_procs()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.selector.ports['http']}"

    def settings(self, **changes: Any) -> Settings:
        """A client's settings: this deployment's NATS (with its credentials), namespace and stores."""
        fields: dict[str, Any] = {
            "namespace": self.namespace,
            "nats_url": SecretStr(self.servers.nats_url),
            "nats_user": self.servers.nats_user,
            "nats_password": self.servers.nats_password,
            "nats_reconnect_wait_s": 0.25,
            "edge_store_url": SecretStr(self.servers.redis_url),
            "cloud_store_url": SecretStr(self.servers.redis_url),
            "redis_username": SERVICE_USER,
            "redis_password": self.servers.redis_password,
            "request_timeout_s": 120,
        }
        return Settings(**{**fields, **changes})

    def store(self, ttl_s: int = 600) -> RedisStore:
        """The cloud store as the services see it (service ACL user, namespaced prefix)."""
        settings = self.settings()
        return RedisStore(
            self.servers.redis_url,
            username=SERVICE_USER,
            password=self.servers.redis_password.get_secret_value(),
            prefix=settings.key_prefix(),
            default_ttl_s=ttl_s,
        )

    def admin_redis(self) -> Any:
        """A raw Redis client as the default (admin) user: to look at or tamper with keys behind the store."""
        import redis.asyncio as redis_async

        return redis_async.Redis(
            host="127.0.0.1",
            port=self.servers.redis.port,
            password=self.servers.redis_admin_password.get_secret_value(),
        )

    @property
    def ack_wait_s(self) -> float:
        """The decode work queue's ack wait the roles run with (how long a dead decoder's work stays away)."""
        return float({**ROLE_DEFAULTS, **self.extra_env}["SCOUT_ACK_WAIT_S"])

    def all_alive(self) -> bool:
        return all(p.alive for p in self.procs.values())

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every role (they drain), then wait; the exit codes by name."""
        for proc in self.procs.values():
            if proc.alive:
                proc.popen.send_signal(signal.SIGTERM)
        return {name: proc.stop(timeout_s=60) for name, proc in self.procs.items()}


@contextlib.contextmanager
def deployment(
    *, model: str = "smollm2-135m", dtype: str = "fp32", decoders: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[Deployment]:
    """Servers and roles up for the block, everything stopped and removed after it (the servers' data too)."""
    namespace = "rel" + uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"scout-{namespace}-"))
    os.chmod(workdir, 0o700)
    servers = AuthServers.start(namespace, workdir)
    dep = Deployment(servers, workdir, model=model, dtype=dtype, decoders=decoders, extra_env=dict(extra_env or {}))
    try:
        dep.start()
        yield dep
    except BaseException:
        # The folder (and the role logs in it) is removed below: keep what explains the failure.
        for name, proc in dep.procs.items():
            print(f"--- {name} (rc={proc.popen.poll()}), last lines of its log:\n{proc.tail(15)}", file=sys.stderr)
        raise
    finally:
        try:
            dep.stop_all()
        finally:
            servers.stop()
            keep = os.environ.get("SCOUT_RELIABILITY_KEEP_LOGS")
            if keep:  # the role and server logs, for a run that needs explaining (no config files: passwords)
                Path(keep).mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, Path(keep) / log.name)
            shutil.rmtree(workdir, ignore_errors=True)
