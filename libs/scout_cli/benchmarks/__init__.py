"""Benchmarks behind `scout bench …`: measured speed and memory, written to JSON and Markdown (never asserted
as timings in tests; these machines are noisy, so quote medians and side-by-side ratios from one run)."""
