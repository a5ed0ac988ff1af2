"""The messages on Scout's bus: one pydantic model per subject, each versioned, each bounded.

Every message carries ``schema_version`` (a ``Literal``: this reader knows exactly version 1) and ``type`` (which
message it is, so a reply subject can carry either the answer or an `ErrorReply` and the reader can tell them
apart before validating). Models forbid unknown fields and are frozen: what was validated is what is used.

`parse` is the only way bytes from another process become a model, and it trusts nothing:

1. the size is checked before any JSON parsing (`TooLarge`), so a 1 GB message costs nothing;
2. the JSON is parsed by pydantic-core (bounded recursion, no NaN/Infinity) into plain values;
3. ``schema_version`` is checked before the body: missing, non-integer or unknown -> `UnsupportedVersion`, so a
   newer sender gets a typed answer instead of a list of field errors from a schema it does not use;
4. the body is validated against the model, with the configured `Limits` in the validation context;
   every failure -> `BadRequest` (no other exception type ever leaves `parse`).

Large bytes never travel here (DESIGN.md): documents above `Limits.max_document_bytes` and every KV blob go to the
store, and the messages carry the reference (SHA-256), size and checksum. Position sets are small (hundreds of
bytes) and travel inline, base64-encoded `scout.positions` bytes.

Layout by topic: `.base` (the `Message` base and the checked field types), `.ask` (ask and its reply), `.plan`
(plan request, plan, link state), `.decode` (encode and decode requests and results), `.control` (errors,
health), `.parsing` (`parse`, `parse_reply`). The plan's fields and the modes are the core's
(`scout.policy.plans`): one definition for the planner and the bus. Import from this package: every public name is
re-exported here.
"""

from __future__ import annotations

from scout.policy.plans import KV_MODES, CloudMode, KVMode, Mode
from scout_runtime.messages.ask import AskReply, AskRequest
from scout_runtime.messages.base import SCHEMA_VERSION, Message, Sha256Hex
from scout_runtime.messages.control import ErrorReply, Health
from scout_runtime.messages.decode import DecodeRequest, DecodeResult, EncodeReply, EncodeRequest
from scout_runtime.messages.parsing import parse, parse_reply
from scout_runtime.messages.plan import LinkState, Plan, PlanRequest

__all__ = [
    "KV_MODES",
    "SCHEMA_VERSION",
    "AskReply",
    "AskRequest",
    "CloudMode",
    "DecodeRequest",
    "DecodeResult",
    "EncodeReply",
    "EncodeRequest",
    "ErrorReply",
    "Health",
    "KVMode",
    "LinkState",
    "Message",
    "Mode",
    "Plan",
    "PlanRequest",
    "Sha256Hex",
    "parse",
    "parse_reply",
]
