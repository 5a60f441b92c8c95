"""CIFAR-10 from scratch with our pipeline: float vs int8 top-1 on the 10,000 test images (issue #6).

    nice -n 10 python -m bench.cifar10                      # full run (about 80 min on 2 idle cores), then the table
    python -m bench.cifar10 --report_only                   # table from a finished (or partial) run's files

Unpacks ../shared/datasets/cifar10-jpeg.tar.gz once into ~/.cache/mobilenet-bench/ (never into the repository) and
runs `python -m pipeline.train_and_export --dataset .../cifar10-jpeg` in a subprocess: train/ is the training split,
test/ the evaluation split (the pipeline never trains on it). A rerun of the same command resumes from checkpoints;
use a fresh --output_dir for a fresh measurement.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import subprocess
import sys
import time

from bench import _common
from pipeline.schema import to_json_dict
from tflite_export.command import Command, run_command, setting


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.cifar10`; more pipeline flags go after `--` (e.g. `-- --seed 1`)."""

    image_size: int = setting(64, "Input resolution.")
    batch_size: int = setting(128, "Training batch size.")
    float_epochs: int = setting(50, "Float training epochs.")
    qat_epochs: int = setting(6, "QAT epochs.")
    freeze_bn_epochs: int = setting(2, "Last QAT epochs with BatchNorm frozen.")
    learning_rate: float = setting(0.2, "0.1 at batch 64 (pipeline default), scaled linearly.")
    output_dir: str | None = setting(None, "The run folder (default ~/.cache/mobilenet-bench/runs/"
                                     "cifar10-small-<size>-e<float_epochs>).")
    report_only: bool = setting(False, "Only print the table from an existing output_dir.")
    json: str | None = setting(None, "Also write the results here ('-': to stdout).")


def stage_curves(log_path: str) -> dict[str, list[float]]:
    """val_accuracy per epoch, grouped by stage. In the log, our "<stage>: epoch N done" line comes just before the
    Keras epoch line with the val_accuracy of that epoch."""
    curves: dict[str, list[float]] = {}
    stage = None
    if not os.path.exists(log_path):
        return curves
    with open(log_path, errors="replace") as f:
        for line in f:
            m = re.search(r"\b(head|float|qat|qat_bn_frozen): epoch (\d+) done", line)
            if m:
                stage = m.group(1)
                continue
            m = re.search(r"val_accuracy: ([0-9.]+)", line)
            if m and stage is not None:
                curves.setdefault(stage, []).append(float(m.group(1)))
                stage = None
    return curves


def summarize(output_dir: str, extra: dict | None = None) -> dict:
    report = _common.load_report(output_dir)
    curves = stage_curves(os.path.join(output_dir, "run.log"))
    result = {"output_dir": output_dir, "val_accuracy_per_epoch": curves, **(extra or {})}
    if report is not None:
        acc = report.export.accuracy
        result.update({
            "complete": True,
            "config": to_json_dict(report.config),
            # The report's curves cover every epoch, including those of an interrupted and resumed run.
            "val_accuracy_per_epoch": {s.name: s.curves.metrics.get("val_accuracy", []) for s in report.stages
                                       if s.curves.epochs} or curves,
            "num_train": report.data.num_train, "num_eval": report.data.num_eval,
            "eval_split": report.data.eval_split,
            "float_top1": report.accuracy.float_keras,
            "qat_keras_top1": report.accuracy.qat_keras,
            "int8_top1": acc.int8_top1, "int8_images": acc.images, "agreement": acc.agreement,
            "gap_points": 100 * (report.accuracy.float_keras - acc.int8_top1),
            "stages_s": {s.name: s.seconds for s in report.stages}, "qat_seconds": report.qat_seconds,
            "pipeline_seconds": report.seconds_total,
            "float_train_img_s": report.throughput.float_train_images_per_s,
            "qat_train_img_s": report.throughput.qat_train_images_per_s,
            "latency": [to_json_dict(row) for row in report.latency], "model_file": report.export.model_file,
            "size_kib": report.export.size_bytes / 1024,
        })
    else:
        result["complete"] = False
    return result


