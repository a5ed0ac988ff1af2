"""Transport policy entry points: link state in, plans out. The decision itself is `scout.pipeline.plan_request`.

Link state per device: every `LinkState` feeds the device's bandwidth estimator, with one rule: a ``shaper``
sample is the link's *configured* rate, so it starts a new estimator seeded with it (goodput measured on the old
rate says nothing about the new one); ``goodput`` samples (the quantizer's measured uploads) then refine it.
Samples are stamped with this process's monotonic clock on arrival: senders' clocks are not trusted for ordering.
"""

from __future__ import annotations

from scout.pipeline import PolicyConfig, bit_plan_name, plan_request
from scout.policy.estimators import LinkBook
from scout_runtime.errors import BadRequest
from scout_runtime.messages import LinkState, Plan, PlanRequest
from scout_services.transport_policy.args import PolicyArgs


def load_policy(args: PolicyArgs) -> PolicyConfig:
    """The `PolicyConfig` the settings describe: codec sizes for the edge model, the mixed plan, and the table."""
    from scout.models import load_spec

    spec = load_spec(args.edge_model)
    mixed = args.mixed_plan
    if mixed.endswith(".json"):  # a calibrated plan file: its layer map, refused if made for another model
        from scout.codec.mixed import PlanFileCodec

        plan_file = PlanFileCodec(mixed)
        plan_file.check_model(spec.fingerprint)
        mixed = bit_plan_name(plan_file.bit_plan)
    table = stages = None
    if args.table is not None:
        from scout.policy.operating_points import OperatingPointTable

        table = OperatingPointTable.load(args.table)
    if args.stages is not None:
        from scout.policy.planner import StageTimes

        stages = StageTimes.load(args.stages)
    return PolicyConfig.for_model(
        spec,
        mixed_plan=mixed,
        table=table,
        stages=stages,
        scout_retention=args.scout_retention,
        transfer_fraction=args.transfer_fraction,
    )


class PolicyHandlers:
    """What the policy's subscriptions call."""

    def __init__(self, policy: PolicyConfig, links: LinkBook) -> None:
        self.policy = policy
        self.links = links

    def on_link(self, state: LinkState) -> None:
        self.links.update(state.device_id, state.rate_bps, state.source)

    def plan(self, req: PlanRequest) -> Plan:
        rate = self.links.bandwidth_bps(req.device_id)
        try:
            p = plan_request(
                self.policy,
                context_tokens=req.context_tokens,
                extra_tokens=req.extra_tokens,
                deadline_s=req.deadline_ms / 1000.0,
                elapsed_s=req.elapsed_ms / 1000.0,
                bandwidth_bps=rate,
                mode=req.mode,
                retention=req.retention,
                model_pair=req.model_pair,
                request_id=req.request_id,
            )
        except (KeyError, ValueError) as e:  # e.g. a model pair the table does not hold
            raise BadRequest(f"cannot plan this request: {e}", request_id=req.request_id) from None
        return Plan.from_planner(p, request_id=req.request_id)
