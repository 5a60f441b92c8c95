"""The pipeline on a small real photo folder (../shared/datasets/hymenoptera_data: ants vs bees, 245 train / 153 val
photos of various sizes), from scratch: float vs int8 top-1 on val.

    nice -n 10 python -m bench.photos [--image_size 128] [--float_epochs 30] [--json OUT] [-- more pipeline flags]

Output goes to ~/.cache/mobilenet-bench/runs/photos-<size> (a fresh folder per run unless --output_dir is given and
reused, in which case the pipeline resumes/skips finished stages).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

from bench import _common
from pipeline.config import FLOAT_MODEL_FILE
from pipeline.schema import to_json_dict
from tflite_export.command import Command, run_command, setting


def batch_norm_probe(output_dir: str, dataset: str, image_size: int) -> dict:
    """Top-1 of the saved float model with BatchNorm moving statistics (how it is deployed) and with batch statistics
    (training=True), on val and on the (augmented) training split: tells a broken BN state from a model that did not
    learn. Classes predicted on val are counted to spot a constant answer."""
    import numpy as np

    from keras_models import backend  # noqa: F401  (before TensorFlow)
    from keras_models.backend import keras
    from pipeline.data import load_dataset

    data = load_dataset(dataset, image_size=image_size, batch_size=32, seed=0)
    model = keras.models.load_model(os.path.join(output_dir, FLOAT_MODEL_FILE), compile=False)
    out = {}
    for split, ds in (("val", data.eval), ("train", data.train)):
        for training in (False, True):
            correct = total = 0
            counts = np.zeros(len(data.class_names), int)
            for x, y in ds:
                p = np.argmax(model(x, training=training).numpy(), -1)
                correct += int((p == y.numpy()).sum())
                total += len(p)
                counts += np.bincount(p, minlength=len(counts))
            out[f"{split}, {'batch' if training else 'moving'} statistics"] = {
                "top1": correct / total, "predicted": dict(zip(data.class_names, counts.tolist()))}
    return out


def print_probe(probe: dict) -> None:
    print("\nBatchNorm probe (saved float model):")
    print(_common.table(["split, BN statistics", "top-1 %", "predicted classes"],
                        [[k, f"{100 * v['top1']:.2f}", ", ".join(f"{c} {n}" for c, n in v["predicted"].items())]
                         for k, v in probe.items()]))


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.photos`; more pipeline flags go after `--`."""

    image_size: int = setting(128, "Input resolution.")
    batch_size: int = setting(32, "Training batch size.")
    float_epochs: int = setting(30, "Float training epochs.")
    qat_epochs: int = setting(3, "QAT epochs.")
    learning_rate: float = setting(0.05, "Pipeline default 0.1 at batch 64, scaled to 32.")
    output_dir: str | None = setting(None, "The run folder (default ~/.cache/mobilenet-bench/runs/photos-<size>).")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")
    probe_only: bool = setting(False, "Only run the BatchNorm probe on the float model of an existing --output_dir.")


def photos(options: Options, args: list[str]) -> None:
    data = _common.shared_path("datasets", "hymenoptera_data")
    output_dir = options.output_dir or os.path.join(_common.CACHE, "runs", f"photos-{options.image_size}")
    if options.probe_only:
        print_probe(batch_norm_probe(output_dir, data, options.image_size))
        return
    if options.output_dir is None and os.path.exists(output_dir):
        shutil.rmtree(output_dir)  # fresh measurement (the pipeline would skip finished stages)
    flags = ["--variant", "small", "--dataset", data, "--image_size", str(options.image_size), "--batch_size",
             str(options.batch_size), "--float_epochs", str(options.float_epochs),
             "--qat_epochs", str(options.qat_epochs),
             "--learning_rate", str(options.learning_rate), *args]
    machine = _common.machine()  # date and load average at the start
    run = _common.run_pipeline(flags, output_dir)
    report = _common.load_report(output_dir)
    if run["exit_code"] or report is None:
        sys.exit(f"pipeline failed (exit {run['exit_code']}); see {run['log']}")
    d = report.data
    print(f"\nhymenoptera_data ({', '.join(d.classes)}): {d.num_train} train / {d.num_eval} "
          f"{d.eval_split}, "
          f"V3-Small 1.0 from scratch at {options.image_size} px, {options.float_epochs} float + "
          f"{options.qat_epochs} QAT epochs")
    print(_common.table(["model", f"top-1 % on {d.num_eval} val photos"], _common.accuracy_rows(report)))
    print(f"time: wall {run['wall_seconds']:.0f} s (pipeline {report.seconds_total:.0f} s), "
          f"peak RSS {run['peak_rss_gib']:.2f} GiB, skipped files {len(d.skipped_files)}")
    probe = batch_norm_probe(output_dir, data, options.image_size)
    print_probe(probe)
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}, "
          f"started {machine['date']}")
    _common.write_json(options.json, {"machine": machine, "revision": _common.git_revision(), "run": run,
                                   "accuracy": to_json_dict(report.accuracy),
                                   "export_accuracy": to_json_dict(report.export.accuracy),
                                   "data": to_json_dict(d), "config": to_json_dict(report.config),
                                   "seconds_total": report.seconds_total,
                                   "batch_norm_probe": probe})


main = Command("bench.photos", Options, photos)

if __name__ == "__main__":
    run_command(main)
