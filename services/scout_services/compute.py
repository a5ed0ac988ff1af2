"""The one way a role runs a `scout` computation: in a worker thread, one at a time, errors typed, stages traced.

Why one wrapper: the selector (prefill, local answer), the quantizer (encode) and the cloud decoder (decode and
generate) all call CPU/GPU-bound functions of ``libs/scout`` from an asyncio service. Each must

* run off the event loop (`asyncio.to_thread`), so heartbeats, health checks, metrics and other requests' I/O go on;
* run one at a time per role instance (one model, one accelerator: two prefills at once only thrash);
* turn the library's input errors (ValueError, IndexError, KeyError) into the typed `ScoutError` the caller
  answers with (`library_error`), and let anything else through as the bug it is;
* record a span per stage the library timed (``result.timings``: ``tokenize``/``prefill``/``score`` or
  ``decode``/``generate``), laid end to end from when the computation started: the worker thread cannot hold the
  request's span context, so the spans are made afterwards from the times it measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from scout_services.common import Role, library_error

__all__ = ["Compute", "ModelArgs", "load_role_model"]

T = TypeVar("T")


class Compute:
    """A role's compute slot (see the module docstring).

    ``spans=False`` for a role that wraps the call in a span of its own (the quantizer's ``encode``) and whose
    result carries no per-stage timings.
    """

    def __init__(self, role: Role, *, spans: bool = True) -> None:
        self.role = role
        self.spans = spans
        self.lock = asyncio.Lock()

    async def run(self, request_id: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread once the slot is free; its input errors as typed errors."""
        async with self.lock:
            start_ns = time.time_ns()
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except KeyError as e:  # a name the request gave that the library does not know (a selector, a codec)
                raise library_error(ValueError(str(e)), request_id) from None
            except (ValueError, IndexError) as e:
                raise library_error(e, request_id) from None
        if self.spans:
            self.record(request_id, start_ns, getattr(result, "timings", {}))
        return result

    def record(self, request_id: str, start_ns: int, stages: Mapping[str, float]) -> None:
        """One span per stage, contiguous from ``start_ns`` (wall clock, ns), each as long as it was timed."""
        tracer, t = self.role.telemetry.tracer, start_ns
        attributes = {"scout.role": self.role.name, "scout.request_id": request_id}
        for name, seconds in stages.items():
            span = tracer.start_span(name, start_time=t, attributes=attributes)
            t += int(seconds * 1e9)
            span.end(end_time=t)


class ModelArgs(Protocol):
    """The settings of a role that holds a model (`SelectorArgs`, `DecoderArgs`)."""

    model: str
    dtype: str
    device: str | None
    warmup: bool


def load_role_model(args: ModelArgs) -> Any:
    """The role's model, warmed up unless ``args.warmup`` is off (so the first request's timings are not the
    kernels' initialisation). Blocking: a role calls it in a worker thread while its health endpoint answers."""
    from scout.inference import warmup
    from scout.models import load_model

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.warmup:
        warmup(lm)
    return lm
