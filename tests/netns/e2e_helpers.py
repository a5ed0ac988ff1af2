"""The end-to-end KV-mode test's stack across a shaped veth, and its client.

Topology (`Stack`): the *cloud* namespace runs nats-server (JetStream), the cloud store (redis-server), the cloud
decoder and the transport policy; the *edge* namespace runs its own edge store (redis-server on its loopback), the
selector and the quantizer, which reach NATS and the cloud store at the cloud's veth address. So the one bulk flow
that crosses the veth is the quantizer's upload of the uplink blob to the cloud store, and it leaves through the
edge veth that the shaper shapes. Every process is started through the link's `Processes` (stopped, and checked
gone, by the `link` fixture whatever happens).

Run as a script (``python e2e_helpers.py ask …``) inside the cloud namespace, this module is the client: it waits
until the policy plans with the shaper's rate, asks once in a KV mode, and prints ``{"plan": …, "reply": …}`` as
one JSON line (the test process itself lives in the root namespace, which reaches neither namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

CLIENT = str(Path(__file__).resolve())
NATS_PORT = 4222
REDIS_PORT = 6379

DOCUMENT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. This basin encompasses seven million "
    "square kilometres, of which five and a half million square kilometres are covered by the rainforest. The "
    "region includes territory belonging to nine nations. The majority of the forest is contained within Brazil, "
    "with sixty percent of the rainforest, followed by Peru with thirteen percent, Colombia with ten percent, and "
    "with minor amounts in Venezuela, Ecuador, Bolivia, Guyana, Suriname and French Guiana. The rainforest likely "
    "formed during the Eocene era, following the extinction event that wiped out the dinosaurs. It has been in "
    "existence for at least fifty-five million years, and most of the region remained free of savanna-type biomes "
    "at least until the current ice age, when the climate was drier and savanna more widespread."
)
QUESTION = "Which country contains the majority of the Amazon rainforest?"


# ----------------------------------------------------------------------------------------------------------------
# the stack (used by the test, in the root namespace)
# ----------------------------------------------------------------------------------------------------------------
class Stack:
    """Servers and roles of one test on a `scout_testbed.netlab.Link` (see the module docstring)."""

    def __init__(self, link: Any, workdir: Path, namespace: str) -> None:
        from scout_testbed.netlab import CLOUD_IP

        self.link = link
        self.workdir = workdir
        self.namespace = namespace
        self.cloud_nats = f"nats://127.0.0.1:{NATS_PORT}"
        self.edge_nats = f"nats://{CLOUD_IP}:{NATS_PORT}"
        self.cloud_store = f"redis://{CLOUD_IP}:{REDIS_PORT}/0"
        self.edge_store = f"redis://127.0.0.1:{REDIS_PORT}/0"

    # --- servers -------------------------------------------------------------------------------------------------
    def _server(self, ns: str, argv: list[str], ready: str, timeout_s: float = 30.0) -> Any:
        proc = self.link.procs.start(self.link.in_ns(ns, argv))
        deadline = time.monotonic() + timeout_s
        while not any(ready in line for line in proc.stdout + proc.stderr):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} in {ns} did not start (rc={proc.popen.poll()}): {proc.tail()}")
            time.sleep(0.05)
        return proc

    def start_servers(self) -> None:
        """nats-server (JetStream) and the cloud store in the cloud namespace; the edge store in the edge's."""
        for tool in ("nats-server", "redis-server"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is not on PATH")
        js = self.workdir / "js"
        nats = ["nats-server", "-a", "0.0.0.0", "-p", str(NATS_PORT), "-js", "-sd", str(js)]
        self._server(self.link.cloud, nats, "Server is ready")
        for ns, bind, name in ((self.link.cloud, "0.0.0.0", "cloud"), (self.link.edge, "127.0.0.1", "edge")):
            (self.workdir / name).mkdir()
            redis = [
                "redis-server", "--port", str(REDIS_PORT), "--bind", bind, "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir / name),
            ]  # fmt: skip
            self._server(ns, redis, "Ready to accept connections")

    # --- roles ---------------------------------------------------------------------------------------------------
    def env(self, name: str, *, edge: bool) -> dict[str, str]:
        from scout_testbed.launcher import role_env

        return role_env(
            name=name,
            namespace=self.namespace,
            nats_url=self.edge_nats if edge else self.cloud_nats,
            store_url=self.cloud_store,
            extra={
                "SCOUT_EDGE_STORE_URL": self.edge_store if edge else self.cloud_store,
                "SCOUT_REQUEST_TIMEOUT_S": "120",
                "SCOUT_STORE_TTL_S": "600",
                "SCOUT_SELECTOR_DTYPE": "fp32",
                "SCOUT_DECODER_DTYPE": "fp32",
                "SCOUT_POLICY_ESTIMATOR": "last",
                "OTEL_SDK_DISABLED": "true",
            },
        )

    def start_roles(self, timeout_s: float = 240.0) -> None:
        """Policy and decoder in the cloud namespace, selector and quantizer in the edge's; waits for all."""
        roles = [
            (self.link.cloud, "transport_policy", False),
            (self.link.cloud, "cloud_decoder", False),
            (self.link.edge, "quantizer", True),
            (self.link.edge, "selector", True),
        ]
        procs = []
        for ns, role, edge in roles:
            argv = self.link.in_ns(ns, [sys.executable, "-m", "scout_cli.main", "serve", role])
            procs.append(self.link.procs.start(argv, env=self.env(role, edge=edge)))
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            proc.next_json(max(1.0, deadline - time.monotonic()), event="ready")

    def ask(self, *, device: str, rate_bps: float, mode: str, timeout_s: float = 180.0) -> dict[str, Any]:
        """The client, run in the cloud namespace: the plan made at the shaper's rate and the KV-mode reply."""
        args = ["ask", "--nats", self.cloud_nats, "--namespace", self.namespace, "--device", device]
        args += ["--rate-bps", repr(rate_bps), "--mode", mode]
        env = {**self.env("client", edge=False), "OMP_NUM_THREADS": "1"}
        proc = self.link.procs.start(self.link.in_ns(self.link.cloud, [sys.executable, CLIENT, *args]), env=env)
        result = proc.next_json(timeout_s)
        assert proc.wait(30) == 0, proc.tail()
        return result


# ----------------------------------------------------------------------------------------------------------------
# the client (run as a script in the cloud namespace)
# ----------------------------------------------------------------------------------------------------------------
async def _client(args: argparse.Namespace) -> dict[str, Any]:
    from pydantic import SecretStr

    from scout_runtime.bus import NatsBus
    from scout_runtime.messages import AskRequest, Plan, PlanRequest
    from scout_runtime.rpc import call
    from scout_runtime.settings import Settings
    from scout_services.client import ask

    settings = Settings(nats_url=SecretStr(args.nats), namespace=args.namespace, request_timeout_s=120)
    bus = await NatsBus.connect(settings, name="netns-e2e-client", poll_s=0.2)
    try:
        # The shaper announces its rate every publish interval; wait until the policy plans with it.
        deadline = time.monotonic() + 30
        while True:
            req = PlanRequest(
                request_id=uuid.uuid4().hex, device_id=args.device, context_tokens=200, deadline_ms=60_000
            )
            plan = await call(bus, settings.subjects().plan, req, Plan, timeout_s=10)
            if plan.bandwidth_bps == args.rate_bps or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    request = AskRequest(
        request_id=uuid.uuid4().hex,
        device_id=args.device,
        document=DOCUMENT,
        question=QUESTION,
        deadline_ms=120_000,
        max_new_tokens=2,
        mode=args.mode,
    )
    reply = await ask(request, settings=settings, timeout_s=150)
    return {"plan": json.loads(plan.to_bytes()), "reply": json.loads(reply.to_bytes())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ask")
    p.add_argument("--nats", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--rate-bps", type=float, required=True)
    p.add_argument("--mode", default="full")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_client(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
