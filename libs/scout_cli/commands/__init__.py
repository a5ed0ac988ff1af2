"""Sub-commands of `scout`, one module per area, each with `register(app, bench)` adding its commands.

Modules here import only typer/rich at import time; heavy imports happen inside the command functions so that
`scout --help` stays instant.
"""
