"""What Scout's services share (DESIGN.md): message schemas, subject names, the bus, the blob store, telemetry,
settings, limits and typed errors.

Modules, import what you need (nothing is imported here, so ``import scout_runtime`` stays cheap):

    errors     ErrorCode and the ScoutError hierarchy (one class per reply code)
    subjects   every subject / stream / consumer name (``scout.v1.…``) and device-id validation
    messages   pydantic models for every subject, `parse` / `parse_reply` (typed errors only)
    limits     Limits (input size caps) and InflightLimiter (per-device in-flight cap)
    settings   Settings from ``SCOUT_*`` environment variables (secrets as SecretStr)
    bus        Bus: NatsBus (core NATS + JetStream work queue) and InProcessBus (embedded)
    store      BlobStore: RedisStore / MemoryStore by URL, verified blobs and documents, Redis ACL helper
    telemetry  OpenTelemetry per role, W3C trace context in bus headers
    metrics    Prometheus metrics and the /healthz /readyz /metrics app
    rpc        serve / call: request/reply with typed errors, tracing, metrics and limits
"""
