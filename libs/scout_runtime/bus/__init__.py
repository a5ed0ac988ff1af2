"""The message bus: NATS (core request/reply + JetStream work queue) or an in-process bus with the same semantics.

Two kinds of traffic, two mechanisms (DESIGN.md, data flow):

* **Control** (`publish`, `request`, `subscribe`): ask, plan, link state, health. Core NATS: at-most-once,
  request/reply with a timeout, queue groups to spread requests over replicas.
* **Work** (`ensure_work_queue`, `enqueue`, `consume`): decode requests. A JetStream stream with work-queue
  retention and one durable *pull* consumer that every decoder replica fetches from: the durable is the queue
  group (one cursor, shared work, any replica takes any request). Delivery is at-least-once with explicit
  acknowledgement: a replica that dies (or stalls longer than ``ack_wait`` without `WorkItem.in_progress`) leaves
  the request to be redelivered to another one, up to ``max_deliver`` times. Handlers see `WorkItem.delivery_count`
  so a redelivery is visible (results are idempotent by request id; see issue 10). `enqueue` sets the JetStream
  message id (``Nats-Msg-Id``) to the request id, so a publisher retrying after a lost publish-ack does not
  enqueue the request twice within the stream's duplicate window.

Handler contract for `consume`: settle the item (`ack`, `nak`, `term`) yourself, or return normally (the item is
acked) or raise (it is nak'ed after ``spec.nak_delay_s``, so another replica may retry it). A handler that is
cancelled (the consumer aborted, the process died) settles nothing: the item comes back after ``ack_wait``.

Size: NATS counts headers against ``max_payload`` (1 MiB by default) and closes the connection of a client that
sends more (the server's "Maximum Payload Violation"), which would drop every in-flight request on that connection.
Both buses therefore measure headers + body exactly as the NATS wire format does and raise `PayloadTooLarge`
before sending. Header keys must be HTTP tokens and values may not contain CR/LF (header injection).

`InProcessBus` is the embedded default (``scout demo``): clients of one `InProcessBroker` see the same subjects,
queue groups, inboxes, work queues, ack timeouts, redeliveries, max-deliver and duplicate detection as NATS clients
of one server, and closing a client is a crash (its un-acked work comes back after ``ack_wait``). The contract
tests run every behaviour against both.

Layout: `scout_runtime.bus.base` (the interface, the value types, sizes and headers, the handler runner),
`scout_runtime.bus.inproc` (the in-process broker and bus), `scout_runtime.bus.nats` (the NATS bus). Import from
this package: every public name is re-exported here. Log records go to child loggers of ``scout_runtime.bus``, so
``logging.getLogger("scout_runtime.bus")`` still silences them all.
"""

from __future__ import annotations

from scout_runtime.bus.base import (
    DEFAULT_MAX_PAYLOAD,
    MSG_ID_HEADER,
    Bus,
    EnqueueResult,
    Handler,
    Msg,
    QueueStats,
    Subscription,
    WorkHandler,
    WorkItem,
    WorkQueueSpec,
    check_payload,
    message_size,
    normalize_headers,
)
from scout_runtime.bus.inproc import InProcessBroker, InProcessBus, named_broker, subject_matches
from scout_runtime.bus.nats import NatsBus
from scout_runtime.settings import Settings

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MSG_ID_HEADER",
    "Bus",
    "EnqueueResult",
    "Handler",
    "InProcessBroker",
    "InProcessBus",
    "Msg",
    "NatsBus",
    "QueueStats",
    "Subscription",
    "WorkHandler",
    "WorkItem",
    "WorkQueueSpec",
    "check_payload",
    "connect_bus",
    "message_size",
    "named_broker",
    "normalize_headers",
    "subject_matches",
]


async def connect_bus(settings: Settings | None = None, *, name: str = "scout") -> Bus:
    """The bus the settings name: ``inproc://<broker>`` -> `InProcessBus`, anything else -> `NatsBus`."""
    settings = settings or Settings()
    url = settings.nats_url.get_secret_value()
    if url.startswith("inproc://"):
        return InProcessBus(named_broker(url[len("inproc://") :] or "default"), name=name)
    return await NatsBus.connect(settings, name=name)
