"""Settings: SCOUT_* variables, one place for defaults, and credentials that never show up in repr or logs."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from scout_runtime.limits import Limits
from scout_runtime.settings import Settings, redact_url

NATS_PW = "nats-Pa55-word-xyz"
REDIS_PW = "redis-Pa55-word-abc"
URL_PW = "url-Pa55-word-qrs"


def test_defaults(env_clean: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.nats_url.get_secret_value() == "nats://127.0.0.1:4222"
    assert s.cloud_store_url.get_secret_value() == "memory://cloud"
    assert s.limits() == Limits(max_blob_bytes=s.max_blob_bytes)
    assert s.subjects().ask == "scout.v1.ask"
    assert s.key_prefix() == "scout:"
    assert s.service_name("selector") == "scout-selector"


def test_environment_variables(env_clean: pytest.MonkeyPatch) -> None:
    env = env_clean
    env.setenv("SCOUT_NAMESPACE", "staging")
    env.setenv("SCOUT_NATS_URL", "nats://10.0.0.1:4222,nats://10.0.0.2:4222")
    env.setenv("SCOUT_NATS_USER", "svc")
    env.setenv("SCOUT_NATS_PASSWORD", NATS_PW)
    env.setenv("SCOUT_CLOUD_STORE_URL", "rediss://redis.cloud:6380/1")
    env.setenv("SCOUT_EDGE_STORE_URL", "redis://127.0.0.1:6379/0")
    env.setenv("SCOUT_REDIS_USERNAME", "scout")
    env.setenv("SCOUT_REDIS_PASSWORD", REDIS_PW)
    env.setenv("SCOUT_STORE_TTL_S", "120")
    env.setenv("SCOUT_MAX_BLOB_BYTES", "1048576")
    env.setenv("SCOUT_MAX_DOCUMENT_BYTES", "2048")
    env.setenv("SCOUT_MAX_INFLIGHT_PER_DEVICE", "2")
    env.setenv("SCOUT_ACK_WAIT_S", "5.5")
    env.setenv("SCOUT_MAX_DELIVER", "4")
    env.setenv("SCOUT_OTEL_SERVICE_PREFIX", "acme")
    env.setenv("SCOUT_HTTP_PORT", "8081")
    env.setenv("SCOUT_METRICS_PORT", "9091")
    s = Settings()
    assert s.nats_user == "svc" and s.nats_password is not None
    assert s.nats_password.get_secret_value() == NATS_PW
    assert s.redis_password is not None and s.redis_password.get_secret_value() == REDIS_PW
    assert s.store_ttl_s == 120 and s.max_blob_bytes == 1048576 and s.max_inflight_per_device == 2
    assert s.ack_wait_s == 5.5 and s.max_deliver == 4 and s.http_port == 8081 and s.metrics_port == 9091
    assert s.limits().max_document_bytes == 2048 and s.limits().max_blob_bytes == 1048576
    assert s.subjects().decode == "staging.scout.v1.decode"
    assert s.key_prefix() == "staging:scout:"
    assert s.service_name("cloud_decoder") == "acme-cloud_decoder"


def test_credentials_never_appear_in_repr_dump_or_logs(
    env_clean: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env_clean.setenv("SCOUT_NATS_PASSWORD", NATS_PW)
    env_clean.setenv("SCOUT_NATS_TOKEN", "tok-" + NATS_PW)
    env_clean.setenv("SCOUT_REDIS_PASSWORD", REDIS_PW)
    env_clean.setenv("SCOUT_CLOUD_STORE_URL", f"redis://scout:{URL_PW}@redis:6379/0")
    env_clean.setenv("SCOUT_NATS_URL", f"nats://svc:{URL_PW}@nats:4222")
    s = Settings()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("scout.test").info("settings: %s / %r / %s", s, s, s.describe())
    outputs = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), str(s.describe()), caplog.text]
    for text in outputs:
        for secret in (NATS_PW, REDIS_PW, URL_PW):
            assert secret not in text
    described = s.describe()
    assert described["cloud_store_url"] == "redis://scout:***@redis:6379/0"
    assert described["nats_url"] == "nats://svc:***@nats:4222"
    assert described["nats_password"] == "**********"
    # The values are still there for the code that needs them.
    assert URL_PW in s.cloud_store_url.get_secret_value()


@pytest.mark.parametrize(
    "field,value",
    [
        ("cloud_store_url", "ftp://x"),
        ("edge_store_url", "redis-no-scheme"),
        ("nats_url", "http://127.0.0.1:4222"),
        ("namespace", "a.b"),
        ("store_prefix", "scout"),
        ("store_prefix", "sc*ut:"),
        ("store_ttl_s", 0),
        ("max_deliver", 0),
        ("http_port", 70000),
    ],
)
def test_invalid_values_are_refused(env_clean: pytest.MonkeyPatch, field: str, value: object) -> None:
    if field.endswith("_url"):
        value = SecretStr(str(value))
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_tls_cert_and_key_go_together(env_clean: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(nats_tls_cert="client.pem")
    assert Settings(nats_tls_cert="client.pem", nats_tls_key="client.key").nats_tls_key is not None


def test_redact_url() -> None:
    assert redact_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:p@h:1") == "redis://:***@h:1"
    assert redact_url("nats://h:4222,nats://a:b@g:4223") == "nats://h:4222,nats://a:***@g:4223"
    assert redact_url("memory://cloud") == "memory://cloud"
    assert "secret" not in redact_url("redis://u:secret@h:notaport")
