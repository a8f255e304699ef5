"""Benchmark harness for issue 5 (see bench/README.md)."""
