"""policy (see DESIGN.md)."""
