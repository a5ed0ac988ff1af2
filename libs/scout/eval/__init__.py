"""eval (see DESIGN.md)."""
