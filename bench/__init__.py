"""The benchmarks a user reruns, each one `python -m bench.NAME` printing one table of BENCHMARKS.md.

The index (what each measures, its command, how long it takes) is bench/README.md. Not tests: no speed is asserted.
"""
