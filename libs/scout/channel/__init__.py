"""channel (see DESIGN.md)."""
