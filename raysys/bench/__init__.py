"""Benchmark helpers shared by the `jobs/bench_*.py` scripts (peak memory of a process tree)."""
