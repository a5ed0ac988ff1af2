"""`scout shape`: shape an interface's egress with tc from a fixed rate or a measured uplink trace.

The command runs the shaper sidecar (`scout_services.shaper`) in the foreground, the way the pod runs it, so what a
person tries on a laptop is what the cluster does. The service is imported inside the command, so `scout --help`
does not load it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from scout_cli.console import fail


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("shape")
    def shape(
        iface: Annotated[str, typer.Option("--iface", help="interface whose egress is shaped")],
        rate: Annotated[str | None, typer.Option("--rate", help="fixed rate in tc units, e.g. 50mbit")] = None,
        trace: Annotated[
            str | None, typer.Option("--trace", help="trace to replay: name in the shared traces, CSV file or URL")
        ] = None,
        speed: Annotated[str, typer.Option("--speed", help="replay speed-up, e.g. 10 or 10x")] = "1",
        offset_s: Annotated[float, typer.Option("--offset", help="start this many trace seconds in")] = 0.0,
        loop: Annotated[bool, typer.Option("--loop/--no-loop", help="repeat the trace, or hold its last rate")] = True,
        interval_s: Annotated[
            float | None, typer.Option("--interval", help="seconds between tc updates (default: one trace step)")
        ] = None,
        dst: Annotated[
            list[str] | None,
            typer.Option("--dst", help="shape only traffic to an IP, IP/prefix or host, optionally :port (repeatable)"),
        ] = None,
        delay_ms: Annotated[
            float, typer.Option("--delay-ms", help="one-way uplink delay added by the relay (needs --relay-target)")
        ] = 0.0,
        relay_listen: Annotated[str, typer.Option("--relay-listen", help="relay address (port 0: any)")] = (
            "127.0.0.1:0"
        ),
        relay_target: Annotated[
            str | None, typer.Option("--relay-target", help="host:port the relay forwards to (the cloud store)")
        ] = None,
        device_id: Annotated[str, typer.Option("--device-id", help="device whose link state is published")] = "edge",
        nats: Annotated[
            str | None, typer.Option("--nats", help="publish the rate as LinkState on this NATS (e.g. nats://…:4222)")
        ] = None,
        netns: Annotated[
            str | None, typer.Option("--netns", help="the interface lives in this named network namespace")
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="/healthz, /readyz, /metrics (0: any; default 9090)")
        ] = None,
        queue_ms: Annotated[float, typer.Option("--queue-ms", help="tbf queue, in ms at the configured rate")] = 50.0,
        hz: Annotated[int | None, typer.Option("--hz", help="kernel HZ for the bucket (default: detected)")] = None,
        min_rate: Annotated[str, typer.Option("--min-rate", help="rate configured for a trace's zeros")] = "10kbit",
        publish_interval_s: Annotated[
            float, typer.Option("--publish-interval", help="re-announce the rate every N s (0: on changes only)")
        ] = 10.0,
    ) -> None:
        """Shape IFACE's egress with tbf at --rate, or replay --trace (time-compressed by --speed); optionally only
        towards --dst, with a one-way delay relay; report the rate (JSON lines on stdout, /metrics, and LinkState
        with --nats). Runs until SIGTERM/Ctrl-C, then removes its qdiscs. Needs NET_ADMIN."""
        from pydantic import SecretStr, ValidationError

        from scout_runtime.settings import Settings
        from scout_services.shaper.args import ShaperArgs
        from scout_services.shaper.main import describe_validation, run

        try:
            args = ShaperArgs(
                iface=iface,
                netns=netns,
                rate=rate,
                trace=trace,
                speed=speed,
                offset_s=offset_s,
                loop=loop,
                interval_s=interval_s,
                min_rate=min_rate,
                dst=",".join(dst or []),
                delay_ms=delay_ms,
                relay_listen=relay_listen,
                relay_target=relay_target,
                device_id=device_id,
                publish=nats is not None,
                publish_interval_s=publish_interval_s,
                hz=hz,
                queue_ms=queue_ms,
            )
            settings = Settings(nats_url=SecretStr(nats)) if nats is not None else Settings()
        except ValidationError as e:
            fail(describe_validation(e))
        code = run(args, settings, metrics_port=metrics_port)
        if code:
            raise typer.Exit(code)
