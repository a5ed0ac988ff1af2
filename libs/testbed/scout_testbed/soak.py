"""``scout bench soak``: a bounded load generator against a running deployment, counting what nothing else can:
requests **lost** (never answered at all) and **duplicated** (answered more than once).

Every request ends in exactly one of three outcomes: *answered* (an `AskReply`), *error* (a typed `ErrorReply`,
counted by code), or *lost* (no reply of any kind before the client's timeout, which is longer than the services'
own request timeout, so a request the services gave up on is an ``error: timeout``, not a loss).

Duplicates are looked for at both ends of the pipeline:

* the client side: each NATS client receives its replies on an inbox of its own (``<inbox>.<request_id>``) instead
  of through a request/reply helper that would keep the first reply and silently drop any later one, so every
  reply message per request id is counted;
* the result subjects: an extra subscriber (`ResultTap`) on ``<root>.result.>`` counts every `DecodeResult` and
  `ErrorReply` a decoder publishes, per request id (a redelivered decode answered twice shows here even when the
  selector drops the second one).

After the last request the run waits ``grace_s`` (longer than the work queue's ack wait) so a late duplicate is
still seen. The load is bounded: a fixed number of clients, each sending a fixed number of requests one after
another (closed loop), over loopback only; every ``http_every``-th request of a client goes to the selector's
HTTP endpoint instead of NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout_runtime.bus import Msg, NatsBus
from scout_runtime.errors import ScoutError
from scout_runtime.messages import AskReply, AskRequest, DecodeResult, ErrorReply, parse, parse_reply
from scout_runtime.settings import Settings

__all__ = [
    "DEFAULT_MIX",
    "AskClient",
    "Harness",
    "Outcome",
    "RequestRecord",
    "ResultTap",
    "SoakConfig",
    "SoakDocument",
    "SoakResult",
    "load_documents",
    "make_request",
    "parse_point",
    "run_soak",
    "summarize",
]

Outcome = Literal["answered", "error", "lost"]
Transport = Literal["nats", "http"]

DEFAULT_MIX: tuple[str, ...] = ("text", "scout@0.5", "int8", "int4@0.5", "full", "mixed", "local", "auto")
"""The request mix: forced operating points (``mode`` or ``mode@retention``) and ``auto`` (the policy decides)."""


def parse_point(point: str) -> tuple[str | None, float | None]:
    """``"int4@0.5"`` -> (``"int4"``, 0.5); ``"auto"`` -> (None, None): the mode and retention an ask forces."""
    if point == "auto":
        return None, None
    mode, _, retention = point.partition("@")
    return mode, float(retention) if retention else None


class SoakDocument(BaseModel):
    """One real prompt (a SQuAD v2 question and its context)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    context: str


def load_documents(n: int, *, seed: int = 7, max_context_chars: int = 600) -> list[SoakDocument]:
    """``n`` answerable SQuAD v2 prompts with short contexts (the data directory's set, else the packaged sample)."""
    from scout.datasets import load_examples

    examples = load_examples("squad_v2", n=n, seed=seed, answerable_only=True, max_context_chars=max_context_chars)
    if not examples:
        raise ValueError(
            f"no answerable SQuAD v2 example has a context of at most {max_context_chars} characters here; "
            "import the full set with `scout data import PATH` (or set SCOUT_DATA)"
        )
    return [SoakDocument(id=ex.id, question=ex.question, context=ex.context) for ex in examples]


class RequestRecord(BaseModel):
    """What happened to one request, as the client and the result tap saw it."""

    request_id: str
    client: int
    point: str
    transport: Transport
    document: str
    outcome: Outcome = "lost"
    code: str | None = None
    """The `ErrorCode` of an error outcome (``no_responders`` when NATS itself answered that nobody serves)."""
    latency_s: float | None = None
    mode: str | None = None
    answered_by: str | None = None
    deliveries: int | None = None
    client_replies: int = 0
    """Reply messages this request's client received (1 for NATS if all is well; HTTP: 1 or 0 by construction)."""
    tap_results: int = 0
    """Decoder results for this request id seen on the result subjects (1 for a cloud answer, 0 for local)."""
    results_from: list[str] = Field(default_factory=list)
    """Who published those results (`ResultTap.seen`): what tells a redelivery's second answer from a resend."""
    late: str | None = None
    """A lost request whose reply came after the client's timeout: ``answer`` or the error code it carried."""
    started_at: float = 0.0

    @property
    def duplicated(self) -> bool:
        return self.client_replies > 1 or self.tap_results > 1


