"""`python -m tflite_export.benchmark MODEL.tflite [MODEL2 ...] [--threads 1,2] [--runs 200] [--warmup 20]`
`[--json OUT.json|-]`

LiteRT CPU latency (the interpreter's default path, XNNPACK applied) of one or several models, measured side by side
in one process: for each thread count every model gets its interpreter and warm-up, then the timed runs are
interleaved (round r runs every model once, in an order rotated each round) so that machine load, frequency scaling
and thermal drift hit all models alike. Reports median, p10, p90 and mean per model and thread count, and the ratio of
each median to the first model's.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Sequence

import numpy as np

from tflite_export.cli import EXIT_OK, first_line, parse_int_list
from tflite_export.command import JSON_HELP, Command, check_json_target, emit, positional, run_command, setting
from tflite_export.files import load_model_bytes
from tflite_export.verify import check_runs_in_xnnpack


@dataclasses.dataclass(frozen=True)
class ModelLatency:
    """The latency of one model at one thread count, from `benchmark_models`."""

    model: str  # the path
    threads: int
    runs: int  # timed runs
    warmup: int  # untimed runs before them
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    ratio_vs_first: float  # this median over the first model's at the same thread count


@dataclasses.dataclass(frozen=True)
class Machine:
    platform: str
    processor: str
    cpu_count: int | None
    python: str

    @classmethod
    def this(cls) -> Machine:
        return cls(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                   python=platform.python_version())


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What `python -m tflite_export.benchmark` measured (its --json)."""

    results: list[ModelLatency]
    machine: Machine


def _make_interpreter(data: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        shape = detail["shape"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
        else:
            value = rng.uniform(-1, 1, size=shape).astype(dtype)
        interpreter.set_tensor(detail["index"], value)
    return interpreter


def benchmark_models(paths: Sequence, threads: Sequence[int] = (1,), runs: int = 200,
                     warmup: int = 20) -> list[ModelLatency]:
    """Latency of each model per thread count, interleaved: one `ModelLatency` per (thread count, model), in that
    order."""
    if not paths:
        raise ValueError("no model given")
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    models = [(str(p), load_model_bytes(p)) for p in paths]  # every file is checked before anything is timed
    for name, data in models:
        check_runs_in_xnnpack(data, name)
    results: list[ModelLatency] = []
    for t in threads:
        interpreters = []
        for name, data in models:
            try:
                interpreters.append(_make_interpreter(data, int(t)))
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"{name}: LiteRT cannot run the model: {first_line(exc)}") from None
        for interpreter in interpreters:
            for _ in range(warmup):
                interpreter.invoke()
        times = [np.empty(runs, dtype=np.float64) for _ in models]
        n = len(models)
        clock = time.perf_counter
        for r in range(runs):
            for k in range(n):
                i = (r + k) % n
                start = clock()
                interpreters[i].invoke()
                times[i][r] = clock() - start
        medians = [float(np.median(x)) * 1e3 for x in times]
        for (name, _), x, median in zip(models, times, medians):
            ms = x * 1e3
            results.append(ModelLatency(
                model=name, threads=int(t), runs=runs, warmup=warmup, median_ms=median,
                p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()),
                min_ms=float(ms.min()), ratio_vs_first=median / medians[0] if medians[0] > 0 else float("nan")))
        del interpreters
    return results


def format_table(results: list[ModelLatency]) -> str:
    names = [os.path.basename(r.model) for r in results]
    width = max([len("model")] + [len(n) for n in names])
    header = f"{'model':<{width}}  threads  median_ms   p10_ms   p90_ms  ratio"
    lines = [header, "-" * len(header)]
    for r, name in zip(results, names):
        lines.append(f"{name:<{width}}  {r.threads:>7}  {r.median_ms:>9.3f} {r.p10_ms:>8.3f} {r.p90_ms:>8.3f}  "
                     f"{r.ratio_vs_first:>5.2f}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """The flags of `python -m tflite_export.benchmark`."""

    threads: str = setting("1", "Comma-separated thread counts, e.g. 1,2.")
    runs: int = setting(200, "Timed runs per model and thread count.")
    warmup: int = setting(20, "Untimed warm-up runs.")
    json: str | None = setting(None, JSON_HELP + " Holds the results and the machine's description.")


def benchmark_command(options: BenchmarkOptions, args: list[str]) -> int:
    check_json_target(options.json)  # before the benchmark, not after it
    models = positional(args, "MODEL...: .tflite files; ratios are relative to the first", most=None)
    results = benchmark_models(models, parse_int_list(options.threads), options.runs, options.warmup)
    emit(format_table(results), Benchmark(results, Machine.this()), options.json)
    return EXIT_OK


main = Command("tflite_export.benchmark", BenchmarkOptions, benchmark_command)

if __name__ == "__main__":
    run_command(main)
