"""What Scout's services share: message schemas, subjects, bus, store, telemetry, settings (services issue)."""
