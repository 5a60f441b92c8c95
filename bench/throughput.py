"""Training throughput: our MobileNetV3-Small builder vs keras.applications.MobileNetV3Small, and QAT step cost.

    nice -n 10 python -m bench.throughput [--image_size 64] [--batch_size 64] [--rounds 8] [--steps 15] [--json OUT]

Same data pipeline (pipeline.data synthetic set: cached images -> seeded augmentation -> batches, one-hot labels),
same recipe (pipeline.train.Recipe defaults via compile_model: SGD Nesterov, warm-up + cosine, label smoothing, weight
decay), same BatchNorm momentum (0.99), same loop: the compiled Keras train function that `model.fit` runs each step,
fed from one persistent iterator per model. Models (all V3-Small 1.0, the synthetic set's 8 classes, dropout 0.2,
raw [0,255] input):
  ours          keras_models.build("small")
  keras.apps    tf_keras.applications.MobileNetV3Small(weights=None, include_preprocessing=True)
  ours QAT      pipeline.qat.quantize_model(ours)
After a warm-up (tracing + a few steps), rounds alternate the models (order rotated each round); each round times
`--steps` steps of every model. Reported: median images/s over rounds, and ratios (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import keras, tf


def make_models(size: int, num_classes: int):
    import keras_models
    from pipeline.qat import quantize_model

    ours = keras_models.build("small", input_shape=(size, size, 3), alpha=1.0, num_classes=num_classes, dropout=0.2)
    apps = keras.applications.MobileNetV3Small(input_shape=(size, size, 3), alpha=1.0, weights=None,
                                               classes=num_classes,
                                               dropout_rate=0.2, include_preprocessing=True)
    qat_source = keras_models.build("small", input_shape=(size, size, 3), alpha=1.0, num_classes=num_classes,
                                    dropout=0.2)
    qat = quantize_model(qat_source)
    return {"ours": ours, "keras.apps": apps, "ours QAT": qat}


def layer_times(model, batch, repeats: int = 5) -> list[tuple[str, str, float]]:
    """Rough per-layer forward time (eager, one layer at a time) - only used when ours is slower than keras.apps."""
    out = []
    cache = {model.inputs[0].ref(): batch}
    for layer in model.layers[1:]:
        node = layer.inbound_nodes[0]
        ins = [cache[t.ref()] for t in tf.nest.flatten(node.input_tensors)]
        args = ins if len(ins) > 1 else ins[0]
        y = layer(args, training=True)
        start = time.perf_counter()
        for _ in range(repeats):
            y = layer(args, training=True)
        _ = np.asarray(tf.nest.flatten(y)[0]).ravel()[:1]
        out.append((layer.name, type(layer).__name__, (time.perf_counter() - start) / repeats))
        for t, v in zip(tf.nest.flatten(node.output_tensors), tf.nest.flatten(y)):
            cache[t.ref()] = v
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round (short rounds: load changes "
                                                        "hit all models alike)")
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from pipeline.data import load_dataset
    from pipeline.train import Recipe, compile_model, one_hot, set_batch_norm_momentum
    from tflite_export.quantization import quantize_scope

    machine = _common.machine()  # load average before the measurement
    keras.utils.set_random_seed(0)
    data = load_dataset("synthetic", image_size=args.image_size, batch_size=args.batch_size, seed=0,
                        cache_dir=os.path.join(_common.CACHE, "synthetic"), synthetic_size=(4000, 200))
    num_classes = len(data.class_names)
    train = one_hot(data.train, num_classes).repeat()
    models = make_models(args.image_size, num_classes)
    steps_per_epoch = -(-data.num_train // args.batch_size)
    recipe = Recipe(learning_rate=0.1)
    functions, iterators, params = {}, {}, {}
    with quantize_scope():
        for name, model in models.items():
            set_batch_norm_momentum(model, 0.99)
            compile_model(model, recipe, steps_per_epoch, epochs=12)
            functions[name] = model.make_train_function()
            iterators[name] = iter(train)
            params[name] = model.count_params()
            for _ in range(args.warmup_steps):  # tracing + first steps
                logs = functions[name](iterators[name])
            float(logs["loss"])

        names = list(models)
        rates = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, it = functions[name], iterators[name]
                start = time.perf_counter()
                for _ in range(args.steps):
                    logs = fn(it)
                float(logs["loss"])  # wait for the last step
                rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
            if (r + 1) % 10 == 0:
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f} img/s" for n in names),
                      flush=True)

    med = {n: float(np.median(rates[n])) for n in names}
    def ratio(a, b):
        return float(np.median(np.array(rates[a]) / np.array(rates[b])))
    # Pooled: all images over all timed seconds (rates are per round with equal image counts -> harmonic mean).
    pooled = {n: float(len(rates[n]) / np.sum(1.0 / np.array(rates[n]))) for n in names}
    rows = [[n, f"{params[n]:,}", f"{med[n]:.0f}", f"{pooled[n]:.0f}",
             f"{np.percentile(rates[n], 10):.0f}-{np.percentile(rates[n], 90):.0f}"]
            for n in names]
    print(f"\nTraining throughput, V3-Small 1.0 at {args.image_size} px, batch {args.batch_size}, {num_classes} "
          "classes, "
          f"{args.rounds} alternating rounds x {args.steps} steps")
    print(_common.table(["model", "params", "median img/s (rounds)", "pooled img/s", "p10-p90 img/s"], rows))
    r_apps = ratio("ours", "keras.apps")
    r_qat = ratio("ours", "ours QAT")
    print(_common.table(["ratio (median of per-round ratios)", "value", "target"], [
        ["ours / keras.apps (img/s)", f"{r_apps:.3f} (pooled {pooled['ours'] / pooled['keras.apps']:.3f})", ">= 1.0"],
        ["QAT step time / float step time (ours)", f"{r_qat:.2f}x (pooled {pooled['ours'] / pooled['ours QAT']:.2f}x)",
         "-"],
    ]))
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}, "
          f"{machine['date']}")
    result = {"machine": machine, "revision": _common.git_revision(), "command": _common.command_line(),
              "config": vars(args), "params": params, "rates_img_s": rates, "median_img_s": med, "pooled_img_s": pooled,
              "ratio_ours_vs_keras_apps": r_apps, "qat_step_cost_vs_float": r_qat}
    if r_apps < 1.0:
        batch = next(iter(data.train))[0]
        costs = {}
        for name in ("ours", "keras.apps"):
            per_type: dict[str, float] = {}
            for _, kind, seconds in layer_times(models[name], batch):
                per_type[kind] = per_type.get(kind, 0.0) + seconds
            costs[name] = per_type
        kinds = sorted(set(costs["ours"]) | set(costs["keras.apps"]),
                       key=lambda k: -abs(costs["ours"].get(k, 0) - costs["keras.apps"].get(k, 0)))
        print("\nours is slower: eager forward time per layer type (ms per batch, rough), largest differences first")
        print(_common.table(["layer type", "ours ms", "keras.apps ms", "diff ms"], [
            [k, f"{1e3 * costs['ours'].get(k, 0):.2f}", f"{1e3 * costs['keras.apps'].get(k, 0):.2f}",
             f"{1e3 * (costs['ours'].get(k, 0) - costs['keras.apps'].get(k, 0)):+.2f}"] for k in kinds[:12]]))
        result["layer_type_forward_s"] = costs
    _common.write_json(args.json, result)


if __name__ == "__main__":
    main()
