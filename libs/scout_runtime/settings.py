"""Runtime settings: one place for every default, overridable by ``SCOUT_*`` environment variables.

Why secrets are `SecretStr`, URLs included: passwords arrive from Kubernetes Secrets as environment variables
(``SCOUT_NATS_PASSWORD``, ``SCOUT_REDIS_PASSWORD``) or embedded in a URL (``redis://user:pass@host``). A
`SecretStr` prints as ``**********`` in ``repr``, ``str``, logs and ``model_dump_json``, so logging the settings
object (or an exception that contains it) never leaks one; code that needs the value asks for it explicitly with
``get_secret_value()``. `describe` gives a loggable summary with URLs redacted to scheme, host and port.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scout_runtime.limits import Limits
from scout_runtime.subjects import Subjects, validate_token

__all__ = ["STORE_SCHEMES", "Settings", "redact_url"]

STORE_SCHEMES = ("redis", "rediss", "memory")
NATS_SCHEMES = ("nats", "tls", "ws", "wss", "inproc")
"""``inproc://`` selects the in-process bus (the embedded default); the others are NATS server URLs."""


def redact_url(url: str) -> str:
    """``scheme://[user@]host[:port][/path]`` with any password removed (safe to log)."""
    parts = []
    for one in url.split(","):
        try:
            u = urlsplit(one.strip())
            host = u.hostname or ""
            port = f":{u.port}" if u.port else ""
        except ValueError:
            parts.append("<invalid url>")
            continue
        user = f"{u.username}@" if u.username else ""
        if u.password is not None:
            user = f"{u.username or ''}:***@"
        parts.append(f"{u.scheme}://{user}{host}{port}{u.path}")
    return ",".join(parts)


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:128]


class Settings(BaseSettings):
    """Every runtime knob of a Scout service (``SCOUT_<FIELD>`` in the environment)."""

    model_config = SettingsConfigDict(env_prefix="SCOUT_", extra="ignore", validate_default=True)

    namespace: str = ""
    """Prefix for subjects, streams and store keys (tests, or several deployments on one NATS account)."""
    instance_id: str = Field(default_factory=_default_instance, max_length=128)

    # --- NATS ---
    nats_url: SecretStr = SecretStr("nats://127.0.0.1:4222")
    """Comma-separated server URLs, or ``inproc://`` for the in-process bus. A URL may embed credentials."""
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_tls_hostname: str | None = None
    nats_connect_timeout_s: float = Field(default=2.0, gt=0)
    nats_reconnect_wait_s: float = Field(default=0.5, gt=0)
    nats_max_reconnect: int = Field(default=-1, ge=-1)
    """Reconnect attempts after a lost connection (-1: forever; a service should outlive a NATS restart)."""
    request_timeout_s: float = Field(default=30.0, gt=0)

    # --- stores ---
    edge_store_url: SecretStr = SecretStr("memory://edge")
    """Where the edge keeps raw KV between prefill and encode (a pod-local store; never crosses the uplink)."""
    cloud_store_url: SecretStr = SecretStr("memory://cloud")
    """Where encoded blobs and documents are staged for the cloud decoders (across the uplink)."""
    redis_username: str | None = None
    """ACL user for both stores (overrides a user in the URL)."""
    redis_password: SecretStr | None = None
    redis_tls_ca: Path | None = None
    store_prefix: str = "scout:"
    store_ttl_s: int = Field(default=600, ge=1, le=7 * 86400)
    """Every staged key expires: a request that dies leaves nothing behind for longer than this."""

    # --- limits ---
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_blob_bytes: int = Field(default=256 * 1024 * 1024, ge=1, le=512 * 1024 * 1024)
    max_document_bytes: int = Field(default=512 * 1024, ge=1)
    max_question_chars: int = Field(default=4096, ge=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    max_context_tokens: int = Field(default=32_768, ge=1)
    max_positions_bytes: int = Field(default=64 * 1024, ge=1)
    min_deadline_ms: int = Field(default=1, ge=1)
    max_deadline_ms: int = Field(default=600_000, ge=1)
    max_inflight_per_device: int = Field(default=4, ge=1)

    # --- decode work queue ---
    ack_wait_s: float = Field(default=30.0, gt=0)
    """A decoder that neither acks nor reports progress for this long is presumed dead: the request is redelivered."""
    max_deliver: int = Field(default=3, ge=1)
    nak_delay_s: float = Field(default=0.5, ge=0)
    decode_max_age_s: float = Field(default=3600.0, gt=0)
    max_inflight_decodes: int = Field(default=1, ge=1)
    """Decode requests one decoder replica works on at once (a GPU replica: usually 1)."""

    # --- observability and HTTP ---
    otel_service_prefix: str = "scout"
    otel_force: bool = False
    """Export traces even if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is unset (to the exporter's default endpoint)."""
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9090, ge=0, le=65535)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return validate_token(value, "namespace", 32) if value else value

    @field_validator("store_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # Key prefixes become Redis ACL glob patterns: no glob metacharacters, and a ':' separator at the end.
        if not re.fullmatch(r"(?:[A-Za-z0-9_.-]+:)+", value):
            raise ValueError("store_prefix must be ':'-terminated parts of [A-Za-z0-9_.-], e.g. 'scout:'")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: SecretStr) -> SecretStr:
        for one in value.get_secret_value().split(","):
            scheme = one.strip().split("://", 1)[0] if "://" in one else ""
            if scheme not in NATS_SCHEMES:
                raise ValueError(f"nats_url: scheme must be one of {', '.join(NATS_SCHEMES)}")
        return value

    @field_validator("edge_store_url", "cloud_store_url")
    @classmethod
    def _store_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in STORE_SCHEMES:
            raise ValueError(f"store URL scheme must be one of {', '.join(STORE_SCHEMES)}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("nats_tls_cert and nats_tls_key must be given together")
        if self.min_deadline_ms > self.max_deadline_ms:
            raise ValueError("min_deadline_ms exceeds max_deadline_ms")
        return self

    # --- derived ---
    def limits(self) -> Limits:
        """The message and store limits these settings configure."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_document_bytes=self.max_document_bytes,
            max_question_chars=self.max_question_chars,
            max_new_tokens=self.max_new_tokens,
            min_deadline_ms=self.min_deadline_ms,
            max_deadline_ms=self.max_deadline_ms,
            max_context_tokens=self.max_context_tokens,
            max_positions_bytes=self.max_positions_bytes,
            max_blob_bytes=self.max_blob_bytes,
        )

    def subjects(self) -> Subjects:
        """The subject layout of this namespace."""
        return Subjects(self.namespace)

    def key_prefix(self) -> str:
        """Store key prefix including the namespace (``<namespace>:scout:`` or ``scout:``)."""
        return f"{self.namespace}:{self.store_prefix}" if self.namespace else self.store_prefix

    def service_name(self, role: str) -> str:
        """OpenTelemetry ``service.name`` of a role: ``scout-<role>``."""
        return f"{self.otel_service_prefix}-{role}"

    def describe(self) -> dict[str, Any]:
        """A loggable summary: every field, secrets masked, URLs reduced to scheme://[user@]host:port."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("_url") and isinstance(value, SecretStr):
                out[name] = redact_url(value.get_secret_value())
            elif isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out