class ResultTap:
    """Counts every decoder result (`DecodeResult` or `ErrorReply`) on ``<root>.result.>`` per request id."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seen: dict[str, list[str]] = {}
        """Per request id, who published each result: ``<decoder id>#<delivery>`` or ``error:<code>``."""
        self.unreadable = 0
        self._bus: NatsBus | None = None

    async def start(self, settings: Settings) -> ResultTap:
        self._bus = await NatsBus.connect(settings, name="soak-result-tap", poll_s=0.2)
        await self._bus.subscribe(f"{settings.subjects().result_prefix}.>", self._on_msg, concurrency=16)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        try:
            result = parse_reply(DecodeResult, msg.data)
            rid, who = result.request_id, f"{result.decoder_id}#{result.deliveries}"
        except ScoutError as e:
            if not e.request_id:
                self.unreadable += 1
                return
            rid, who = e.request_id, f"error:{e.code.value}"
        self.counts[rid] += 1
        self.seen.setdefault(rid, []).append(who)

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()


class AskClient:
    """One client: a NATS connection with its own reply inbox (every reply counted) and an HTTP session."""

    def __init__(self, settings: Settings, http_url: str | None, index: int) -> None:
        self.settings = settings
        self.http_url = http_url
        self.index = index
        self.replies: Counter[str] = Counter()
        self.late: dict[str, bytes] = {}
        """Replies that arrived when nobody waited for them any more (after the timeout), by request id."""
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._bus: NatsBus | None = None
        self._inbox = ""
        self._session: Any = None

    async def open(self) -> AskClient:
        self._bus = await NatsBus.connect(self.settings, name=f"soak-client-{self.index}", poll_s=0.2)
        nc = self._bus.nc
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        await nc.flush(timeout=5)
        if self.http_url:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self

    async def _on_reply(self, m: Any) -> None:
        rid = m.subject.rsplit(".", 1)[-1]
        self.replies[rid] += 1
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(m)
        else:
            self.late.setdefault(rid, bytes(m.data))

    async def ask(
        self, req: AskRequest, *, point: str, transport: Transport, document: str, timeout_s: float, subject: str
    ) -> RequestRecord:
        """Send one ask and wait for its reply (or ``timeout_s``); the record of what happened."""
        rec = RequestRecord(
            request_id=req.request_id,
            client=self.index,
            point=point,
            transport=transport,
            document=document,
            started_at=time.time(),
        )
        t0 = time.perf_counter()
        try:
            if transport == "http":
                body = await self._http(req, timeout_s)
            else:
                body = await self._nats(req, timeout_s, subject)
        except TimeoutError:
            return rec  # lost: nothing came back
        except _NoResponders:
            rec.outcome, rec.code, rec.latency_s = "error", "no_responders", time.perf_counter() - t0
            return rec
        except _Broken as e:
            rec.code = str(e)  # lost, with why (the connection broke without a reply)
            return rec
        rec.latency_s = time.perf_counter() - t0
        try:
            reply = parse_reply(AskReply, body)
        except ScoutError as e:
            # A typed failure is an ErrorReply the service sent; anything else unreadable is not one.
            rec.outcome, rec.code = "error", e.code.value if _is_error_reply(body) else "untyped_reply"
            return rec
        rec.outcome, rec.mode, rec.answered_by, rec.deliveries = (
            "answered",
            reply.mode,
            reply.answered_by,
            reply.deliveries,
        )
        return rec

    async def _nats(self, req: AskRequest, timeout_s: float, subject: str) -> bytes:
        assert self._bus is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[req.request_id] = fut
        try:
            try:
                await self._bus.nc.publish(subject, req.to_bytes(), reply=f"{self._inbox}.{req.request_id}")
            except Exception as e:  # closed, or the reconnect buffer is full: nothing was sent
                raise _Broken(f"nats: {type(e).__name__}") from None
            m = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._waiting.pop(req.request_id, None)
        if not m.data and (m.headers or {}).get("Status") == "503":
            raise _NoResponders()
        return bytes(m.data)

    async def _http(self, req: AskRequest, timeout_s: float) -> bytes:
        import aiohttp

        assert self._session is not None and self.http_url is not None
        try:
            async with self._session.post(
                self.http_url.rstrip("/") + "/v1/ask",
                data=req.to_bytes(),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                body = await resp.read()
        except aiohttp.ClientError as e:
            raise _Broken(f"http: {type(e).__name__}") from None
        self.replies[req.request_id] += 1
        return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._bus is not None:
            await self._bus.close()


def _is_error_reply(body: bytes) -> bool:
    try:
        parse(ErrorReply, body)
    except ScoutError:
        return False
    return True


class _NoResponders(Exception):
    pass


class _Broken(Exception):
    pass


class SoakConfig(BaseModel):
    """One load level."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(ge=1, le=256)
    requests_per_client: int = Field(ge=1, le=10_000)
    mix: tuple[str, ...] = DEFAULT_MIX
    max_new_tokens: int = Field(default=6, ge=1, le=64)
    deadline_ms: int = Field(default=60_000, ge=1)
    http_every: int = Field(default=4, ge=0)
    """Every n-th request of a client goes over HTTP (0: never)."""
    timeout_s: float = Field(default=300.0, gt=0)
    """The client's patience: far longer than the services' own timeouts (a decode result: the larger of the
    deadline and ``SCOUT_REQUEST_TIMEOUT_S``), so a request they give up on ends in a typed ``timeout``."""
    grace_s: float = Field(default=8.0, ge=0)
    """Wait after the last request before counting duplicates (longer than the ack wait: a redelivery's reply)."""
    seed: int = 0


class SoakResult(BaseModel):
    """Counts and latencies of one load level (latencies over answered requests, seconds)."""

    concurrency: int
    requests_per_client: int
    sent: int
    answered: int
    errors: int
    errors_by_code: dict[str, int]
    lost: int
    duplicated: int
    duplicated_ids: list[str]
    p50_s: float | None
    p99_s: float | None
    max_s: float | None
    wall_s: float
    throughput_rps: float
    by_mode: dict[str, int]
    by_point: dict[str, int]
    by_transport: dict[str, int]
    tap_unreadable: int = 0
    records: list[RequestRecord] = Field(default_factory=list)


def summarize(
    records: Sequence[RequestRecord], *, concurrency: int, requests_per_client: int, wall_s: float, tap_unreadable: int
) -> SoakResult:
    """Outcome counts, duplicates and latency percentiles of a set of finished records."""
    latencies = [r.latency_s for r in records if r.outcome == "answered" and r.latency_s is not None]

    def pct(q: float) -> float | None:
        return float(np.percentile(np.asarray(latencies), q)) if latencies else None

    dup = [r.request_id for r in records if r.duplicated]
    return SoakResult(
        concurrency=concurrency,
        requests_per_client=requests_per_client,
        sent=len(records),
        answered=sum(r.outcome == "answered" for r in records),
        errors=sum(r.outcome == "error" for r in records),
        errors_by_code=dict(Counter(r.code or "?" for r in records if r.outcome == "error")),
        lost=sum(r.outcome == "lost" for r in records),
        duplicated=len(dup),
        duplicated_ids=dup,
        p50_s=pct(50),
        p99_s=pct(99),
        max_s=max(latencies) if latencies else None,
        wall_s=wall_s,
        throughput_rps=sum(r.outcome == "answered" for r in records) / wall_s if wall_s > 0 else 0.0,
        by_mode=dict(Counter(r.mode for r in records if r.mode)),
        by_point=dict(Counter(r.point for r in records)),
        by_transport=dict(Counter(r.transport for r in records)),
        tap_unreadable=tap_unreadable,
        records=list(records),
    )


def make_request(doc: SoakDocument, point: str, *, device_id: str, max_new_tokens: int, deadline_ms: int) -> AskRequest:
    mode, retention = parse_point(point)
    return AskRequest(
        request_id=uuid.uuid4().hex,
        device_id=device_id,
        document=doc.context,
        question=doc.question,
        deadline_ms=deadline_ms,
        max_new_tokens=max_new_tokens,
        mode=mode,  # type: ignore[arg-type]
        retention=retention,
    )


class Harness:
    """A result tap and a set of clients: what the soak and the fault scenarios send their asks through."""

    def __init__(self, settings: Settings, http_url: str | None) -> None:
        self.settings = settings
        self.http_url = http_url
        self.tap = ResultTap()
        self.clients: list[AskClient] = []
        self.records: list[RequestRecord] = []
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Harness:
        await self.tap.start(self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def client(self, index: int) -> AskClient:
        """Client ``index``, opened (with every lower one) on first use; safe to call from concurrent tasks."""
        async with self._opening:
            while len(self.clients) <= index:
                self.clients.append(await AskClient(self.settings, self.http_url, len(self.clients)).open())
        return self.clients[index]

    async def ask(
        self,
        client: int,
        doc: SoakDocument,
        point: str,
        *,
        transport: Transport = "nats",
        device_id: str | None = None,
        max_new_tokens: int = 6,
        deadline_ms: int = 60_000,
        timeout_s: float = 150.0,
        request: AskRequest | None = None,
    ) -> RequestRecord:
        """One ask through client ``client`` (opened on first use), recorded."""
        c = await self.client(client)
        req = request or make_request(
            doc,
            point,
            device_id=device_id or f"soak-c{client}",
            max_new_tokens=max_new_tokens,
            deadline_ms=deadline_ms,
        )
        rec = await c.ask(
            req,
            point=point,
            transport=transport if self.http_url else "nats",
            document=doc.id,
            timeout_s=timeout_s,
            subject=self.settings.subjects().ask,
        )
        self.records.append(rec)
        return rec

    def finalize(self, records: Sequence[RequestRecord] | None = None) -> list[RequestRecord]:
        """Fill each record's reply counts from the clients and the tap (call after the grace period)."""
        out = list(self.records if records is None else records)
        for rec in out:
            client = self.clients[rec.client] if rec.client < len(self.clients) else None
            if rec.outcome == "lost" and client is not None and rec.request_id in client.late:
                try:
                    parse_reply(AskReply, client.late[rec.request_id])
                    rec.late = "answer"
                except ScoutError as e:
                    rec.late = e.code.value
            rec.client_replies = (
                self.clients[rec.client].replies[rec.request_id] if rec.client < len(self.clients) else 0
            )
            rec.tap_results = self.tap.counts[rec.request_id]
            rec.results_from = list(self.tap.seen.get(rec.request_id, []))
        return out

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()
        await self.tap.close()


async def run_soak(
    settings: Settings, http_url: str | None, docs: Sequence[SoakDocument], cfg: SoakConfig
) -> SoakResult:
    """``cfg.concurrency`` clients, each sending ``cfg.requests_per_client`` asks in turn (points from the mix,
    documents from ``docs``, both in a seeded order), then the grace period, then the counts."""
    rng = random.Random(cfg.seed)
    plan = [
        [(rng.choice(list(docs)), cfg.mix[(c + i) % len(cfg.mix)]) for i in range(cfg.requests_per_client)]
        for c in range(cfg.concurrency)
    ]
    async with Harness(settings, http_url) as h:
        for c in range(cfg.concurrency):
            await h.client(c)

        async def client_loop(c: int) -> None:
            for i, (doc, point) in enumerate(plan[c]):
                transport: Transport = (
                    "http" if cfg.http_every and (i + c) % cfg.http_every == cfg.http_every - 1 else "nats"
                )
                await h.ask(
                    c,
                    doc,
                    point,
                    transport=transport,
                    max_new_tokens=cfg.max_new_tokens,
                    deadline_ms=cfg.deadline_ms,
                    timeout_s=cfg.timeout_s,
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in range(cfg.concurrency)))
        wall = time.perf_counter() - t0
        await asyncio.sleep(cfg.grace_s)
        records = h.finalize()
        return summarize(
            records,
            concurrency=cfg.concurrency,
            requests_per_client=cfg.requests_per_client,
            wall_s=wall,
            tap_unreadable=h.tap.unreadable,
        )
