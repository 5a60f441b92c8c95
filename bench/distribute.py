"""Training steps per second under tf.distribute strategies, side by side in one process (pipeline/distribute.py).

    nice -n 10 python -m bench.distribute [--image_size 64] [--batch_size 64] [--alpha 1.0] [--rounds 4] [--steps 5]

The CPU is split into two logical devices (`--cpu_replicas 2` of the pipeline) before TensorFlow starts, then the same
V3-Small float model and data (the pipeline's synthetic set, one-hot labels, the pipeline's recipe via
`compile_model`, global batch `--batch_size`) train under:
  default           one device (TensorFlow's default strategy), Keras' fused BatchNorm
  default sync-BN   one device, the unfused BatchNorm that --sync_batch_norm selects (its cost without replicas)
  mirrored          MirroredStrategy over the two logical CPUs, per-replica BatchNorm
  mirrored sync-BN  the same with --sync_batch_norm
Each configuration runs the compiled Keras train function that `model.fit` runs, fed by its own persistent
(distributed) iterator. After a warm-up (tracing + 2 steps), rounds alternate the configurations; each round times
`--steps` steps of each. Reported: median images/s over rounds and the ratio to `default` (median of per-round ratios).
Logical CPU devices share the same cores and thread pools, so this measures the strategy's overhead, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from keras_models import backend  # noqa: F401  (before TensorFlow)
from pipeline import distribute
from tflite_export.command import Command, run_command, setting

CONFIGS = ("default", "default sync-BN", "mirrored", "mirrored sync-BN")


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.distribute`."""

    image_size: int = setting(64, "Input resolution.")
    batch_size: int = setting(64, "Global batch size.")
    alpha: float = setting(1.0, "Width multiplier.")
    rounds: int = setting(4, "Alternating rounds.")
    steps: int = setting(5, "Timed steps per strategy and round.")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def measure(options: Options, args: list[str]) -> None:
    distribute.split_cpu(2)  # before anything starts TensorFlow's runtime

    import keras_models
    from bench import _common
    from keras_models.backend import keras, tf
    from pipeline.data import load_dataset
    from pipeline.train import Recipe, compile_model, one_hot

    machine = _common.machine()
    data = load_dataset("synthetic", image_size=options.image_size, batch_size=options.batch_size,
                        synthetic_size=(max(512, options.batch_size * 4), 8))
    train = one_hot(data.train, len(data.class_names)).repeat()
    mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    runs = {}
    for name in CONFIGS:
        strategy = mirrored if name.startswith("mirrored") else tf.distribute.get_strategy()
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras_models.build("small", input_shape=(options.image_size, options.image_size, 3),
                                       alpha=options.alpha, num_classes=len(data.class_names))
            if name.endswith("sync-BN"):
                distribute.synchronize_batch_norm(model)
            compile_model(model, Recipe(), steps_per_epoch=100, epochs=10)
            train_function = model.make_train_function()
        iterator = iter(strategy.experimental_distribute_dataset(train))
        started = time.perf_counter()
        for _ in range(3):  # tracing + 2 steps
            _ = {k: float(v) for k, v in train_function(iterator).items()}
        print(f"{name}: warm-up {time.perf_counter() - started:.1f} s", flush=True)
        runs[name] = (train_function, iterator)

    rates = {name: [] for name in CONFIGS}
    for r in range(options.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for name in order:
            train_function, iterator = runs[name]
            started = time.perf_counter()
            for _ in range(options.steps):
                logs = train_function(iterator)
            _ = {k: float(v) for k, v in logs.items()}  # waits for the last step
            rates[name].append(options.steps * options.batch_size / (time.perf_counter() - started))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f} img/s" for n in CONFIGS), flush=True)

    rows = []
    for name in CONFIGS:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["default"]))
        rows.append([name, f"{statistics.median(rates[name]):.0f}", f"{ratio:.2f}x"])
    print(f"\nV3-Small {options.alpha:g} at {options.image_size} px, global batch {options.batch_size}, "
          f"{options.rounds} rounds x {options.steps} steps; CPU {machine['cpu']} ({machine['nproc']} cores, ISA "
          f"{machine['isa']}), load average at start {machine.get('loadavg_at_start')}, revision "
          f"{_common.git_revision()}, {machine['date']}")
    print(_common.table(["configuration", "images/s (median)", "vs default"], rows))
    _common.write_json(options.json, {"args": dataclasses.asdict(options), "machine": machine, "images_per_s": rates})


main = Command("bench.distribute", Options, measure)

if __name__ == "__main__":
    run_command(main)
