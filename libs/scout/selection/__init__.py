"""selection (see DESIGN.md)."""
