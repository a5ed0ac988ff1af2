"""The `scout` console: demo, ask, serve, shape, eval, simulate, bench, data and models.

The top floor of the house: it wires the library (`scout`), the evaluation harness (`scout_eval`), the services
(`scout_services`) and, where installed, the test harness (`scout_testbed`) into one command."""
