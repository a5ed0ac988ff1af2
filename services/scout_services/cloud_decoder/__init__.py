"""Cloud decoder role: the JetStream decode consumer (DESIGN.md, step 5)."""
