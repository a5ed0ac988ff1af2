"""The test and benchmark harness: soak, faults, hostile inputs, a deployment launcher and the pipeline bench.

Installed on its own (`pip install -e libs/testbed`), used by the tests, `scout bench reliability` and
`scout bench pipeline`; never part of the image."""
