"""Benchmarks for issue #6 (not CI tests): each script regenerates one table of BENCHMARKS.md.

    python -m bench.cifar10      # CIFAR-10 from scratch, float vs int8 top-1 (long)
    python -m bench.latency      # LiteRT latency: ours (float / int8 lowered / int8 HARD_SWISH) vs Google's V3-Small
    python -m bench.throughput   # training img/s: our builder vs keras.applications; QAT step cost; speed settings
    python -m bench.step_profile # where a training step's time goes, by op kind (issue #17)
    python -m bench.gmacs        # achieved GMAC/s of our float / int8 V3-Small vs measured peaks (issue #17)
    python -m bench.photos       # hymenoptera photo folder, float vs int8 top-1
    python -m bench.default_run  # the default command: wall time, accuracies, peak RSS
"""
