"""Benchmark helpers shared by the scripts in `jobs/bench/`: peak memory of a process tree, timed
commands, random model directories of any catalog size, and the dataset-resolution probe."""
