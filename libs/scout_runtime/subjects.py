"""Every NATS subject, stream and consumer name Scout uses, derived in one place (DESIGN.md: never typed by hand).

Layout (``<root>`` is ``scout.v1``, or ``<namespace>.scout.v1`` when a namespace is configured):

    <root>.ask                  request/reply: client -> selector (`AskRequest` -> `AskReply` | `ErrorReply`),
                                served by selectors not bound to a device (any device's asks)
    <root>.ask.<device_id>      request/reply: client -> the selector bound to that one device
                                (``SCOUT_SELECTOR_DEVICE_ID``), which serves nothing else
    <root>.plan                 request/reply: selector -> transport policy (`PlanRequest` -> `Plan`)
    <root>.encode               request/reply: selector -> quantizer (`EncodeRequest` -> `EncodeReply`); the
                                quantizer encodes the staged raw KV per plan, uploads it and enqueues the decode
    <root>.decode               JetStream work queue (stream ``SCOUT_DECODE``, durable pull consumer
                                ``scout-decoders`` shared by every decoder replica): `DecodeRequest`
    <root>.result.<token>       where a decoder publishes `DecodeResult` / `ErrorReply` (the request's reply_to)
    <root>.errors               `ErrorReply` of work that could not be answered otherwise (max deliveries reached)
    <root>.link.<device_id>     `LinkState` of one device (shaper rate, measured goodput)
    <root>.health.<role>        `Health` beacons

Why a namespace: tests (and several deployments sharing one NATS account) need disjoint subjects and streams
without changing the layout; production leaves it empty. The version lives in the subject (``v1``) so a future
incompatible layout can run side by side with this one during a migration; message bodies carry their own
``schema_version`` for compatible evolution.

Why device ids are validated: they become subject tokens and store key parts. A ``.`` would add a subject level,
``*``/``>`` would turn a publish subject into a wildcard subscription, ``:`` would break a store key, and
whitespace would break the protocol line; so only ``[A-Za-z0-9_-]``, at most 64 characters, ever gets through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from scout_runtime.errors import BadRequest

__all__ = [
    "ASK",
    "DECODE",
    "DECODE_DURABLE",
    "DECODE_QUEUE_GROUP",
    "DECODE_STREAM",
    "DEFAULT",
    "DEVICE_ID_MAX_LEN",
    "ENCODE",
    "ERRORS",
    "HEALTH",
    "LINK",
    "PLAN",
    "ROOT",
    "DeviceId",
    "Subjects",
    "Token",
    "is_valid_subject",
    "validate_device_id",
    "validate_token",
]

ROOT = "scout.v1"
DEVICE_ID_MAX_LEN = 64
TOKEN_MAX_LEN = 64
SUBJECT_MAX_LEN = 256
INBOX_PREFIX = "_INBOX."

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_SUBJECT_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def validate_token(value: str, what: str = "token", max_len: int = TOKEN_MAX_LEN) -> str:
    """A single subject token: ``[A-Za-z0-9_-]{1,max_len}``; raises `BadRequest` (a ValueError) otherwise."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > max_len or not _TOKEN_RE.fullmatch(value):
        # The value is not echoed: it is untrusted and error messages travel back to clients and into logs.
        raise BadRequest(f"{what} must be 1-{max_len} characters of [A-Za-z0-9_-] (got {len(value)} characters)")
    return value


def validate_device_id(value: str) -> str:
    """A device id: ``[A-Za-z0-9_-]{1,64}`` (it becomes a subject token and part of store keys)."""
    return validate_token(value, "device_id", DEVICE_ID_MAX_LEN)


def is_valid_subject(value: str) -> bool:
    """A concrete (wildcard-free) subject of ``.``-separated tokens, at most 256 characters."""
    return isinstance(value, str) and 0 < len(value) <= SUBJECT_MAX_LEN and bool(_SUBJECT_RE.fullmatch(value))


