"""codec (see DESIGN.md)."""
