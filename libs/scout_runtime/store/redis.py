"""`RedisStore` (``redis://``, ``rediss://``) and the Redis ACL rules that confine a device to its own keys."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from scout_runtime.errors import BlobCorrupt, BusClosed, Forbidden, ScoutError, Timeout
from scout_runtime.settings import redact_url
from scout_runtime.store.base import DEFAULT_PREFIX, META_SUFFIX, PREFIX_RE, BlobStore
from scout_runtime.subjects import validate_device_id


class RedisStore(BlobStore):
    """`BlobStore` over redis-py's asyncio client (``redis://`` or ``rediss://``)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        socket_timeout_s: float = 30.0,
        retries: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        import redis.asyncio as redis
        import redis.exceptions as rex
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        parts = urlsplit(url)
        options: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "db": int(parts.path.lstrip("/") or 0),
            "username": username if username is not None else (unquote(parts.username) if parts.username else None),
            "password": password if password is not None else (unquote(parts.password) if parts.password else None),
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": 5.0,
            "health_check_interval": 30,
            # A few quick retries ride out a dropped connection; redis-py's default (seconds of backoff, also on
            # refused credentials, which it counts as connection errors) would stall a request far past its deadline.
            "retry": Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                retries=retries,
                supported_errors=(rex.ConnectionError, rex.TimeoutError),
            ),
        }
        if parts.scheme == "rediss":
            options["ssl"] = True
            if tls_ca:
                options["ssl_ca_certs"] = tls_ca
        self.url = redact_url(url)
        self.client = redis.Redis(**options)

    async def _run(self, what: str, coro: Any) -> Any:
        import redis.exceptions as rex

        try:
            return await coro
        except rex.NoPermissionError:
            raise Forbidden(f"Redis refused {what} (ACL)") from None
        except rex.AuthenticationError:
            raise Forbidden(f"Redis refused the credentials for {self.url}") from None
        except rex.ResponseError as e:
            if str(e).startswith("NOPERM") or "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise Forbidden(f"Redis refused {what}: {str(e).split(' ', 1)[0]}") from None
            raise
        except rex.TimeoutError:
            raise Timeout(f"Redis did not answer {what} in time") from None
        except rex.ConnectionError as e:
            raise BusClosed(f"cannot reach Redis at {self.url}: {type(e).__name__}") from None

    async def _set(self, key: str, data: bytes, ttl_ms: int) -> None:
        await self._run("SET", self.client.set(key, data, px=ttl_ms))

    async def _get(self, key: str) -> bytes | None:
        value = await self._run("GET", self.client.get(key))
        return None if value is None else bytes(value)

    async def _meta_and_length(self, key: str) -> tuple[bytes | None, int | None]:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key + META_SUFFIX)
                pipe.strlen(key)
                pipe.exists(key)
                return list(await pipe.execute())

        meta, length, exists = await self._run("GET/STRLEN", read())
        return (None if meta is None else bytes(meta)), (int(length) if exists else None)

    async def _pttl(self, key: str) -> int | None:
        value = int(await self._run("PTTL", self.client.pttl(key)))
        if value == -2:
            return None
        if value == -1:
            raise BlobCorrupt(f"{key!r} has no TTL")  # every key we write has one
        return value

    async def _expire(self, key: str, ttl_ms: int) -> None:
        await self._run("PEXPIRE", self.client.pexpire(key, ttl_ms))

    async def _delete(self, *keys: str) -> None:
        await self._run("DEL", self.client.delete(*keys))

    async def ping(self) -> bool:
        try:
            return bool(await self._run("PING", self.client.ping()))
        except ScoutError:
            return False

    async def close(self) -> None:
        await self.client.aclose()


# --- Redis ACL for per-device isolation ----------------------------------------------------------------------
REDIS_DEVICE_COMMANDS = ("get", "set", "strlen", "exists", "pttl", "pexpire", "del", "ping")
"""What `RedisStore` sends for a device (the ``+client|setinfo`` handshake redis-py tries is optional)."""


def redis_device_user(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The ACL user name of a device."""
    del prefix  # one user per device id; the prefix is part of the key patterns, not the name
    return f"scout-device-{validate_device_id(device_id)}"


def redis_device_acl(
    device_id: str, password: str, *, prefix: str = DEFAULT_PREFIX, documents: bool = True
) -> list[str]:
    """The ``ACL SETUSER <redis_device_user(device_id)> <rules…>`` rules confining a device to its own keys.

    The device may run only the commands the store needs, on ``<prefix>blob:<device_id>:*`` (its blobs and their
    metadata) and, with ``documents``, ``<prefix>doc:*`` (shared, content-verified documents); no pub/sub channels.
    Device ids and prefixes cannot contain glob characters (validated), so the patterns match literally.
    """
    validate_device_id(device_id)
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"invalid prefix {prefix!r}")
    if not password or any(c.isspace() for c in password):
        raise ValueError("the device password must be non-empty and contain no whitespace")
    rules = ["reset", "on", f">{password}", f"~{prefix}blob:{device_id}:*"]
    if documents:
        rules.append(f"~{prefix}doc:*")
    rules += ["resetchannels", "-@all", *(f"+{c}" for c in REDIS_DEVICE_COMMANDS)]
    return rules
