"""The search: each iteration, every width group proposes the widest width that saves `--delta_ratio` of the current
latency (pipeline.netadapt.latency); each proposal inherits the current weights (pipeline.netadapt.widths), is
fine-tuned `--finetune_steps` steps (Adam, cosine; BatchNorm frozen when the run was trained with the transfer recipe,
as that recipe does) and scored on a fixed, seeded subset of the training images (evaluation preprocessing; the test
split is never used by the search). The pick: max (accuracy change) / |latency change| (the paper's rule). The state
is saved after every iteration (a rerun resumes).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

import keras_models
from keras_models.backend import keras, tf
from keras_models.mobilenet_v3 import ArchTable
from pipeline.data import load_dataset
from pipeline.netadapt.config import NetAdaptConfig, StartRun, settings_record
from pipeline.netadapt.latency import LatencyMeter, Proposal, propose_widths
from pipeline.netadapt.widths import build, cut_model, recalibrate_batch_norm
from pipeline.schema import SchemaError, from_json_dict, read_json
from pipeline.train import (
    Recipe,
    auto_batch_norm_momentum,
    check_same_settings,
    compile_model,
    one_hot,
    set_batch_norm_momentum,
)
from pipeline.transfer import unfreeze_all_but_batch_norm
from tflite_export import preprocessing
from tflite_export.cli import progress
from tflite_export.files import atomic_write_json
from tflite_export.quantization import quantize_scope

STATE_FILE = "state.json"
# The target only says where the search stops: a resumed search may be given another one (it goes on past the old
# target, or stops at the new one). Every other setting shaped the iterations already made.
TARGET_KEYS = ("target_ms", "target_ratio", "target_alpha")
SEARCH_KEYS = ("run_dir", "dataset", "image_size", "batch_size", "seed", "delta_ratio", "finetune_steps",
               "start_steps", "learning_rate", "weight_decay", "dropout", "holdout_images", "freeze_batch_norm")
# Recorded since a later version: a state written before them is resumed without comparing them.
LATER_SEARCH_KEYS = ("weight_decay", "dropout")


def holdout_set(data, size: int, batch_size: int, seed: int) -> tuple[tf.data.Dataset, str]:
    """A fixed, seeded subset of `size` training images, evaluation-preprocessed, that proposals are scored on (the
    test split stays untouched by the search). Data sets without a file list (synthetic, TFDS) use the first `size`
    images of their evaluation split instead; the second value says which."""
    if not data.train_files:
        return data.eval.unbatch().take(size).batch(batch_size), f"the first {size} evaluation images"
    root = os.path.commonpath(data.train_files)
    label_of = {name: i for i, name in enumerate(data.class_names)}
    order = np.random.default_rng(seed).permutation(len(data.train_files))[:size]
    paths = [data.train_files[i] for i in order]
    labels = [label_of[os.path.relpath(p, root).split(os.sep)[0]] for p in paths]
    ds = tf.data.Dataset.from_tensor_slices((paths, np.array(labels, np.int32))).map(
        lambda p, y: (preprocessing.eval_resize(preprocessing.decode_rgb(tf.io.read_file(p)), data.image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.cache().batch(batch_size).prefetch(tf.data.AUTOTUNE), f"{len(paths)} training images (seed {seed})"


def evaluate(model: keras.Model, batches: tf.data.Dataset) -> float:
    correct = total = 0
    for images, labels in batches:
        predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(predictions == tf.cast(labels, tf.int32), tf.int32)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def prepare_batch_norm(model: keras.Model, steps: int, frozen: bool) -> None:
    """BatchNorm for a fine-tune of `steps` steps: frozen at its moving statistics when the start model was trained
    that way (the transfer recipe, whose weights come from a quantized file with BatchNorm folded into the kernels:
    batch statistics would rescale every channel; measured on the CIFAR-10 start at 64 px: held-out top-1 0.60 before,
    0.43 after 200 steps with BatchNorm training, 0.73 with it frozen), else training with a momentum suited to the
    step count."""
    if frozen:
        unfreeze_all_but_batch_norm(model)
    else:
        set_batch_norm_momentum(model, auto_batch_norm_momentum(steps))


def short_finetune(model: keras.Model, train: tf.data.Dataset, steps: int, recipe,
                   freeze_batch_norm: bool = False) -> None:
    """`steps` steps of the search's fine-tune (one cosine cycle, no warm-up); `train` yields one-hot batches."""
    if steps <= 0:
        return
    prepare_batch_norm(model, steps, freeze_batch_norm)
    compile_model(model, recipe, steps, 1)
    model.fit(train.repeat().take(steps), epochs=1, steps_per_epoch=steps, verbose=0)


