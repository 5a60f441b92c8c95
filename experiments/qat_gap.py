"""Where a QAT run's float -> int8 gap comes from: its QAT Keras model with groups of fake-quant nodes switched off.

    nice -n 10 python -m experiments.qat_gap --run_dir ~/.cache/mobilenet-bench/runs/cifar10-small-64-e50 [--json OUT]

The run's `qat_model` (QAT-trained weights with their fake-quant nodes) is evaluated on the run's held-out images,
first with every fake-quant node on (what the int8 file computes, within LiteRT's rounding), then with one group of
nodes turned into identities: all weights, all activations, each kind of activation (h-swish's four steps,
BatchNorm outputs, linear-bottleneck outputs, residual adds, squeeze-and-excite, stem, head) and finally all of
them. "Everything off" is the QAT-trained weights as a float model: the part of the gap that is left there came from
fine-tuning moving the weights, not from 8-bit rounding at inference. Agreement is top-1 agreement with the run's
float model (float_model.h5) on the same images.

tfmot has no switch for this; its two quantize ops (`MovingAvgQuantize` for activations, `LastValueQuantize` for
weights) are wrapped while the model runs eagerly, and a node is skipped when its range variable's name (which
carries the layer's name) matches the group.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import keras
from pipeline.config import FLOAT_MODEL_FILE, QAT_MODEL_DIR


def _activations(*fragments: str, exclude: str | None = None):
    def matches(kind: str, name: str) -> bool:
        return kind == "activation" and any(f in name for f in fragments) and not (exclude and exclude in name)
    return matches


# (group, predicate on (node kind, range-variable name)); names follow keras_models' layer names.
GROUPS = [
    ("weights (all)", lambda kind, name: kind == "weight"),
    ("depthwise weights", lambda kind, name: kind == "weight" and "depthwise" in name),
    ("activations (all)", lambda kind, name: kind == "activation"),
    ("h-swish x + 3", _activations("act/add3")),
    ("h-swish relu6(x + 3)", _activations("act/relu6")),
    ("h-swish x * relu6(x + 3)", _activations("act/mul")),
    ("h-swish / 6", _activations("act/div6")),
    ("ReLU outputs", lambda kind, name: kind == "activation" and name.split("/")[-2] == "act"),
    ("BatchNorm outputs before an activation", _activations("BatchNorm", exclude="project")),
    ("linear bottleneck outputs", _activations("project/BatchNorm")),
    ("residual adds", _activations("/Add/")),
    ("squeeze-and-excite (all)", _activations("squeeze_excite")),
    ("stem conv", lambda kind, name: kind == "activation" and name.startswith("quant_Conv/")),
    ("head (last conv, pool, logits)", _activations("quant_Conv_2/", "global_pool", "Logits")),
    ("everything", lambda kind, name: True),
]


@contextlib.contextmanager
def fake_quant_switch():
    """Yields a dict: set its "off" entry (a predicate on kind and name, or None) to choose which fake-quant nodes
    become identities; "nodes" collects every (kind, name) met, "skipped" those made identities (reset it per run)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    state = {"off": None, "nodes": set(), "skipped": set()}
    originals = quant_ops.MovingAvgQuantize, quant_ops.LastValueQuantize

    def wrap(original, kind):
        def quantize(inputs, min_var, max_var, **kwargs):
            state["nodes"].add((kind, min_var.name))
            if state["off"] is not None and state["off"](kind, min_var.name):
                state["skipped"].add((kind, min_var.name))
                return inputs
            return original(inputs, min_var, max_var, **kwargs)
        return quantize

    quant_ops.MovingAvgQuantize = wrap(originals[0], "activation")
    quant_ops.LastValueQuantize = wrap(originals[1], "weight")
    try:
        yield state
    finally:
        quant_ops.MovingAvgQuantize, quant_ops.LastValueQuantize = originals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", default=os.path.join(_common.CACHE, "runs", "cifar10-small-64-e50"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from pipeline.data import load_dataset
    from tflite_export.quantization import quantize_scope

    report = _common.load_report(args.run_dir)
    qat_dir, h5 = os.path.join(args.run_dir, QAT_MODEL_DIR), os.path.join(args.run_dir, FLOAT_MODEL_FILE)
    if report is None or not os.path.isdir(qat_dir) or not os.path.exists(h5):
        raise SystemExit(f"error: {args.run_dir} is not a finished QAT run (needs report.json, qat_model/ and "
                         "float_model.h5)")
    c = report.config
    data = load_dataset(c.dataset, image_size=c.image_size, batch_size=500, seed=c.seed)
    batches = [(images.numpy(), labels.numpy()) for images, labels in data.eval]
    labels = np.concatenate([y for _, y in batches])
    float_model = keras.models.load_model(h5, compile=False)
    float_top1 = np.concatenate([float_model(x, training=False).numpy().argmax(-1) for x, _ in batches])
    with quantize_scope():
        qat_model = keras.models.load_model(qat_dir, compile=False)

    results = []
    with fake_quant_switch() as switch:
        def evaluate(group, predicate):
            switch["off"], switch["skipped"] = predicate, set()
            top1 = np.concatenate([qat_model(x, training=False).numpy().argmax(-1) for x, _ in batches])
            row = {"group": group, "nodes_off": len(switch["skipped"]), "top1": float(np.mean(top1 == labels)),
                   "agreement": float(np.mean(top1 == float_top1))}
            results.append(row)
            print(f"{group}: {row}", flush=True)

        evaluate("none (all fake-quant on)", None)
        for group, predicate in GROUPS:
            evaluate(group, predicate)
        total = len(switch["nodes"])

    float_acc = float(np.mean(float_top1 == labels))
    int8 = report.export.accuracy.int8_top1
    print(f"\n{args.run_dir}: float model {100 * float_acc:.2f}%, int8 file {100 * int8:.2f}% "
          f"({len(labels)} {report.data.eval_split} images; {total} fake-quant nodes)")
    print(_common.table(
        ["fake-quant switched off", "nodes off", "QAT Keras top-1 %", "gap to float (points)", "agreement"],
        [[r["group"], r["nodes_off"], f"{100 * r['top1']:.2f}", f"{100 * (float_acc - r['top1']):+.2f}",
          f"{100 * r['agreement']:.1f}%"] for r in results]))
    machine = _common.machine()
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['date']}")
    _common.write_json(args.json, {"machine": machine, "revision": _common.git_revision(), "run_dir": args.run_dir,
                                   "float_top1": float_acc, "int8_top1": int8, "rows": results})


if __name__ == "__main__":
    main()