def print_table(r: dict) -> None:
    if not r.get("complete"):
        print(f"run not finished (no report.json in {r['output_dir']}); val_accuracy so far:")
        for stage, c in r["val_accuracy_per_epoch"].items():
            print(f"  {stage}: " + " ".join(f"{v:.3f}" for v in c))
        return
    c = r["config"]
    start = "from scratch" if c.get("weights", "none") == "none" else f"from {os.path.basename(c['weights'])}"
    print(f"\nCIFAR-10, MobileNetV3-Small alpha {c['alpha']:g} {start} at {c['image_size']} px, batch "
          f"{c['batch_size']}, {c['float_epochs']} float + {c['qat_epochs']} QAT epochs ({c['freeze_bn_epochs']} "
          f"BN-frozen), lr {c['learning_rate']:g}")
    rows = [
        ["float (Keras)", f"{100 * r['float_top1']:.2f}", ""],
        ["QAT (Keras, fake-quant)", f"{100 * r['qat_keras_top1']:.2f}" if r.get("qat_keras_top1") is not None else "-",
         ""],
        ["int8 (LiteRT, uint8 I/O)", f"{100 * r['int8_top1']:.2f}",
         f"agreement with float {100 * r['agreement']:.2f}%"],
        ["gap float - int8", f"{r['gap_points']:+.2f} points", "target <= 0.5"],
    ]
    print(_common.table(["model", f"top-1 % on {r['int8_images']} {r['eval_split']} images", "note"], rows))
    stages = r["stages_s"]
    print(f"time: pipeline {r['pipeline_seconds'] / 60:.1f} min (float {stages.get('float', 0) / 60:.1f}, "
          f"QAT {r['qat_seconds'] / 60:.1f})"
          + (f", wall {r['wall_seconds'] / 60:.1f} min" if r.get("wall_seconds") else "")
          + (f", peak RSS {r['peak_rss_gib']:.2f} GiB" if r.get("peak_rss_gib") else ""))
    print(f"training img/s: float {r['float_train_img_s'] or float('nan'):.0f}, QAT "
          f"{r['qat_train_img_s'] or float('nan'):.0f}")
    for stage, curve in r["val_accuracy_per_epoch"].items():
        print(f"val_accuracy {stage}: " + " ".join(f"{v:.3f}" for v in curve))
    for row in r.get("latency") or []:
        print(f"int8 latency {row['threads']} thread(s): {row['median_ms']:.2f} ms median")


def cifar10(options: Options, args: list[str]) -> int:
    size = options.image_size
    output_dir = options.output_dir or os.path.join(_common.CACHE, "runs",
                                                    f"cifar10-small-{size}-e{options.float_epochs}")
    extra = {}
    if not options.report_only:
        archive = _common.shared_path("datasets", "cifar10-jpeg.tar.gz")
        root = os.path.join(_common.unpack_once(archive, "cifar10-jpeg"))
        if not os.path.isdir(os.path.join(root, "train")):
            raise ValueError(f"{root}/train missing after unpacking {archive}")
        os.makedirs(output_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pipeline.train_and_export", "--variant", "small", "--alpha", "1.0",
               "--dataset", root, "--image_size", str(size), "--batch_size", str(options.batch_size),
               "--float_epochs", str(options.float_epochs), "--qat_epochs", str(options.qat_epochs),
               "--freeze_bn_epochs", str(options.freeze_bn_epochs), "--learning_rate", str(options.learning_rate),
               "--output_dir", output_dir, *args]
        print("command:", " ".join(cmd), flush=True)
        print("log:", os.path.join(output_dir, "run.log"), flush=True)
        machine, revision = _common.machine(), _common.git_revision()  # at the start of the run
        started = time.perf_counter()
        with open(os.path.join(output_dir, "run.log"), "a") as log:
            code = subprocess.call(cmd, cwd=_common.REPO, stdout=log, stderr=subprocess.STDOUT)
        extra = {"wall_seconds": time.perf_counter() - started, "exit_code": code,
                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2,
                 "command": " ".join(cmd), "machine": machine, "revision": revision}
        if code:
            print(f"pipeline exited with code {code}; see {output_dir}/run.log", file=sys.stderr)
    result = summarize(output_dir, extra)
    print_table(result)
    default_json = None if options.report_only else os.path.join(output_dir, "bench_cifar10.json")
    _common.write_json(options.json or default_json, result)


main = Command("bench.cifar10", Options, cifar10)

if __name__ == "__main__":
    run_command(main)
