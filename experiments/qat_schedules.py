"""QAT schedules compared on one trained float model: how much of the float accuracy each int8 path keeps (issue #6).

    nice -n 10 python -m experiments.qat_schedules --float_run ~/.cache/mobilenet-bench/runs/cifar10-small-64 \\
        --schedules 3:1:0.005,6:2:0.005,3:1:0.001,3:1:0.01,ptq

A schedule is QAT_EPOCHS:FREEZE_BN_EPOCHS:QAT_LEARNING_RATE (the last FREEZE_BN_EPOCHS of the QAT epochs run with
BatchNorm frozen), with `:kd` appended to train on the float model's predictions (`--qat_distill`), or `ptq` for
post-training quantization (`--noqat`). Each one runs the pipeline in its own folder,
<float_run>-qat-<schedule>, with the float run's configuration and a copy of its finished float checkpoint, so the
float stage is skipped and every row starts from the same weights. A folder that already has a report.json is only
read (delete it to measure again). Rows are the pipeline's own numbers: held-out top-1 of the QAT Keras model and of
the int8 file (LiteRT), the float - int8 gap and the int8/float agreement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from bench import _common
from bench.cifar10 import summarize

# The float run's settings that every schedule must repeat, so the pipeline rebuilds the same model and data.
_FLOAT_FLAGS = ("variant", "alpha", "minimalistic", "dataset", "image_size", "batch_size", "float_epochs",
                "learning_rate", "weight_decay", "label_smoothing", "seed", "io")


def parse_schedule(text: str) -> dict:
    if text == "ptq":
        return {"name": "ptq", "flags": ["--noqat", "--qat_epochs", "0"], "label": "post-training quantization"}
    fields = text.split(":")
    distill = fields[3:] == ["kd"]
    try:
        if len(fields) != 3 + distill:
            raise ValueError
        epochs, frozen, lr = int(fields[0]), int(fields[1]), float(fields[2])
    except ValueError:
        raise SystemExit(
            f"error: schedule {text!r} is not QAT_EPOCHS:FREEZE_BN_EPOCHS:LEARNING_RATE[:kd] or ptq") from None
    if epochs < 1 or not 0 <= frozen <= epochs or lr <= 0:
        raise SystemExit(f"error: schedule {text!r}: need QAT epochs >= 1, 0 <= frozen <= epochs, learning rate > 0")
    return {"name": f"e{epochs}f{frozen}lr{lr:g}" + ("kd" if distill else ""),
            "epochs": epochs, "frozen": frozen, "learning_rate": lr, "distill": distill,
            "flags": ["--qat_epochs", str(epochs), "--freeze_bn_epochs", str(frozen), "--qat_learning_rate", f"{lr:g}",
                      "--qat_distill" if distill else "--noqat_distill"],
            "label": f"QAT {epochs} epochs ({frozen} BN-frozen), lr {lr:g}"
                     + (", distilling the float model" if distill else "")}


def float_flags(float_run: str) -> tuple[list[str], dict]:
    report = _common.load_report(float_run)
    checkpoint = os.path.join(float_run, "checkpoints", "float.weights.h5")
    if report is None or not os.path.exists(checkpoint):
        raise SystemExit(f"error: {float_run} is not a finished pipeline run (needs report.json and "
                         "checkpoints/float.weights.h5)")
    flags = [f"--{name}={getattr(report.config, name)}" for name in _FLOAT_FLAGS]
    # The BatchNorm momentum the float stage used; QAT trains BN with it too.
    flags.append(f"--bn_momentum={report.model.bn_momentum}")
    flags.append("--benchmark_runs=0")
    return flags, report


def run_schedule(float_run: str, flags: list[str], schedule: dict, seed: int | None = None, tag: str = "") -> dict:
    output_dir = (f"{float_run.rstrip('/')}-qat-{schedule['name']}" + (f"-seed{seed}" if seed is not None else "")
                  + (f"-{tag}" if tag else ""))
    if seed is not None:  # another shuffling order for QAT (the float weights are loaded, not retrained)
        flags = [f for f in flags if not f.startswith("--seed=")] + [f"--seed={seed}"]
    extra = {}
    if _common.load_report(output_dir) is None:
        os.makedirs(os.path.join(output_dir, "checkpoints"), exist_ok=True)
        shutil.copy2(os.path.join(float_run, "checkpoints", "float.weights.h5"),
                     os.path.join(output_dir, "checkpoints", "float.weights.h5"))
        extra = _common.run_pipeline([*flags, *schedule["flags"]], output_dir)
        if extra["exit_code"]:
            print(f"pipeline exited with code {extra['exit_code']}; see {extra['log']}", file=sys.stderr)
    label = schedule["label"] + (f", seed {seed}" if seed is not None else "") + (f" [{tag}]" if tag else "")
    row = summarize(output_dir, {"schedule": schedule["name"], "label": label, **extra})
    if row["complete"]:
        curves = row["val_accuracy_per_epoch"]
        row["qat_val_per_epoch"] = curves.get("qat", []) + curves.get("qat_bn_frozen", [])
        row["qat_seconds"] = sum(v for k, v in row["stages_s"].items() if k.startswith("qat"))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float_run", required=True, help="a finished pipeline output_dir (its float stage is reused)")
    p.add_argument("--schedules", default="3:1:0.005,6:2:0.005,ptq", help="comma-separated, see above")
    p.add_argument("--seed", type=int, default=None, help="QAT seed instead of the float run's (run-to-run spread)")
    p.add_argument("--tag", default="", help="appended to the folder names, to measure schedules again after a code "
                   "change without reading the old folders")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    schedules = [parse_schedule(s.strip()) for s in args.schedules.split(",") if s.strip()]
    float_run = os.path.abspath(os.path.expanduser(args.float_run))
    flags, float_report = float_flags(float_run)
    machine, revision = _common.machine(), _common.git_revision()
    rows = [run_schedule(float_run, flags, s, args.seed, args.tag) for s in schedules]

    c = float_report.config
    print(f"\nQAT schedules on one float model: {c.variant} {c.alpha:g} at {c.image_size} px, "
          f"{c.float_epochs} float epochs on {c.dataset}; float top-1 "
          f"{100 * float_report.accuracy.float_keras:.2f}%")
    table = []
    for r in rows:
        if not r["complete"]:
            table.append([r["label"], "-", "-", "not finished", "-", "-", "-"])
            continue
        table.append([
            r["label"], " ".join(f"{v:.3f}" for v in r["qat_val_per_epoch"]) or "-",
            f"{100 * r['qat_keras_top1']:.2f}" if r["qat_keras_top1"] is not None else "-",
            f"{100 * r['int8_top1']:.2f}", f"{r['gap_points']:+.2f}", f"{100 * r['agreement']:.1f}%",
            f"{r['qat_seconds'] / 60:.1f}" if r["qat_seconds"] else "-",
        ])
    print(_common.table(["schedule", "held-out top-1 after each QAT epoch", "QAT Keras %", "int8 %",
                         "gap (points)", "agreement", "QAT min"], table))
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}")
    _common.write_json(args.json, {"machine": machine, "revision": revision, "command": _common.command_line(),
                                   "float_run": args.float_run, "rows": rows})


if __name__ == "__main__":
    main()
