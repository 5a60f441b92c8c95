"""NetAdapt against the width multiplier on CIFAR-10 (issue #16): same start model, same training steps, int8 latency
measured side by side on this machine.

    python -m bench.netadapt                  # search + final training, then the table (14 min per iteration and
                                              # 15 min of final training on 2 loaded cores; ~4 iterations)
    python -m bench.netadapt --report_only    # the table from a finished run's report.json

Start: the V3-Small trained on CIFAR-10 from the ImageNet weights at 96 px by `bench.cifar10` (the command is in
BENCHMARKS.md, "CIFAR-10 from the ImageNet start"; ~/.cache/mobilenet-bench/runs/cifar10-imagenet-96), rebuilt at
--image_size and fine-tuned --start_steps there.
Runs `python -m pipeline.netadapt` in a subprocess with the settings below (a rerun resumes): the search stops at
the latency of alpha 0.75 (or after --max_iterations); the first iteration at or below each alpha model's latency
and the last one are finished (long fine-tune + QAT + int8 export) beside alpha 0.75 and 0.5, cut from the same start
by the same filter importance and trained with as many steps. Top-1 is the int8 file's on the 10,000 CIFAR-10 test
images; latency is timed on this machine, 1 thread, each file as a pair with the start model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import _common
from pipeline.config import FLOAT_MODEL_FILE

START_RUN = os.path.join(_common.CACHE, "runs", "cifar10-imagenet-96")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", default=START_RUN, help="the trained start run")
    p.add_argument("--output_dir", default=os.path.join(_common.CACHE, "netadapt", "cifar10-64"))
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--start_steps", type=int, default=200)
    p.add_argument("--finetune_steps", type=int, default=40)
    p.add_argument("--delta_ratio", type=float, default=0.05)
    p.add_argument("--final_steps", type=int, default=200)
    p.add_argument("--qat_steps", type=int, default=100)
    p.add_argument("--target_alpha", type=float, default=0.75,
                   help="search until the latency of this width multiplier (a finished search rerun with a lower one "
                        "goes on from where it stopped)")
    p.add_argument("--max_iterations", type=int, default=30,
                   help="stop the search there (the 2026-11-30 run: 1, for lack of time; see BENCHMARKS.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = _common.machine()
    if not args.report_only:
        if not os.path.exists(os.path.join(args.run_dir, FLOAT_MODEL_FILE)):
            sys.exit(f"error: {args.run_dir} has no float_model.h5; train the start model first (see BENCHMARKS.md)")
        _common.unpack_once(_common.shared_path("datasets", "cifar10-jpeg.tar.gz"), "cifar10-jpeg")
        os.makedirs(args.output_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pipeline.netadapt", "--run_dir", args.run_dir, "--output_dir", args.output_dir,
               "--image_size", str(args.image_size), "--start_steps", str(args.start_steps),
               "--finetune_steps", str(args.finetune_steps), "--delta_ratio", str(args.delta_ratio),
               "--latency_rounds", "2", "--latency_runs", "1000", "--target_alpha", str(args.target_alpha),
               "--alphas", "0.75,0.5",
               "--final_steps", str(args.final_steps), "--qat_steps", str(args.qat_steps), "--seed", str(args.seed),
               "--max_iterations", str(args.max_iterations)]
        log_path = os.path.join(args.output_dir, "run.log")
        print("command:", " ".join(cmd), "\nlog:", log_path, flush=True)
        started = time.perf_counter()
        with open(log_path, "a") as log:
            code = subprocess.run(cmd, cwd=_common.REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        machine["wall_seconds"] = time.perf_counter() - started
        machine["loadavg_at_end"] = os.getloadavg()
        if code:
            sys.exit(f"error: pipeline.netadapt exited with {code}; see {log_path}")
    report_path = os.path.join(args.output_dir, "report.json")  # pipeline.netadapt's report, not a run's Report
    if not os.path.exists(report_path):
        sys.exit(f"error: no report.json in {args.output_dir}")
    with open(report_path) as f:
        report = json.load(f)
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load "
          f"{machine.get('loadavg_at_start')} -> {machine.get('loadavg_at_end')}; revision {_common.git_revision()}")
    print(f"start {report['start_ms']:.3f} ms; target {report['target']} ({report['target_ms']:.3f} ms); search "
          f"{report['search_seconds'] / 60:.1f} min over {len(report['snapshots']) - 1} iterations; proposals scored "
          f"on {report['holdout']}")
    rows = [[r["name"], f"{r['latency_ms']:.3f}", f"{r['ratio_to_start']:.3f}",
             f"{100 * r['accuracy']['int8_top1']:.2f}", f"{100 * r['accuracy']['keras_top1']:.2f}",
             f"{r['reward']:.4f}", f"{r['search_steps']}+{r['float_steps']}+{r['qat_steps']}", f"{r['params']:,}",
             f"{r['madds'] / 1e6:.1f}"] for r in report["results"]]
    print(_common.table(["model", "int8 ms (1 thread)", "x start", "int8 top-1 %", "float top-1 %", "MnasNet reward",
                         "steps (search+float+QAT)", "params", "MAdds (M)"], rows))
    _common.write_json(args.json, {"machine": machine, "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
