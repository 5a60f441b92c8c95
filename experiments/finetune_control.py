"""Control for the QAT schedules: the same fine-tuning schedule on the float model, with no fake-quant (issue #6).

    nice -n 10 python -m experiments.finetune_control --float_run ~/.cache/mobilenet-bench/runs/cifar10-small-64-e50 \\
        --schedule 6:2:0.01 [--seed N] [--json OUT]

experiments.qat_gap found that a QAT run's weights, scored with every fake-quant node off, lose about 0.4 points against
the float model they started from. This asks how much of that the schedule alone costs: the float model is
fine-tuned exactly as QAT fine-tunes it (`pipeline.train.fine_tune`: QAT_EPOCHS - FREEZE_BN_EPOCHS epochs at the
QAT learning rate, cosine-decayed, then FREEZE_BN_EPOCHS with BatchNorm frozen at a tenth of it; same recipe,
augmentation, batch size and seed), but without `quantize_model`. The run lives in <float_run>-finetune-<schedule>
[-seedN] and resumes like a pipeline stage (a finished one is loaded and scored again). Rows: held-out top-1 of
the float model, of the fine-tuned one, and their agreement.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench import _common
from experiments.qat_schedules import parse_schedule
from pipeline.config import FLOAT_MODEL_FILE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float_run", default=os.path.join(_common.CACHE, "runs", "cifar10-small-64-e50"))
    p.add_argument("--schedule", default="6:2:0.01", help="QAT_EPOCHS:FREEZE_BN_EPOCHS:LEARNING_RATE")
    p.add_argument("--seed", type=int, default=None, help="shuffling seed (default: the float run's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    schedule = parse_schedule(args.schedule)
    if schedule["name"] == "ptq" or schedule["distill"]:
        raise SystemExit("error: --schedule must be QAT_EPOCHS:FREEZE_BN_EPOCHS:LEARNING_RATE (no ptq, no :kd)")
    report = _common.load_report(args.float_run)
    h5 = os.path.join(args.float_run, FLOAT_MODEL_FILE)
    if report is None or not os.path.exists(h5):
        raise SystemExit(f"error: {args.float_run} is not a finished pipeline run (needs report.json and "
                         "float_model.h5)")

    from keras_models.backend import keras, tf
    from pipeline.data import load_dataset
    from pipeline.train import Recipe, fine_tune, one_hot
    from tflite_export.files import atomic_write_json

    c = report.config
    seed = c.seed if args.seed is None else args.seed
    output_dir = (f"{args.float_run.rstrip('/')}-finetune-{schedule['name']}"
                  + (f"-seed{args.seed}" if args.seed is not None else ""))
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    data = load_dataset(c.dataset, image_size=c.image_size, batch_size=c.batch_size, seed=seed,
                        cache_dir=os.path.join(output_dir, "cache"))
    classes = len(data.class_names)
    start = keras.models.load_model(h5, compile=False)
    model = keras.models.load_model(h5, compile=False)
    recipe = Recipe(learning_rate=schedule["learning_rate"], warmup_epochs=0, weight_decay=c.weight_decay,
                    label_smoothing=c.label_smoothing)  # the pipeline's QAT recipe (labels as targets)
    stages = fine_tune("finetune", model, one_hot(data.train, classes), one_hot(data.eval, classes),
                       epochs=schedule["epochs"], freeze_bn_epochs=schedule["frozen"], recipe=recipe,
                       num_train=data.num_train,
                       workdir=output_dir, batch_size=c.batch_size)

    labels, before, after = [], [], []
    for images, y in data.eval:
        labels.append(y.numpy())
        before.append(tf.argmax(start(images, training=False), -1).numpy())
        after.append(tf.argmax(model(images, training=False), -1).numpy())
    labels, before, after = map(np.concatenate, (labels, before, after))
    result = {"float_top1": float(np.mean(before == labels)), "finetuned_top1": float(np.mean(after == labels)),
              "agreement": float(np.mean(before == after)), "images": int(labels.size),
              "curves": {s.name: s.history.get("val_accuracy", []) for s in stages},
              "seconds": sum(s.seconds for s in stages)}
    atomic_write_json(os.path.join(output_dir, "control.json"), result)
    print(f"\n{output_dir}: {schedule['label'].replace('QAT', 'float fine-tune')}, seed {seed}, "
          f"{result['images']} {data.eval_split_name} images")
    print(_common.table(
        ["model", "top-1 %", "agreement with the float model"],
        [["float model (start)", f"{100 * result['float_top1']:.2f}", "100%"],
         ["fine-tuned, no fake-quant", f"{100 * result['finetuned_top1']:.2f}", f"{100 * result['agreement']:.1f}%"],
         ["change (points)", f"{100 * (result['finetuned_top1'] - result['float_top1']):+.2f}", ""]]))
    machine = _common.machine()
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['date']}")
    _common.write_json(args.json, {"machine": machine, "revision": _common.git_revision(), "float_run": args.float_run,
                                   "schedule": args.schedule, "seed": seed, **result})


if __name__ == "__main__":
    main()
