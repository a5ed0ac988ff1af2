"""Shaper sidecar (edge): shapes the pod's uplink with tc from a rate or a measured trace, adds one-way delay with
a relay, and reports the configured rate on ``scout.v1.link.<device>`` and as a Prometheus gauge (DESIGN.md)."""
