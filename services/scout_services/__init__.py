"""Scout services (one package per role)."""
