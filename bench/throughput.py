"""Training throughput: our MobileNetV3-Small vs keras.applications.MobileNetV3Small, QAT step cost, and the effect
of each speed setting tried for issue #17, side by side.

    nice -n 10 python -m bench.throughput [--image_size 64] [--batch_size 64] [--rounds 40] [--steps 3]
        [--variants all|NAME,NAME] [--process_configs "default;inter=1;intra=1;onednn=0"] [--json OUT]

Same data pipeline (pipeline.data synthetic set: cached images -> seeded augmentation -> batches, one-hot labels),
same recipe (pipeline.train.Recipe via compile_model: SGD Nesterov, warm-up + cosine, label smoothing, weight
decay), same BatchNorm momentum (0.99), same loop: the compiled Keras train function that `model.fit` runs each step,
fed from one persistent iterator per model. Models (all V3-Small 1.0, the synthetic set's 8 classes, dropout 0.2,
raw [0,255] input) and variants (VARIANTS below):
  ours                          keras_models.build("small"), compiled as the pipeline compiles (project defaults)
  keras.apps                    tf_keras.applications.MobileNetV3Small(weights=None, include_preprocessing=True),
                                compiled with Keras' own optimizer (what a keras.applications user trains with)
  ours QAT                      pipeline.qat.prepare_qat_model(ours), project defaults
  ... plus one row per setting that differs from the defaults (Keras' optimizer loop, steps_per_execution, ...)
After a warm-up (tracing + a few steps), rounds alternate the variants (order rotated each round); each round times
`--steps` steps of every variant. Reported: median images/s over rounds, and ratios (median of per-round ratios).

Process-wide settings (TensorFlow's intra-/inter-op thread pools, oneDNN) cannot differ inside one process:
`--process_configs` runs this script again in a child process per configuration (ours vs keras.apps in each, so each
child's ratio is side by side) and tabulates them; children run one after the other, so their absolute rates are
only as comparable as the machine's load allows (the load average is recorded for each).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import keras, tf
from tflite_export.command import Command, run_command, setting


@dataclasses.dataclass(frozen=True)
class Variant:
    model: str  # "ours", "keras.apps" or "ours QAT"
    fused_update: bool = True  # pipeline.train's one compiled optimizer update (False: Keras' per-variable ops)
    steps_per_execution: int = 1  # Keras compile argument: steps per call of the train function


VARIANTS = {
    "ours": Variant("ours"),
    "keras.apps": Variant("keras.apps", fused_update=False),
    "ours QAT": Variant("ours QAT"),
    "ours + Keras optimizer (before #17)": Variant("ours", fused_update=False),
    "keras.apps + fused update": Variant("keras.apps"),
    "ours QAT + Keras optimizer (before #17)": Variant("ours QAT", fused_update=False),
    "ours + steps_per_execution 4": Variant("ours", steps_per_execution=4),
}
BASIC = ("ours", "keras.apps", "ours QAT")


def build_model(kind: str, size: int, num_classes: int, calibration=()):
    """One model of the comparison; "ours QAT" is the QAT model as the pipeline's QAT step starts it, its ranges
    calibrated on the `calibration` image batches (a step costs the same whatever the ranges)."""
    import keras_models
    from pipeline.qat import prepare_qat_model

    if kind == "keras.apps":
        return keras.applications.MobileNetV3Small(input_shape=(size, size, 3), alpha=1.0, weights=None,
                                                   classes=num_classes, dropout_rate=0.2, include_preprocessing=True)
    model = keras_models.build("small", input_shape=(size, size, 3), alpha=1.0, num_classes=num_classes, dropout=0.2)
    return prepare_qat_model(model, calibration)[0] if kind == "ours QAT" else model


@dataclasses.dataclass
class Entry:
    variant: Variant
    model: keras.Model
    train_function: object  # the compiled Keras train function (what model.fit calls per step)
    iterator: object
    params: int
    first_call_cpu_s: float  # CPU seconds of the first train-function call: tracing, graph building, XLA compiling


@dataclasses.dataclass
class Setup:
    entries: dict[str, Entry]
    train: tf.data.Dataset  # repeated, one-hot labels
    steps_per_epoch: int
    num_classes: int

    def iterator_of_batches(self):
        return iter(self.train)


def compiled_models(size: int, batch_size: int, variants=BASIC, warmup_steps: int = 5) -> Setup:
    """The synthetic training set and each variant built, compiled and warmed up (call within quantize_scope)."""
    from pipeline.data import load_dataset
    from pipeline.train import Recipe, compile_model, one_hot, set_batch_norm_momentum
    from tflite_export.quantization import quantize_scope

    keras.utils.set_random_seed(0)
    data = load_dataset("synthetic", image_size=size, batch_size=batch_size, seed=0,
                        cache_dir=os.path.join(_common.CACHE, "synthetic"), synthetic_size=(4000, 200))
    num_classes = len(data.class_names)
    train = one_hot(data.train, num_classes).repeat()
    steps_per_epoch = -(-data.num_train // batch_size)
    recipe = Recipe(learning_rate=0.1)
    calibration = [images for images, _ in data.train.take(2)]  # the QAT model's ranges (build_model)
    entries = {}
    with quantize_scope():
        for name in variants:
            variant = VARIANTS[name]
            model = build_model(variant.model, size, num_classes, calibration)
            set_batch_norm_momentum(model, 0.99)
            compile_model(model, recipe, steps_per_epoch, epochs=12, fused_update=variant.fused_update,
                          steps_per_execution=variant.steps_per_execution)
            fn, it = model.make_train_function(), iter(train)
            started = time.process_time()
            float(fn(it)["loss"])
            first_call = time.process_time() - started
            for _ in range(warmup_steps):  # first steps after tracing
                logs = fn(it)
            float(logs["loss"])
            entries[name] = Entry(variant, model, fn, it, model.count_params(), first_call)
    return Setup(entries, train, steps_per_epoch, num_classes)


def time_rounds(setup: Setup, names, rounds: int, steps: int, batch_size: int) -> tuple[dict, dict]:
    """Per round and variant: images per wall second and images per CPU second of this process (all its threads).

    Rounds rotate the order so load changes hit every variant alike. On a shared machine the CPU-time rate is the
    steadier of the two: a step that waits for a core does not use CPU time meanwhile."""
    rates = {n: [] for n in names}
    cpu_rates = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            entry = setup.entries[name]
            per_call = entry.variant.steps_per_execution
            calls = -(-steps // per_call)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                logs = entry.train_function(entry.iterator)
            float(logs["loss"])  # wait for the last step
            images = calls * per_call * batch_size
            rates[name].append(images / (time.perf_counter() - start))
            cpu_rates[name].append(images / (time.process_time() - start_cpu))
        if (r + 1) % 10 == 0:
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names) + " img/s",
                  flush=True)
    return rates, cpu_rates


def parse_process_configs(text: str) -> list[dict]:
    """"default;inter=1;intra=1,inter=2;onednn=0" -> [{}, {"inter": 1}, {"intra": 1, "inter": 2}, {"onednn": 0}]."""
    configs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        config = {}
        if part != "default":
            for item in part.split(","):
                key, _, value = item.partition("=")
                if key not in ("intra", "inter", "onednn") or not value.isdigit():
                    raise ValueError(f"--process_configs item {item!r}: expected intra=N, inter=N or onednn=0|1")
                config[key] = int(value)
        configs.append(config)
    return configs


def run_process_configs(configs: list[dict], options: Options) -> list[dict]:
    """This script in a child process per configuration (ours vs keras.apps); returns each child's JSON result."""
    results = []
    for config in configs:
        env = dict(os.environ)
        if "onednn" in config:
            env["TF_ENABLE_ONEDNN_OPTS"] = str(config["onednn"])
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, "-m", "bench.throughput", "--variants", "ours,keras.apps", "--process_configs", "",
                   "--rounds", str(options.process_rounds), "--steps", str(options.steps),
                   "--image_size", str(options.image_size), "--batch_size", str(options.batch_size),
                   "--json", out.name]
            cmd += [f"--{key}={config[key]}" for key in ("intra", "inter") if key in config]
            print("child:", " ".join(f"{k}={v}" for k, v in config.items()) or "default", flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=_common.REPO, stdout=subprocess.DEVNULL)
            with open(out.name) as f:
                results.append({**json.load(f), "process_config": config})  # the child's own "config" is its args
    return results


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.throughput`."""

    image_size: int = setting(64, "Input resolution.")
    batch_size: int = setting(64, "Training batch size.")
    rounds: int = setting(40, "Alternating rounds.")
    steps: int = setting(3, "Timed steps per variant per round (short rounds: load changes hit all variants alike).")
    warmup_steps: int = setting(5, "Untimed steps per variant first.")
    variants: str = setting("all", "'all' or a comma-separated list of: " + ", ".join(VARIANTS))
    process_configs: str = setting("default;inter=1;intra=1;onednn=0", "';'-separated child-process configurations "
                                   "(intra=N, inter=N, onednn=0|1); '' for none.")
    process_rounds: int = setting(20, "Rounds of the child-process configurations.")
    intra: int | None = setting(None, "tf.config.threading intra-op threads (default: TF's).")
    inter: int | None = setting(None, "tf.config.threading inter-op threads (default: TF's).")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def throughput(options: Options, args: list[str]) -> None:
    names = list(VARIANTS) if options.variants == "all" else [n.strip() for n in options.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown --variants {unknown}; known: {', '.join(VARIANTS)}")
    configs = parse_process_configs(options.process_configs)
    if options.intra is not None:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra)
    if options.inter is not None:
        tf.config.threading.set_inter_op_parallelism_threads(options.inter)

    machine = _common.machine()  # load average before the measurement
    setup = compiled_models(options.image_size, options.batch_size, names, options.warmup_steps)
    rates, cpu_rates = time_rounds(setup, names, options.rounds, options.steps, options.batch_size)
    params = {n: setup.entries[n].params for n in names}
    med = {n: float(np.median(rates[n])) for n in names}
    # Pooled: all images over all timed seconds (rates are per round with equal image counts -> harmonic mean).
    pooled = {n: float(len(rates[n]) / np.sum(1.0 / np.array(rates[n]))) for n in names}

    cpu_med = {n: float(np.median(cpu_rates[n])) for n in names}

    def ratio(a, b, of=rates):
        return float(np.median(np.array(of[a]) / np.array(of[b])))

    print(f"\nTraining throughput, V3-Small 1.0 at {options.image_size} px, batch {options.batch_size}, "
          f"{setup.num_classes} classes, {options.rounds} alternating rounds x {options.steps} steps")
    print(_common.table(
        ["variant", "params", "median img/s (rounds)", "pooled img/s", "p10-p90 img/s", "img per CPU-second",
         "first call, CPU s"],
        [[n, f"{params[n]:,}", f"{med[n]:.0f}", f"{pooled[n]:.0f}",
          f"{np.percentile(rates[n], 10):.0f}-{np.percentile(rates[n], 90):.0f}", f"{cpu_med[n]:.0f}",
          f"{setup.entries[n].first_call_cpu_s:.1f}"] for n in names]))
    comparisons = [  # (label, numerator, denominator, target)
        ("ours / keras.apps (img/s)", "ours", "keras.apps", ">= 1.5 (issue #17)"),
        ("ours / keras.apps with the same fused update (the models alone)", "ours", "keras.apps + fused update", "-"),
        ("ours / ours with Keras' optimizer (what the fused update gives)", "ours",
         "ours + Keras optimizer (before #17)", "-"),
        ("steps_per_execution 4 / 1 (ours)", "ours + steps_per_execution 4", "ours", "-"),
        ("QAT step time / float step time (ours)", "ours", "ours QAT", "-"),
        ("ours QAT / ours QAT with Keras' optimizer", "ours QAT", "ours QAT + Keras optimizer (before #17)", "-"),
    ]
    ratios = {label: (ratio(a, b), pooled[a] / pooled[b], ratio(a, b, cpu_rates))
              for label, a, b, _ in comparisons if a in rates and b in rates}
    print(_common.table(["ratio (median of per-round ratios)", "wall img/s", "img per CPU-second", "target"], [
        [label, f"{ratios[label][0]:.3f} (pooled {ratios[label][1]:.3f})", f"{ratios[label][2]:.3f}", target]
        for label, _, _, target in comparisons if label in ratios]))
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, TF threads intra "
          f"{tf.config.threading.get_intra_op_parallelism_threads()} inter "
          f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF's default), oneDNN "
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default (on)')}, load average at start "
          f"{machine.get('loadavg_at_start')}, end {os.getloadavg()}, {machine['date']}")
    result = {"machine": machine, "revision": _common.git_revision(), "command": _common.command_line(),
              "config": dataclasses.asdict(options), "loadavg_at_end": os.getloadavg(), "params": params,
              "rates_img_s": rates,
              "median_img_s": med, "pooled_img_s": pooled, "cpu_rates_img_per_cpu_s": cpu_rates,
              "median_img_per_cpu_s": cpu_med, "ratios": ratios,
              "first_call_cpu_s": {n: setup.entries[n].first_call_cpu_s for n in names}}

    if configs:
        children = run_process_configs(configs, options)
        rows = []
        for child in children:
            cmed = child["median_img_s"]
            rows.append([" ".join(f"{k}={v}" for k, v in child["process_config"].items())
                         or "default (TF's pools, oneDNN on)",
                         f"{cmed['ours']:.0f}", f"{cmed['keras.apps']:.0f}",
                         f"{child['median_img_per_cpu_s']['ours']:.0f}",
                         f"{child['ratios']['ours / keras.apps (img/s)'][0]:.3f}",
                         f"{child['machine'].get('loadavg_at_start', ['?'])[0]:.1f}-{child['loadavg_at_end'][0]:.1f}"])
        print(f"\nProcess-wide settings, one child process each ({options.process_rounds} rounds), in this order")
        print(_common.table(["configuration", "ours img/s", "keras.apps img/s", "ours img per CPU-s",
                             "ours / keras.apps",
                             "1-min load start-end"], rows))
        result["process_configs"] = children
    _common.write_json(options.json, result)


main = Command("bench.throughput", Options, throughput)

if __name__ == "__main__":
    run_command(main)
