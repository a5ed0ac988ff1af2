"""Fixtures of the reliability tests: one deployment for the whole session, authentication on (our own nats-server
with user/password and redis-server with ``requirepass`` plus an ACL service user, on free loopback ports), every
role its own process holding its credentials only as ``SCOUT_*`` settings (`scout_testbed.testbed`).

Starting five processes that each load SmolLM2 is the expensive part, so every test shares the deployment; the
tests leave it serving (a fault scenario restores what it broke, except the ``kill -9`` test, which needs no
second decoder afterwards and restarts the victim only when a later test asks for both).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scout_testbed.soak import SoakDocument, load_documents
from scout_testbed.testbed import Deployment, deployment


@pytest.fixture(scope="session")
def dep() -> Iterator[Deployment]:
    """Policy, quantizer, two decoders and a selector against our own authenticated NATS and Redis."""
    # No warm-up passes (the tests time nothing, and on a shared 2-core machine the start is most of their wall
    # time), and a 3 s ack wait (heartbeats every second keep a live decode its own): redelivery comes back sooner.
    env = {"SCOUT_SELECTOR_WARMUP": "false", "SCOUT_DECODER_WARMUP": "false", "SCOUT_ACK_WAIT_S": "3"}
    with deployment(model="smollm2-135m", dtype="fp32", decoders=2, extra_env=env) as d:
        yield d


@pytest.fixture(scope="session")
def docs() -> list[SoakDocument]:
    """Short, real SQuAD v2 prompts."""
    return load_documents(8, seed=7, max_context_chars=600)
