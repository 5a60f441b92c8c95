"""`python -m tflite_export.benchmark MODEL.tflite [MODEL2 ...] [--threads 1,2] [--runs 200] [--warmup 20] [--json OUT]`

LiteRT CPU latency (the interpreter's default path, XNNPACK applied) of one or several models, measured side by side
in one process: for each thread count every model gets its interpreter and warm-up, then the timed runs are
interleaved (round r runs every model once, in an order rotated each round) so that machine load, frequency scaling
and thermal drift hit all models alike. Reports median, p10, p90 and mean per model and thread count, and the ratio of
each median to the first model's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Sequence

import numpy as np

from tflite_export.cli import EXIT_OK, first_line, parse_int_list, run_main
from tflite_export.files import atomic_write_json, check_writable_file, load_model_bytes
from tflite_export.verify import check_runs_in_xnnpack

PROG = "python -m tflite_export.benchmark"


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


def benchmark_models(paths: Sequence, threads: Sequence[int] = (1,), runs: int = 200, warmup: int = 20) -> list[dict]:
    """Latency of each model per thread count, interleaved. Returns one dict per (model, threads):

    {model, threads, runs, warmup, median_ms, p10_ms, p90_ms, mean_ms, min_ms, ratio_vs_first}
    """
    if not paths:
        raise ValueError("no model given")
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    models = [(str(p), load_model_bytes(p)) for p in paths]  # every file is checked before anything is timed
    for name, data in models:
        check_runs_in_xnnpack(data, name)
    results: list[dict] = []
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
            results.append({
                "model": name, "threads": int(t), "runs": runs, "warmup": warmup,
                "median_ms": median, "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90)),
                "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                "ratio_vs_first": median / medians[0] if medians[0] > 0 else float("nan"),
            })
        del interpreters
    return results


def format_table(results: list[dict]) -> str:
    names = [os.path.basename(r["model"]) for r in results]
    width = max([len("model")] + [len(n) for n in names])
    header = f"{'model':<{width}}  threads  median_ms   p10_ms   p90_ms  ratio"
    lines = [header, "-" * len(header)]
    for r, name in zip(results, names):
        lines.append(f"{name:<{width}}  {r['threads']:>7}  {r['median_ms']:>9.3f} {r['p10_ms']:>8.3f} "
                     f"{r['p90_ms']:>8.3f}  {r['ratio_vs_first']:>5.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("models", nargs="+", help=".tflite files; ratios are relative to the first")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2 (default 1)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and thread count (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up runs (default 20)")
    parser.add_argument("--json", metavar="OUT", help="also write the results (and machine info) to this JSON file")
    args = parser.parse_args(argv)
    threads = parse_int_list(args.threads)
    if args.json:
        check_writable_file(args.json, "--json")  # before the benchmark, not after it
    results = benchmark_models(args.models, threads, args.runs, args.warmup)
    print(format_table(results))
    if args.json:
        atomic_write_json(args.json, {
            "results": results,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
        })
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main, prog="benchmark"))