DeviceId = Annotated[str, AfterValidator(validate_device_id)]
"""A validated device id, for pydantic models."""

Token = Annotated[str, AfterValidator(validate_token)]
"""A validated subject token (request ids, instance ids, roles), for pydantic models."""


@dataclass(frozen=True)
class Subjects:
    """The subject layout under one namespace; `DEFAULT` (no namespace) is production's."""

    namespace: str = ""

    def __post_init__(self) -> None:
        if self.namespace:
            validate_token(self.namespace, "namespace", 32)

    @property
    def root(self) -> str:
        return f"{self.namespace}.{ROOT}" if self.namespace else ROOT

    @property
    def ask(self) -> str:
        return f"{self.root}.ask"

    def ask_device(self, device_id: str) -> str:
        """Asks for one device only: what a device-bound selector (one per edge device pod) serves.

        A separate subject rather than a filter on `ask`: with one shared queue group, NATS hands an ask to any
        member, so a device's ask could reach another device's selector (another link, another store user).
        ``<root>.ask`` and ``<root>.ask.<device_id>`` are distinct subjects; a subscriber to one never sees the
        other's messages.
        """
        return f"{self.ask}.{validate_device_id(device_id)}"

    @property
    def plan(self) -> str:
        return f"{self.root}.plan"

    @property
    def encode(self) -> str:
        return f"{self.root}.encode"

    @property
    def decode(self) -> str:
        return f"{self.root}.decode"

    @property
    def errors(self) -> str:
        return f"{self.root}.errors"

    @property
    def result_prefix(self) -> str:
        return f"{self.root}.result"

    def result(self, token: str) -> str:
        """The subject a requester listens on for decode results (one per requester instance, or per request)."""
        return f"{self.result_prefix}.{validate_token(token, 'result token')}"

    @property
    def link_prefix(self) -> str:
        return f"{self.root}.link"

    def link(self, device_id: str) -> str:
        """Link state of one device."""
        return f"{self.link_prefix}.{validate_device_id(device_id)}"

    @property
    def link_all(self) -> str:
        """Wildcard subscription to every device's link state (the transport policy's view of the cell)."""
        return f"{self.link_prefix}.*"

    @property
    def health_prefix(self) -> str:
        return f"{self.root}.health"

    def health(self, role: str) -> str:
        return f"{self.health_prefix}.{validate_token(role, 'role')}"

    @property
    def decode_stream(self) -> str:
        """JetStream stream holding the decode work queue (stream names may not contain dots)."""
        return f"SCOUT_DECODE_{self.namespace.upper()}" if self.namespace else "SCOUT_DECODE"

    @property
    def decode_durable(self) -> str:
        """The durable pull consumer every decoder replica fetches from: it is the decoders' queue group."""
        return "scout-decoders"

    @property
    def decode_queue_group(self) -> str:
        """Queue group of decoder replicas (the durable consumer's name: one group, one cursor, shared work)."""
        return self.decode_durable

    def is_reply_subject(self, subject: str) -> bool:
        """Whether a decode request's ``reply_to`` may be used: an inbox or this layout's result subjects.

        A decoder publishes to ``reply_to`` on a requester's behalf; accepting any subject would let a client
        make the decoder publish into ``ask``/``decode``/``link`` subjects (reflection). Only replies go out.
        """
        if not is_valid_subject(subject):
            return False
        return subject.startswith(INBOX_PREFIX) or subject.startswith(self.result_prefix + ".")


DEFAULT = Subjects()
ASK = DEFAULT.ask
PLAN = DEFAULT.plan
ENCODE = DEFAULT.encode
DECODE = DEFAULT.decode
ERRORS = DEFAULT.errors
LINK = DEFAULT.link_prefix
HEALTH = DEFAULT.health_prefix
DECODE_STREAM = DEFAULT.decode_stream
DECODE_DURABLE = DEFAULT.decode_durable
DECODE_QUEUE_GROUP = DEFAULT.decode_queue_group