def pick(proposals: list[Proposal], current_acc: float, current_ms: float) -> Proposal:
    """The paper's rule: the largest accuracy change per latency saved, (acc - acc_now) / |lat - lat_now|."""
    return max(proposals, key=lambda p: (p.accuracy - current_acc) / max(abs(current_ms - p.latency_ms), 1e-9))


@dataclasses.dataclass
class Snapshot:
    """The model after an iteration (0: the start)."""

    iteration: int
    arch: dict  # ArchTable.to_json()
    weights: str  # file name in the output directory
    accuracy: float  # held-out float top-1 after its short fine-tune
    latency_ms: float  # measured when it was picked
    ratio_to_start: float  # measured side by side with the start model
    search_steps: int  # fine-tune steps these weights have had since the start (T per iteration)


@dataclasses.dataclass
class SearchState:
    """Everything a rerun needs to continue after the last finished iteration (written atomically)."""

    settings: dict
    start_ms: float
    target_ratio: float
    target_note: str
    snapshots: list[Snapshot]
    history: list[dict]  # per iteration: proposals, their latency and accuracy, the choice
    slopes: dict[str, float]
    seconds: float = 0.0

    def done(self, max_iterations: int) -> bool:
        return self.snapshots[-1].ratio_to_start <= self.target_ratio or len(self.snapshots) > max_iterations

    @classmethod
    def load(cls, path: str) -> SearchState:
        """The state in `path`; a file that is not one (a field missing, of the wrong kind, not JSON) is a one-line
        ValueError naming it."""
        advice = "delete it to start the search over, or pass another --output_dir"
        try:
            state = from_json_dict(cls, read_json(path))
            missing = [key for key in SEARCH_KEYS + TARGET_KEYS
                       if key not in state.settings and key not in LATER_SEARCH_KEYS]
            if missing:
                raise SchemaError(f"its settings lack {missing}")
            if not state.snapshots or not all(isinstance(snap, Snapshot) for snap in state.snapshots):
                raise SchemaError("it has no snapshots")
        except (SchemaError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a NetAdapt state this version can resume ({err}): {advice}") from None
        return state

    def save(self, path: str) -> None:
        atomic_write_json(path, dataclasses.asdict(self))


def _save_weights(model: keras.Model, path: str) -> None:
    tmp = path + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


class Context:
    """The run being shrunk: its settings, data and start model."""

    def __init__(self, config: NetAdaptConfig, start: StartRun):
        self.config, self.start = config, start
        self.out = config.output_dir
        os.makedirs(self.out, exist_ok=True)
        keras.utils.set_random_seed(config.seed)
        self.data = load_dataset(config.dataset, image_size=config.image_size, batch_size=config.batch_size,
                                 seed=config.seed)
        self.classes = self.data.class_names
        if len(self.classes) != start.num_classes:
            raise ValueError(f"{config.dataset} has {len(self.classes)} classes, the run's model {start.num_classes}")
        self.train = one_hot(self.data.train, len(self.classes))
        # One augmented training batch re-estimates the BatchNorm statistics of cuts exported for latency.
        self.bn_images = next(iter(self.data.train.take(1)))[0]
        self.holdout, self.holdout_note = holdout_set(self.data, config.holdout_images, config.batch_size, config.seed)
        self.recipe = Recipe(learning_rate=config.learning_rate, warmup_epochs=0, weight_decay=config.weight_decay,
                             optimizer="adam")
        self.variant = keras_models.canonical_variant(start.variant)
        self.start_arch = ArchTable.paper(self.variant, start.alpha, start.minimalistic)
        self.meter = LatencyMeter(os.path.join(self.out, "latency_cache"), config.image_size, len(self.classes),
                                  lambda: self.data.representative(config.latency_calibration_images),
                                  runs=config.latency_runs)

    def build(self, arch: ArchTable) -> keras.Model:
        return build(arch, self.config.image_size, len(self.classes), self.config.dropout)

    def latency_file(self, arch: ArchTable, new_arch: ArchTable, model: keras.Model) -> str:
        """The int8 file of `new_arch`, cut from `model` (of `arch`) with its BatchNorms recalibrated."""
        if not os.path.exists(self.meter.path(new_arch)):
            cut = cut_model(model, arch, new_arch, self.config.image_size, len(self.classes))
            recalibrate_batch_norm(cut, self.bn_images)
            if self.meter.export(new_arch, cut) is None:
                raise ValueError(f"the int8 file of {new_arch.key()} has collapsed activation ranges: cannot time it")
        return self.meter.path(new_arch)

    def load(self, snapshot: Snapshot) -> tuple[ArchTable, keras.Model]:
        arch = ArchTable.from_json(snapshot.arch)
        model = self.build(arch)
        model.load_weights(os.path.join(self.out, snapshot.weights))
        return arch, model

    def start_model(self) -> keras.Model:
        """The run's float model rebuilt at --image_size (weights do not depend on the input size)."""
        with quantize_scope():
            trained = keras.models.load_model(self.start.float_model, compile=False)
        model = self.build(self.start_arch)
        model.set_weights(trained.get_weights())
        return model


def start_search(ctx: Context, log) -> SearchState:
    """Iteration 0: the start model (fine-tuned --start_steps at the new resolution), its latency, the target."""
    config = ctx.config
    model = ctx.start_model()
    short_finetune(model, ctx.train, config.start_steps, ctx.recipe, ctx.start.freeze_batch_norm)
    accuracy = evaluate(model, ctx.holdout)
    _save_weights(model, os.path.join(ctx.out, "iter0.weights.h5"))
    start_path = ctx.meter.export(ctx.start_arch, model)
    if start_path is None:
        raise ValueError("the start model's int8 file has collapsed activation ranges: it cannot be timed")
    start_ms, target_ratio, note = measure_target(ctx, model, start_path)
    log(f"start: {ctx.start_arch.model_type} alpha {ctx.start.alpha:g} at {config.image_size} px, {start_ms:.3f} ms, "
        f"held-out top-1 {accuracy:.4f}; target {note} = {target_ratio:.3f} x start ({target_ratio * start_ms:.3f} ms)")
    return SearchState(settings=state_settings(config, ctx.start), start_ms=start_ms, target_ratio=target_ratio,
                       target_note=note, history=[], slopes={},
                       snapshots=[Snapshot(0, ctx.start_arch.to_json(), "iter0.weights.h5", accuracy, start_ms, 1.0,
                                           0)])


def measure_target(ctx: Context, start_model: keras.Model, start_path: str) -> tuple[float, float, str]:
    """The start model's latency, and the target as a fraction of it with its description."""
    config = ctx.config
    if config.target_alpha:
        alpha_arch = ArchTable.paper(ctx.variant, config.target_alpha, ctx.start.minimalistic)
        alpha_path = ctx.latency_file(ctx.start_arch, alpha_arch, start_model)
        start_ms, alpha_ms = ctx.meter.time([start_path, alpha_path])
        return start_ms, alpha_ms / start_ms, f"alpha {config.target_alpha:g}'s latency"
    (start_ms,) = ctx.meter.time([start_path])
    if config.target_ms:
        return start_ms, config.target_ms / start_ms, f"{config.target_ms:g} ms"
    return start_ms, config.target_ratio, f"{config.target_ratio:g} x the start"


def state_settings(config: NetAdaptConfig, start: StartRun) -> dict:
    """The settings a search records in its state file (the final stage's may differ)."""
    record = settings_record(config, start)
    return {key: record[key] for key in SEARCH_KEYS + TARGET_KEYS}


def resumable_state(config: NetAdaptConfig, start: StartRun) -> SearchState | None:
    """The search state in --output_dir, checked against the settings before any data is loaded; None for a new
    search. Another setting than the one the iterations were made with is a one-line refusal (the target may
    change)."""
    state_path = os.path.join(config.output_dir, STATE_FILE)
    if not os.path.exists(state_path):
        return None
    state = SearchState.load(state_path)
    settings = settings_record(config, start)
    recorded = {**{key: settings[key] for key in LATER_SEARCH_KEYS}, **state.settings}
    check_same_settings(state_path, {key: settings[key] for key in SEARCH_KEYS}, "a search made", config.output_dir,
                        recorded=recorded)
    return state


def retarget(ctx: Context, state: SearchState, log) -> None:
    """A resumed search given another target than the one recorded: measure it, and go on towards it."""
    old = state.target_note
    _, start_model = ctx.load(state.snapshots[0])
    start_path = ctx.meter.export(ctx.start_arch, start_model)
    _, state.target_ratio, state.target_note = measure_target(ctx, start_model, start_path)
    state.settings.update({key: getattr(ctx.config, key) for key in TARGET_KEYS})
    log(f"\n(new target: {state.target_note} = {state.target_ratio:.3f} x start; it was {old})")


def iterate(ctx: Context, state: SearchState, log) -> None:
    """One NetAdapt iteration: proposals, short fine-tunes, the pick; updates `state`."""
    config, freeze_batch_norm = ctx.config, ctx.start.freeze_batch_norm
    current = state.snapshots[-1]
    arch, model = ctx.load(current)
    started = time.perf_counter()
    iteration = current.iteration + 1
    log(f"\n## iteration {iteration}: from {current.latency_ms:.3f} ms "
        f"({current.ratio_to_start:.3f} x start), held-out top-1 {current.accuracy:.4f}")
    proposals, current_ms, _ = propose_widths(arch, model, ctx.meter, ctx.bn_images, delta_ratio=config.delta_ratio,
                                              slopes=state.slopes, rounds=config.latency_rounds, log=log)
    if not proposals:
        raise ValueError(f"target not met: at {current.ratio_to_start:.3f} x the start latency (target "
                         f"{state.target_ratio:.3f}), no width group can cut {config.delta_ratio:g} x the latency any "
                         "more: lower --delta_ratio, or set a target it can reach")
    # The paper's rule picks from (accuracy, latency) alone, so the best proposal so far is kept as it comes.
    weights = f"iter{iteration}.weights.h5"
    best_path = os.path.join(ctx.out, f"iter{iteration}.best.weights.h5")
    chosen = None
    for p in progress(proposals, desc=f"iteration {iteration}: fine-tuning proposals", unit="model"):
        keras.utils.set_random_seed(config.seed + iteration)  # every proposal sees the same batches
        candidate = cut_model(model, arch, p.arch, config.image_size, len(ctx.classes))
        short_finetune(candidate, ctx.train, config.finetune_steps, ctx.recipe, freeze_batch_norm)
        p.accuracy = evaluate(candidate, ctx.holdout)
        if pick([p] + ([chosen] if chosen else []), current.accuracy, current_ms) is p:
            chosen = p
            _save_weights(candidate, best_path)
        del candidate
    log("\n| group | width | latency (ms) | x current | held-out top-1 | d-acc / d-lat (1/ms) |\n"
        "|---|---|---|---|---|---|")
    for p in sorted(proposals, key=lambda p: p.latency_ms):
        score = (p.accuracy - current.accuracy) / max(abs(current_ms - p.latency_ms), 1e-9)
        log(f"| {p.group}{' **chosen**' if p is chosen else ''} | {p.old_width} -> {p.width} | {p.latency_ms:.3f} | "
            f"{p.ratio:.3f} | {p.accuracy:.4f} | {score:+.4f} |")
    start_ms, chosen_ms = ctx.meter.time([ctx.meter.path(ctx.start_arch), ctx.meter.path(chosen.arch)])
    os.replace(best_path, os.path.join(ctx.out, weights))
    snapshot = Snapshot(iteration, chosen.arch.to_json(), weights, chosen.accuracy, chosen.latency_ms,
                        chosen_ms / start_ms, current.search_steps + config.finetune_steps)
    log(f"\nchosen: {chosen.group} {chosen.old_width} -> {chosen.width}; {chosen_ms / start_ms:.3f} x start "
        f"(side by side: {chosen_ms:.3f} vs {start_ms:.3f} ms), held-out top-1 {chosen.accuracy:.4f} "
        f"({time.perf_counter() - started:.0f} s)")
    state.history.append({"iteration": iteration, "current_ms": current_ms, "current_accuracy": current.accuracy,
                          "proposals": [p.as_json() for p in proposals], "chosen": chosen.group,
                          "seconds": time.perf_counter() - started})
    state.snapshots.append(snapshot)
    state.seconds += time.perf_counter() - started
    keras.backend.clear_session()

