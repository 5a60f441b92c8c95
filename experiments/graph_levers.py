"""Every graph-level lever on our int8 V3-Small at once, timed beside Google's file (issue #17's 0.25x target).

    python -m experiments.graph_levers [--runs 1000] [--rounds 2] [--images 64] [--json OUT]

Issue #17 asks for our int8 V3-Small at 224 in at most 0.25x Google's file's time at 1 thread, with any gain coming
from the graph, not from the benchmark. The levers, each added to the one before:

  1. the pipeline's default export (uint8 I/O, softmax);
  2. `--io int8 --logits`: no QUANTIZE at the edges, no SOFTMAX at the end (both run outside XNNPACK);
  3. h-swish's x1/6 MULs folded into the convolutions that read them (`experiments.rescale_fold`, exact).

A second copy of lever 2's file is timed too, as a control: whatever separates it from lever 2 is the benchmark's
own noise, the yardstick for the other differences. The model is untrained (latency does not depend on the weights),
with ranges set up as the pipeline sets them before QAT, so the x1/6 MULs are the identity the fold needs; the script
checks that lever 3's file gives the integers of lever 2's on --images random pictures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2, help="interleaved benchmark calls, each reported")
    p.add_argument("--images", type=int, default=64, help="random pictures levers 2 and 3 must agree on")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    reference = _common.reference_v3_small()
    from bench.latency import describe
    from experiments.rescale_fold import folded_and_checked, qat_with_pipeline_ranges
    from tflite_export.benchmark import benchmark_models
    from tflite_export.convert import convert
    from tflite_export.export import ending_at_logits

    machine = _common.machine()
    qat, calib = qat_with_pipeline_ranges()
    logits = ending_at_logits(qat)

    def representative():
        return iter(calib)

    default = convert(qat, representative, io_dtype="uint8")
    edges = convert(logits, representative, io_dtype="int8")
    folded, removed, identical = folded_and_checked(edges, args.images)

    workdir = tempfile.mkdtemp(prefix="bench-levers-")
    files = {"Google V3-Small uint8 (reference)": reference}
    for name, content in (("1 ours, default export (uint8 I/O, softmax)", default),
                          ("2 + int8 I/O, ends at the logits", edges),
                          ("2 again (control: the same file)", edges),
                          (f"3 + {removed} x1/6 MULs folded", folded)):
        path = os.path.join(workdir, f"file{len(files)}.tflite")
        with open(path, "wb") as f:
            f.write(content)
        files[name] = path
    names = list(files)
    rounds = []
    for _ in range(args.rounds):
        rounds.append([dataclasses.asdict(r) for r in benchmark_models([files[n] for n in names], threads=[1],
                                                                       runs=args.runs, warmup=args.warmup)])
    rows = []
    for i, name in enumerate(names):
        d = describe(files[name])
        medians = [r[i]["median_ms"] for r in rounds]
        ratios = [r[i]["ratio_vs_first"] for r in rounds]
        rows.append([name, " / ".join(f"{m:.3f}" for m in medians), " / ".join(f"{x:.3f}" for x in ratios),
                     d["ops"], d["xnnpack_partitions"]])
    print(f"\nlever 3 gives lever 2's integers on {args.images} random pictures: {identical}")
    print(_common.table(["file (224, 1 thread)", "median ms per round", "x Google per round", "ops",
                         "XNNPACK partitions"], rows))
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}; revision {_common.git_revision()}")
    _common.write_json(args.json, {"machine": machine, "names": names, "removed": removed, "identical": identical,
                                   "rounds": rounds})
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
