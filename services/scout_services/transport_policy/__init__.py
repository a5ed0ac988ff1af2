"""Transport policy role: per-device link state and the per-request plan (DESIGN.md, step 3)."""
