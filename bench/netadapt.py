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

import dataclasses
import json
import os
import subprocess
import sys
import time

from bench import _common
from pipeline.config import FLOAT_MODEL_FILE
from tflite_export.command import Command, run_command, setting

START_RUN = os.path.join(_common.CACHE, "runs", "cifar10-imagenet-96")


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.netadapt`."""

    run_dir: str = setting(START_RUN, "The trained start run.")
    output_dir: str = setting(os.path.join(_common.CACHE, "netadapt", "cifar10-64"), "The search's folder.")
    image_size: int = setting(64, "Input resolution.")
    start_steps: int = setting(200, "pipeline.netadapt --start_steps.")
    finetune_steps: int = setting(40, "pipeline.netadapt --finetune_steps.")
    delta_ratio: float = setting(0.05, "pipeline.netadapt --delta_ratio.")
    final_steps: int = setting(200, "pipeline.netadapt --final_steps.")
    qat_steps: int = setting(100, "pipeline.netadapt --qat_steps.")
    target_alpha: float = setting(0.75, "Search until the latency of this width multiplier (a finished search rerun "
                                  "with a lower one goes on from where it stopped).")
    max_iterations: int = setting(30, "Stop the search there (the 2026-11-30 run: 1, for lack of time; see "
                                  "BENCHMARKS.md).")
    seed: int = setting(0, "Random seed.")
    report_only: bool = setting(False, "Only print the table from an existing --output_dir.")
    json: str | None = setting(None, "Also write the results here ('-': to stdout).")


def netadapt(options: Options, args: list[str]) -> int:
    machine = _common.machine()
    if not options.report_only:
        if not os.path.exists(os.path.join(options.run_dir, FLOAT_MODEL_FILE)):
            raise ValueError(f"{options.run_dir} has no float_model.h5; train the start model first (see "
                             "BENCHMARKS.md)")
        _common.unpack_once(_common.shared_path("datasets", "cifar10-jpeg.tar.gz"), "cifar10-jpeg")
        os.makedirs(options.output_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pipeline.netadapt", "--run_dir", options.run_dir,
               "--output_dir", options.output_dir,
               "--image_size", str(options.image_size), "--start_steps", str(options.start_steps),
               "--finetune_steps", str(options.finetune_steps), "--delta_ratio", str(options.delta_ratio),
               "--latency_rounds", "2", "--latency_runs", "1000", "--target_alpha", str(options.target_alpha),
               "--alphas", "0.75,0.5",
               "--final_steps", str(options.final_steps), "--qat_steps", str(options.qat_steps),
               "--seed", str(options.seed),
               "--max_iterations", str(options.max_iterations)]
        log_path = os.path.join(options.output_dir, "run.log")
        print("command:", " ".join(cmd), "\nlog:", log_path, flush=True)
        started = time.perf_counter()
        with open(log_path, "a") as log:
            code = subprocess.run(cmd, cwd=_common.REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        machine["wall_seconds"] = time.perf_counter() - started
        machine["loadavg_at_end"] = os.getloadavg()
        if code:
            sys.exit(f"error: pipeline.netadapt exited with {code}; see {log_path}")
    report_path = os.path.join(options.output_dir, "report.json")  # pipeline.netadapt's report, not a run's Report
    if not os.path.exists(report_path):
        raise ValueError(f"no report.json in {options.output_dir}")
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
    _common.write_json(options.json, {"machine": machine, "report": report})
    return 0


main = Command("bench.netadapt", Options, netadapt)

if __name__ == "__main__":
    run_command(main)
