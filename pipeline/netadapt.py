"""NetAdapt (Yang et al., 2018) with latency measured by LiteRT: shrink a trained MobileNetV3 layer by layer until its
int8 model meets a latency target on this machine.

    python -m pipeline.netadapt --run_dir runs/small-photos --target_ratio 0.6 --output_dir runs/small-photos-netadapt
    python -m pipeline.netadapt --run_dir RUN --target_alpha 0.5 --alphas 0.75,0.5     # as fast as alpha 0.5, compared

Each iteration, for every width group (the stem; each bneck's expansion; the output width of each chain of
residual-connected bnecks, which must stay equal; the last stage's two 1x1 convs) the group's proposal is the widest
measured width, a multiple of 8, whose int8 model is at least `--delta_ratio` x the current latency faster than the
current model. Latency: every candidate is cut from the current model (BatchNorm statistics re-estimated on one
batch, so its int8 ranges are those of a trained model and XNNPACK takes the whole graph), exported to int8 TFLite by
the project's own converter (post-training calibration on a few training images) with lowered h-swish, and timed by
tflite_export.benchmark on 1 thread (XNNPACK), interleaved run by run with the current model (a pair at a time); a
candidate's latency is its ratio to the current model's (files are cached by architecture). The width to try is
guessed from a slope (the group's share of the multiply-adds at first, then its last measured saving per channel) and
corrected by measurement, at most `--latency_rounds` rounds; a group whose narrowest width is estimated to save less
than half of delta is not measured.

Each proposal inherits the current weights (filter importance: the L1 norm of each output filter with its BatchNorm
folded in, the filter as the int8 file holds it, summed over the convs that write the group's channels; the kept
channels' depthwise, squeeze-and-excite and projection slices go with them; the SE width follows 1/4 of the expansion,
keeping its largest-L1 filters), is fine-tuned `--finetune_steps` steps (Adam, cosine; BatchNorm frozen when the
run was trained with the transfer recipe, as that recipe does) and scored on a fixed, seeded subset of the training
images (evaluation preprocessing; the test split is never used by the search). The pick: max (accuracy change) /
|latency change| (the paper's rule). The state is saved after every iteration (rerun the same command to resume).

At the end, the chosen models (the last one, and with --alphas the first one at or below each alpha model's latency)
get a long fine-tune, quantization-aware training and an int8 export through the pipeline's own stages
(pipeline.train, pipeline.qat, tflite_export.export); the alpha models are cut from the same start by the same
importance criterion and given the same number of training steps. The report ranks them all by the MnasNet reward.
Outputs in --output_dir: arch.json (the final table; keras_models.build(arch=...) accepts it), search_log.md,
netadapt.png, report.json, candidates/<name>/model.tflite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags, logging

from keras_models.backend import keras, tf
from keras_models.mobilenet_v3 import ArchTable

FLAGS = flags.FLAGS
MIN_WIDTH = 8  # widths are multiples of 8, as make_divisible gives them
STATE_FILE = "state.json"
MNASNET_W = -0.07  # MnasNet's soft-constraint exponent; MobileNetV3-Small's search used -0.15


def mnasnet_reward(acc: float, lat: float, target: float, w: float = MNASNET_W) -> float:
    """MnasNet's objective ACC x (LAT / TAR)^w: with w < 0 a model slower than the target pays, a faster one gains."""
    if lat <= 0 or target <= 0:
        raise ValueError(f"latency and target must be > 0, got {lat} and {target}")
    return acc * (lat / target) ** w


# ------------------------------------------------------------------------------------------ width groups and weights


@dataclasses.dataclass(frozen=True)
class Group:
    """Widths that change together: `slots` are "stem", "exp<i>", "out<i>", "last_conv", "last_point"."""

    name: str
    slots: tuple[str, ...]


def _union_find(items):
    parent = {item: item for item in items}

    def find(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    return parent, find


def width_groups(arch: ArchTable) -> list[Group]:
    """The groups NetAdapt shrinks. The first bneck's expansion is the stem's width (it has no expand conv); residual
    connections tie a block's output to its input."""
    n = len(arch.blocks)
    outputs = ["stem"] + [f"out{i}" for i in range(n)]
    parent, find = _union_find(outputs)
    for i in range(n):
        if arch.residual(i):
            parent[find(f"out{i}")] = find(outputs[i])  # outputs[i] is block i's input
    chains: dict[str, list[str]] = {}
    for slot in outputs:
        chains.setdefault(find(slot), []).append(slot)
    groups = [Group("+".join(slots), tuple(slots)) for slots in chains.values()]
    groups += [Group(f"exp{i}", (f"exp{i}",)) for i in range(1, n)]
    groups += [Group("last_conv", ("last_conv",)), Group("last_point", ("last_point",))]
    return groups


def group_width(arch: ArchTable, group: Group) -> int:
    return _slot_width(arch, group.slots[0])


def _slot_width(arch: ArchTable, slot: str) -> int:
    if slot in ("stem", "last_conv", "last_point"):
        return getattr(arch, slot)
    index = int(slot[3:])
    return arch.blocks[index].exp if slot.startswith("exp") else arch.blocks[index].out


def with_width(arch: ArchTable, group: Group, width: int) -> ArchTable:
    """`arch` with every slot of `group` at `width` (the first bneck's expansion follows the stem)."""
    blocks = list(arch.blocks)
    changes = {}
    for slot in group.slots:
        if slot in ("stem", "last_conv", "last_point"):
            changes[slot] = width
            if slot == "stem":
                blocks[0] = blocks[0]._replace(exp=width)
        else:
            index = int(slot[3:])
            field = "exp" if slot.startswith("exp") else "out"
            blocks[index] = blocks[index]._replace(**{field: width})
    return dataclasses.replace(arch, blocks=tuple(blocks), **changes)


def same_residuals(a: ArchTable, b: ArchTable) -> bool:
    """Whether both tables have residual connections at the same bnecks (a cut must not add or drop one)."""
    return all(a.residual(i) == b.residual(i) for i in range(len(a.blocks)))


def channel_axes(arch: ArchTable) -> dict[str, tuple[str | None, str | None]]:
    """{layer name: (variable indexing its input channels, variable indexing its output channels)} for every layer
    with weights. Variables are group names, "se<i>" (a squeeze-and-excite width) or None (not pruned)."""
    group_of = {slot: group.name for group in width_groups(arch) for slot in group.slots}
    axes: dict[str, tuple[str | None, str | None]] = {"Conv": (None, group_of["stem"]),
                                                      "Conv/BatchNorm": (group_of["stem"], None)}
    for i, row in enumerate(arch.blocks):
        prefix = f"expanded_conv_{i}/" if i else "expanded_conv/"
        inp = group_of["stem" if i == 0 else f"out{i - 1}"]
        exp = inp if i == 0 else group_of[f"exp{i}"]
        out = group_of[f"out{i}"]
        if i:
            axes[prefix + "expand"] = (inp, exp)
            axes[prefix + "expand/BatchNorm"] = (exp, None)
        axes[prefix + "depthwise"] = (exp, None)
        axes[prefix + "depthwise/BatchNorm"] = (exp, None)
        if row.se:
            axes[prefix + "squeeze_excite/Conv"] = (exp, f"se{i}")
            axes[prefix + "squeeze_excite/Conv_1"] = (f"se{i}", exp)
        axes[prefix + "project"] = (exp, out)
        axes[prefix + "project/BatchNorm"] = (out, None)
    last = group_of[f"out{len(arch.blocks) - 1}"]
    axes.update({"Conv_1": (last, "last_conv"), "Conv_1/BatchNorm": ("last_conv", None),
                 "Conv_2": ("last_conv", "last_point"), "Logits": ("last_point", None)})
    return axes


def _folded_filter_l1(model: keras.Model, conv_name: str) -> np.ndarray:
    """L1 norm of each output filter of a conv, with the following BatchNorm's scale folded in (as in the int8 file)."""
    kernel = model.get_layer(conv_name).get_weights()[0]
    l1 = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    try:
        bn = model.get_layer(conv_name + "/BatchNorm")
    except ValueError:
        return l1  # Conv_2 and the SE convs have no BatchNorm
    gamma, _, _, variance = bn.get_weights()
    return l1 * np.abs(gamma) / np.sqrt(variance + bn.epsilon)


def filter_importance(model: keras.Model, arch: ArchTable) -> dict[str, np.ndarray]:
    """{group name: importance of each channel}: the folded-filter L1 norms of every conv that writes the group's
    channels (the stem conv, expand convs, projection convs of a residual chain, Conv_1, Conv_2), summed."""
    importance: dict[str, np.ndarray] = {}
    for name, (_, out_var) in channel_axes(arch).items():
        if out_var is None or out_var.startswith("se") or "squeeze_excite" in name:
            continue
        l1 = _folded_filter_l1(model, name)
        importance[out_var] = importance.get(out_var, 0) + l1
    return importance


def kept_channels(model: keras.Model, arch: ArchTable, new_arch: ArchTable) -> dict[str, np.ndarray]:
    """{variable: sorted indices of the channels `new_arch` keeps}: the most important ones (all when unchanged)."""
    importance = filter_importance(model, arch)
    new_widths = {group.name: group_width(new_arch, group) for group in width_groups(arch)}
    kept = {}
    for var, scores in importance.items():
        keep = new_widths[var]
        if keep > len(scores):
            raise ValueError(f"{var}: cannot grow from {len(scores)} to {keep} channels")
        kept[var] = np.sort(np.argsort(-scores, kind="stable")[:keep])
    return kept


def carry_weights(model: keras.Model, arch: ArchTable, new_model: keras.Model, new_arch: ArchTable) -> dict:
    """Copy `model`'s weights into `new_model` (built from `new_arch`, a cut of `arch`), keeping the most important
    channels of each group (`kept_channels`) and, per squeeze-and-excite, the largest-L1 squeeze filters over the kept
    inputs. Returns the kept indices per variable."""
    kept = kept_channels(model, arch, new_arch)
    axes = channel_axes(arch)
    for layer in new_model.layers:
        if not layer.weights:
            continue
        in_var, out_var = axes[layer.name]
        old = model.get_layer(layer.name).get_weights()
        if out_var is not None and out_var.startswith("se") and out_var not in kept:
            squeeze = old[0][:, :, kept[in_var] if in_var in kept else slice(None), :]
            width = layer.get_weights()[0].shape[-1]
            kept[out_var] = np.sort(np.argsort(-np.abs(squeeze).reshape(-1, squeeze.shape[-1]).sum(0),
                                               kind="stable")[:width])
        pick_in = kept.get(in_var, slice(None)) if in_var else slice(None)
        pick_out = kept.get(out_var, slice(None)) if out_var else slice(None)
        new = []
        for value in old:
            if value.ndim == 4 and isinstance(layer, keras.layers.DepthwiseConv2D):
                value = value[:, :, pick_in, :]
            elif value.ndim == 4:
                value = value[:, :, pick_in, :][..., pick_out]
            elif isinstance(layer, keras.layers.BatchNormalization):
                value = value[pick_in]
            else:  # a conv's bias
                value = value[pick_out]
            new.append(value)
        layer.set_weights(new)
    return kept


# ---------------------------------------------------------------------------------------------------------- latency


class LatencyMeter:
    """int8 TFLite files of architectures (cached in `cache_dir` by their widths) and their side-by-side timing."""

    def __init__(self, cache_dir: str, image_size: int, num_classes: int, calibration, runs: int = 100,
                 warmup: int = 10):
        self.cache_dir, self.image_size, self.num_classes = cache_dir, image_size, num_classes
        self.calibration, self.runs, self.warmup = calibration, runs, warmup
        os.makedirs(cache_dir, exist_ok=True)

    def path(self, arch: ArchTable) -> str:
        return os.path.join(self.cache_dir, hashlib.sha1(arch.key().encode()).hexdigest()[:16] + ".tflite")

    def export(self, arch: ArchTable, model: keras.Model) -> str | None:
        """The int8 file of `arch`, converted from `model` the first time (then cached); None when it cannot be timed
        (collapsed activation ranges: a cut left a tensor constant).

        The weights matter after all, in one way: XNNPACK takes an int8 ADD or MUL only when its input and output
        scales are within a fixed ratio, and a model with random or freshly cut weights has ranges no trained model
        has (measured: a randomly initialized V3-Small at 64 px ran 1.9x slower than the trained one, a freshly cut
        alpha 0.5 in 12 XNNPACK partitions instead of 1). `model` is a cut of a trained model whose BatchNorm
        statistics `recalibrate_batch_norm` re-estimated; files that still split are reported in the log."""
        from tflite_export.convert import convert
        from tflite_export.files import atomic_write_bytes
        from tflite_export.verify import analyze

        path = self.path(arch)
        if os.path.exists(path + ".unusable"):
            return None
        if not os.path.exists(path):
            content = convert(model, self.calibration)
            analysis = analyze(content)
            if analysis.collapsed_ranges:
                # LiteRT's XNNPACK delegate aborts the process on such a file (tflite_export.verify): never time it.
                atomic_write_bytes(path + ".unusable", b"collapsed activation ranges\n")
                return None
            if analysis.xnnpack_partitions != 1:
                logging.warning("latency of %s measured with %s XNNPACK partitions", arch.key(),
                                analysis.xnnpack_partitions)
            atomic_write_bytes(path, content)
        return path

    def time(self, paths: list[str]) -> list[float]:
        """Latency of each file as (its median / the first file's median, timed as a pair) x the first file's median:
        1 thread, the two interleaved run by run (tflite_export.benchmark).

        Pairs, not all files at once: interleaving a dozen models evicts each one's weights from the caches between
        its runs, which inflates the bigger model's time. Measured at 64 px: six one-group cuts of V3-Small timed
        among 12 files came out 0.84-0.88 x the start model, the same files timed in pairs 0.92-0.95 x."""
        from tflite_export.benchmark import benchmark_models

        if len(paths) == 1:
            return [benchmark_models(paths, threads=(1,), runs=self.runs, warmup=self.warmup)[0]["median_ms"]]
        pairs = [benchmark_models([paths[0], path], threads=(1,), runs=self.runs, warmup=self.warmup)
                 for path in paths[1:]]
        first_ms = float(np.median([pair[0]["median_ms"] for pair in pairs]))
        return [first_ms] + [pair[1]["ratio_vs_first"] * first_ms for pair in pairs]


def recalibrate_batch_norm(model: keras.Model, images) -> None:
    """Re-estimate every BatchNorm's moving statistics on `images` (one training-mode pass, weights unchanged): a cut
    changes the statistics of the layers after it (as in slimmable networks' BN calibration)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def build(arch: ArchTable, image_size: int, num_classes: int, dropout: float = 0.2) -> keras.Model:
    import keras_models

    return keras_models.build(arch.model_type, input_shape=(image_size, image_size, 3), num_classes=num_classes,
                              dropout=dropout, arch=arch)


def madds_per_channel(model: keras.Model, arch: ArchTable) -> dict[str, float]:
    """{group: multiply-adds that one channel of the group costs} (convs reading or writing it)."""
    from keras_models.profile import layer_costs

    axes = channel_axes(arch)
    widths = {group.name: group_width(arch, group) for group in width_groups(arch)}
    per_channel: dict[str, float] = {}
    for cost in layer_costs(model):
        for var in set(axes.get(cost.name, (None, None))):
            if var in widths:
                per_channel[var] = per_channel.get(var, 0.0) + cost.madds / widths[var]
    return per_channel


@dataclasses.dataclass
class Proposal:
    group: str
    width: int
    old_width: int
    latency_ms: float  # relative to the current model's latency in the same round, times the current's ms
    ratio: float  # latency / current latency (same round)
    accuracy: float | None = None
    arch: ArchTable | None = None

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch.to_json() if self.arch else None
        return d


def propose_widths(current: ArchTable, current_model: keras.Model, meter: LatencyMeter, images, *,
                   delta_ratio: float,
                   slopes: dict[str, float], rounds: int, start_path: str | None = None, log=print,
                   groups: list[Group] | None = None) -> tuple[list[Proposal], float, float | None]:
    """For each group, the largest width (multiple of 8) whose measured latency is at least `delta_ratio` below the
    current model's. Returns (proposals, current ms, current / start latency ratio when `start_path` is given).

    `images`: a training batch for `recalibrate_batch_norm`. `slopes` ({group: estimated fraction of the latency saved
    per channel removed}) is updated from the measurements (kept across
    iterations). Each round times the current model and every pending candidate side by side. `groups`: a subset of
    width_groups(current) to consider (default all)."""
    from tflite_export.cli import progress

    groups = groups or width_groups(current)
    current_path = meter.export(current, current_model)
    if current_path is None:
        raise ValueError("the current model's int8 file has collapsed activation ranges: it cannot be timed")
    widths = {g.name: group_width(current, g) for g in groups}
    pending: dict[str, int] = {}  # group -> width to measure this round
    tried: dict[str, dict[int, float]] = {g.name: {} for g in groups}  # group -> {width: ratio}
    current_ms, start_ratio = None, None
    blocked: set[str] = set()  # groups whose candidate file cannot be timed
    if not slopes:
        # Until measured, a channel's share of the latency is guessed as its share of the multiply-adds.
        from keras_models.profile import totals

        total_madds = totals(current_model)[1]
        slopes.update({name: madds / total_madds for name, madds in madds_per_channel(current_model, current).items()})
    for round_index in range(rounds):
        for g in groups:
            if g.name in pending or g.name in blocked:
                continue
            width = _next_guess(current, g, widths[g.name], tried[g.name], slopes, delta_ratio)
            if width is not None:
                pending[g.name] = width
        if not pending:
            break
        candidates = {name: with_width(current, next(g for g in groups if g.name == name), w)
                      for name, w in pending.items()}
        paths = {}
        for name, arch in progress(list(candidates.items()), desc=f"round {round_index + 1}: exporting",
                                   unit="model"):
            path = meter.path(arch)
            if not os.path.exists(path):
                model = cut_model(current_model, current, arch, meter.image_size, meter.num_classes)
                recalibrate_batch_norm(model, images)
                path = meter.export(arch, model)
            if path is None:
                blocked.add(name)
                log(f"  round {round_index + 1}: {name} {widths[name]} -> {pending[name]}: the int8 file has "
                    "collapsed activation ranges, not timed; group left out")
            else:
                paths[name] = path
        extra = [start_path] if start_path and round_index == 0 else []
        times = meter.time([current_path, *paths.values(), *extra])
        if current_ms is None:
            current_ms = times[0]
            if extra:
                start_ratio = times[0] / times[-1]
        for name, ms in zip(paths, times[1:]):
            width = pending[name]
            ratio = ms / times[0]
            tried[name][width] = ratio
            removed = widths[name] - width
            if removed > 0 and ratio < 1:
                slopes[name] = (1 - ratio) / removed  # fraction of the latency saved per channel removed
            log(f"  round {round_index + 1}: {name} {widths[name]} -> {width}: {ratio:.3f} x current")
        pending = {}
    proposals = []
    for g in groups:
        good = [w for w, r in tried[g.name].items() if r <= 1 - delta_ratio]
        if good:
            width = max(good)
            ratio = tried[g.name][width]
            proposals.append(Proposal(g.name, width, widths[g.name], ratio * current_ms, ratio,
                                      arch=with_width(current, g, width)))
    return proposals, current_ms, start_ratio


def _next_guess(arch: ArchTable, group: Group, width: int, tried: dict[int, float], slopes: dict[str, float],
                delta_ratio: float) -> int | None:
    """Next width to measure for `group`: the widest multiple of 8 that the slope says saves delta, narrower than every
    width measured short of it and wider than the widest one measured to reach it (a guess that over-reached is
    refined upwards); None when nothing is left to try."""
    too_wide = min([w for w, r in tried.items() if r > 1 - delta_ratio], default=width)
    good_enough = max([w for w, r in tried.items() if r <= 1 - delta_ratio], default=0)
    slope = slopes.get(group.name)
    if not slope or slope <= 0 or (not tried and slope * (width - MIN_WIDTH) < delta_ratio / 2):
        return None  # by its estimate, even the narrowest width would save less than half of delta: not measured
    cut = math.ceil(delta_ratio / slope / MIN_WIDTH) * MIN_WIDTH
    guess = max(MIN_WIDTH, min(width - cut, too_wide - MIN_WIDTH))
    # A width that would add or remove a residual connection changes the architecture, not just a width: skip it.
    while guess > good_enough and not same_residuals(arch, with_width(arch, group, guess)):
        guess -= MIN_WIDTH
    if guess <= good_enough or guess >= too_wide or guess in tried:
        return None
    return guess


# ------------------------------------------------------------------------------------------- fine-tuning and scoring


def holdout_set(data, size: int, batch_size: int, seed: int) -> tuple[tf.data.Dataset, str]:
    """A fixed, seeded subset of `size` training images, evaluation-preprocessed, that proposals are scored on (the
    test split stays untouched by the search). Data sets without a file list (synthetic, TFDS) use the first `size`
    images of their evaluation split instead; the second value says which."""
    from tflite_export import preprocessing

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
    from pipeline.train import auto_batch_norm_momentum, set_batch_norm_momentum
    from pipeline.transfer import unfreeze_all_but_batch_norm

    if frozen:
        unfreeze_all_but_batch_norm(model)
    else:
        set_batch_norm_momentum(model, auto_batch_norm_momentum(steps))


def short_finetune(model: keras.Model, train: tf.data.Dataset, steps: int, recipe,
                   freeze_batch_norm: bool = False) -> None:
    """`steps` steps of the search's fine-tune (one cosine cycle, no warm-up); `train` yields one-hot batches."""
    from pipeline.train import compile_model

    if steps <= 0:
        return
    prepare_batch_norm(model, steps, freeze_batch_norm)
    compile_model(model, recipe, steps, 1)
    model.fit(train.repeat().take(steps), epochs=1, steps_per_epoch=steps, verbose=0)


def cut_model(model: keras.Model, arch: ArchTable, new_arch: ArchTable, image_size: int,
              num_classes: int) -> keras.Model:
    new_model = build(new_arch, image_size, num_classes)
    carry_weights(model, arch, new_model, new_arch)
    return new_model


def pick(proposals: list[Proposal], current_acc: float, current_ms: float) -> Proposal:
    """The paper's rule: the largest accuracy change per latency saved, (acc - acc_now) / |lat - lat_now|."""
    return max(proposals, key=lambda p: (p.accuracy - current_acc) / max(abs(current_ms - p.latency_ms), 1e-9))


# ------------------------------------------------------------------------------------------------------ the search


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
        from pipeline.schema import SchemaError, from_json_dict, read_json

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
        from tflite_export.files import atomic_write_json

        atomic_write_json(path, dataclasses.asdict(self))


def _save_weights(model: keras.Model, path: str) -> None:
    tmp = path + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


class Context:
    """The run being shrunk: data, start model, settings (from flags)."""

    def __init__(self, settings: dict):
        import keras_models
        from pipeline.data import load_dataset
        from pipeline.train import Recipe, one_hot

        self.settings = settings
        self.out = settings["output_dir"]
        os.makedirs(self.out, exist_ok=True)
        keras.utils.set_random_seed(settings["seed"])
        self.data = load_dataset(settings["dataset"], image_size=settings["image_size"],
                                 batch_size=settings["batch_size"], seed=settings["seed"])
        self.classes = self.data.class_names
        if len(self.classes) != settings["num_classes"]:
            raise ValueError(f"{settings['dataset']} has {len(self.classes)} classes, the run's model "
                             f"{settings['num_classes']}")
        self.train = one_hot(self.data.train, len(self.classes))
        # One augmented training batch re-estimates the BatchNorm statistics of cuts exported for latency.
        self.bn_images = next(iter(self.data.train.take(1)))[0]
        self.holdout, self.holdout_note = holdout_set(self.data, settings["holdout_images"], settings["batch_size"],
                                                      settings["seed"])
        self.recipe = Recipe(learning_rate=settings["learning_rate"], warmup_epochs=0,
                             weight_decay=settings["weight_decay"], optimizer="adam")
        self.variant = keras_models.canonical_variant(settings["variant"])
        self.start_arch = ArchTable.paper(self.variant, settings["alpha"], settings["minimalistic"])
        self.meter = LatencyMeter(os.path.join(self.out, "latency_cache"), settings["image_size"], len(self.classes),
                                  lambda: self.data.representative(settings["latency_calibration_images"]),
                                  runs=settings["latency_runs"])

    def build(self, arch: ArchTable) -> keras.Model:
        return build(arch, self.settings["image_size"], len(self.classes), self.settings["dropout"])

    def latency_file(self, arch: ArchTable, new_arch: ArchTable, model: keras.Model) -> str:
        """The int8 file of `new_arch`, cut from `model` (of `arch`) with its BatchNorms recalibrated."""
        if not os.path.exists(self.meter.path(new_arch)):
            cut = cut_model(model, arch, new_arch, self.settings["image_size"], len(self.classes))
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
        from tflite_export.quantization import quantize_scope

        with quantize_scope():
            trained = keras.models.load_model(self.settings["float_model"], compile=False)
        model = self.build(self.start_arch)
        model.set_weights(trained.get_weights())
        return model


def start_search(ctx: Context, log) -> SearchState:
    """Iteration 0: the start model (fine-tuned --start_steps at the new resolution), its latency, the target."""
    s = ctx.settings
    model = ctx.start_model()
    short_finetune(model, ctx.train, s["start_steps"], ctx.recipe, s["freeze_batch_norm"])
    accuracy = evaluate(model, ctx.holdout)
    _save_weights(model, os.path.join(ctx.out, "iter0.weights.h5"))
    start_path = ctx.meter.export(ctx.start_arch, model)
    if start_path is None:
        raise ValueError("the start model's int8 file has collapsed activation ranges: it cannot be timed")
    start_ms, target_ratio, note = measure_target(ctx, model, start_path)
    log(f"start: {ctx.start_arch.model_type} alpha {s['alpha']:g} at {s['image_size']} px, {start_ms:.3f} ms, "
        f"held-out top-1 {accuracy:.4f}; target {note} = {target_ratio:.3f} x start ({target_ratio * start_ms:.3f} ms)")
    return SearchState(settings=_state_settings(s), start_ms=start_ms, target_ratio=target_ratio, target_note=note,
                       snapshots=[Snapshot(0, ctx.start_arch.to_json(), "iter0.weights.h5", accuracy, start_ms, 1.0,
                                           0)],
                       history=[], slopes={})


def measure_target(ctx: Context, start_model: keras.Model, start_path: str) -> tuple[float, float, str]:
    """The start model's latency, and the target as a fraction of it with its description."""
    s = ctx.settings
    if s["target_alpha"]:
        alpha_arch = ArchTable.paper(ctx.variant, s["target_alpha"], s["minimalistic"])
        alpha_path = ctx.latency_file(ctx.start_arch, alpha_arch, start_model)
        start_ms, alpha_ms = ctx.meter.time([start_path, alpha_path])
        return start_ms, alpha_ms / start_ms, f"alpha {s['target_alpha']:g}'s latency"
    (start_ms,) = ctx.meter.time([start_path])
    if s["target_ms"]:
        return start_ms, s["target_ms"] / start_ms, f"{s['target_ms']:g} ms"
    return start_ms, s["target_ratio"], f"{s['target_ratio']:g} x the start"


# The target only says where the search stops: a resumed search may be given another one (it goes on past the old
# target, or stops at the new one). Every other setting shaped the iterations already made.
TARGET_KEYS = ("target_ms", "target_ratio", "target_alpha")
SEARCH_KEYS = ("run_dir", "dataset", "image_size", "batch_size", "seed", "delta_ratio", "finetune_steps",
               "start_steps", "learning_rate", "weight_decay", "dropout", "holdout_images", "freeze_batch_norm")
# Recorded since a later version: a state written before them is resumed without comparing them.
LATER_SEARCH_KEYS = ("weight_decay", "dropout")


def _state_settings(settings: dict) -> dict:
    """The settings a search records in its state file (the final stage's may differ)."""
    return {key: settings[key] for key in SEARCH_KEYS + TARGET_KEYS}


def retarget(ctx: Context, state: SearchState, log) -> None:
    """A resumed search given another target than the one recorded: measure it, and go on towards it."""
    old = state.target_note
    _, start_model = ctx.load(state.snapshots[0])
    start_path = ctx.meter.export(ctx.start_arch, start_model)
    _, state.target_ratio, state.target_note = measure_target(ctx, start_model, start_path)
    state.settings.update({key: ctx.settings[key] for key in TARGET_KEYS})
    log(f"\n(new target: {state.target_note} = {state.target_ratio:.3f} x start; it was {old})")


def iterate(ctx: Context, state: SearchState, log) -> None:
    """One NetAdapt iteration: proposals, short fine-tunes, the pick; updates `state`."""
    from tflite_export.cli import progress

    s = ctx.settings
    current = state.snapshots[-1]
    arch, model = ctx.load(current)
    started = time.perf_counter()
    iteration = current.iteration + 1
    log(f"\n## iteration {iteration}: from {current.latency_ms:.3f} ms "
        f"({current.ratio_to_start:.3f} x start), held-out top-1 {current.accuracy:.4f}")
    proposals, current_ms, _ = propose_widths(arch, model, ctx.meter, ctx.bn_images, delta_ratio=s["delta_ratio"],
                                              slopes=state.slopes, rounds=s["latency_rounds"], log=log)
    if not proposals:
        raise ValueError(f"target not met: at {current.ratio_to_start:.3f} x the start latency (target "
                         f"{state.target_ratio:.3f}), no width group can cut {s['delta_ratio']:g} x the latency any "
                         "more: lower --delta_ratio, or set a target it can reach")
    # The paper's rule picks from (accuracy, latency) alone, so the best proposal so far is kept as it comes.
    weights = f"iter{iteration}.weights.h5"
    best_path = os.path.join(ctx.out, f"iter{iteration}.best.weights.h5")
    chosen = None
    for p in progress(proposals, desc=f"iteration {iteration}: fine-tuning proposals", unit="model"):
        keras.utils.set_random_seed(s["seed"] + iteration)  # every proposal sees the same batches
        candidate = cut_model(model, arch, p.arch, s["image_size"], len(ctx.classes))
        short_finetune(candidate, ctx.train, s["finetune_steps"], ctx.recipe, s["freeze_batch_norm"])
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
                        chosen_ms / start_ms, current.search_steps + s["finetune_steps"])
    log(f"\nchosen: {chosen.group} {chosen.old_width} -> {chosen.width}; {chosen_ms / start_ms:.3f} x start "
        f"(side by side: {chosen_ms:.3f} vs {start_ms:.3f} ms), held-out top-1 {chosen.accuracy:.4f} "
        f"({time.perf_counter() - started:.0f} s)")
    state.history.append({"iteration": iteration, "current_ms": current_ms, "current_accuracy": current.accuracy,
                          "proposals": [p.as_json() for p in proposals], "chosen": chosen.group,
                          "seconds": time.perf_counter() - started})
    state.snapshots.append(snapshot)
    state.seconds += time.perf_counter() - started
    keras.backend.clear_session()


# ------------------------------------------------------------------------------------- final training and the report


@dataclasses.dataclass
class Candidate:
    name: str
    arch: ArchTable
    init: Snapshot  # the weights it starts from (alpha models: the start, cut)
    float_steps: int  # float fine-tune steps of the final stage


def finish(ctx: Context, candidate: Candidate) -> dict:
    """Long fine-tune, QAT and int8 export of one candidate with the pipeline's stages; resumable per candidate."""
    from keras_models.profile import totals
    from pipeline.qat import (
        RangeRules,
        align_rescaling_ranges,
        calibrate_activation_ranges,
        clamp_saturated_ranges,
        quantize_model,
    )
    from pipeline.train import fine_tune, one_hot, run_stage
    from tflite_export.cli import header
    from tflite_export.export import ModelInfo, export_model
    from tflite_export.files import atomic_write_json
    from tflite_export.quantization import quantize_scope

    s = ctx.settings
    workdir = os.path.join(ctx.out, "candidates", candidate.name)
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
        if result["arch"] == candidate.arch.to_json() and result["float_steps"] == candidate.float_steps:
            return result
        # A search resumed past its old target matches an alpha model with a later iteration, whose longer search
        # the alpha model's training must equal: its earlier training does not count.
        shutil.rmtree(workdir)
    header(f"final training of {candidate.name}: {candidate.float_steps} float + {s['qat_steps']} QAT steps")
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "arch.json"), candidate.arch.to_json())
    init_arch, init_model = ctx.load(candidate.init)
    model = cut_model(init_model, init_arch, candidate.arch, s["image_size"], len(ctx.classes))
    keras.utils.set_random_seed(s["seed"])
    prepare_batch_norm(model, candidate.float_steps, s["freeze_batch_norm"])
    batch = s["batch_size"]
    holdout = one_hot(ctx.holdout, len(ctx.classes))
    stage_args = dict(workdir=workdir, batch_size=batch, verbose=0)
    float_stage = run_stage("float", model, ctx.train.repeat().take(candidate.float_steps), holdout, epochs=1,
                            num_train=candidate.float_steps * batch, recipe=ctx.recipe, **stage_args)
    qat_model = quantize_model(model)
    qat_per_epoch = max(1, s["qat_steps"] // 2)
    if not os.path.exists(os.path.join(workdir, "checkpoints", "qat.weights.h5")):
        calibrate_activation_ranges(qat_model, (images for images, _ in ctx.data.train.take(s["calibration_batches"])))
        clamp_saturated_ranges(qat_model)
        align_rescaling_ranges(qat_model)
    qat_recipe = dataclasses.replace(ctx.recipe, learning_rate=ctx.recipe.learning_rate / 5)
    with quantize_scope():
        # As the pipeline does: the last QAT epoch with BatchNorm frozen.
        qat_stages = fine_tune("qat", qat_model, ctx.train.repeat().take(qat_per_epoch), holdout, epochs=2,
                               freeze_bn_epochs=1, recipe=qat_recipe, callbacks=(RangeRules(qat_model),),
                               batch_norm_model=qat_model, num_train=qat_per_epoch * batch, **stage_args)
    info = ModelInfo(name=f"NetAdapt {candidate.name} {s['image_size']}px int8",
                     description=f"{ctx.variant} shrunk by pipeline.netadapt ({candidate.name}), QAT, int8")
    report = export_model(qat_model, lambda: ctx.data.representative(s["calibration_images"]), output_dir=workdir,
                          labels=ctx.classes, info=info, eval_batches=lambda: ctx.data.eval, reference_model=model)
    params, madds = totals(model)
    result = {"name": candidate.name, "arch": candidate.arch.to_json(), "params": params, "madds": madds,
              "model_file": report["model_file"], "accuracy": report["accuracy"],
              "float_steps": candidate.float_steps, "qat_steps": 2 * qat_per_epoch,
              "search_steps": candidate.init.search_steps,
              "seconds": float_stage.seconds + sum(st.seconds for st in qat_stages)}
    atomic_write_json(result_path, result)
    keras.backend.clear_session()
    return result


MATCH_MARGIN = 0.02  # how far below an alpha model's latency the NetAdapt model it is compared with must be


def final_stage(ctx: Context, state: SearchState, log) -> dict:
    """Finish the chosen models and the alpha models with equal step counts; time every int8 file side by side."""
    from tflite_export.files import atomic_write_json

    s = ctx.settings
    start, snapshots = state.snapshots[0], state.snapshots[1:]
    start_arch = ArchTable.from_json(start.arch)
    alpha_archs = {a: ArchTable.paper(ctx.variant, a, s["minimalistic"]) for a in s["alphas"]}
    _, start_model = ctx.load(start)
    paths = [ctx.meter.export(start_arch, start_model)]
    paths += [ctx.latency_file(start_arch, a, start_model) for a in alpha_archs.values()]
    paths += [ctx.meter.path(ArchTable.from_json(snap.arch)) for snap in snapshots]
    times = ctx.meter.time(paths)
    alpha_ratio = {a: t / times[0] for a, t in zip(alpha_archs, times[1:])}
    snap_ratio = [t / times[0] for t in times[1 + len(alpha_archs):]]
    log(f"\n## final: side-by-side latency (x start {times[0]:.3f} ms): "
        + ", ".join(f"alpha {a:g} {r:.3f}" for a, r in alpha_ratio.items()) + "; iterations "
        + ", ".join(f"{snap.iteration}: {r:.3f}" for snap, r in zip(snapshots, snap_ratio)))
    chosen: dict[int, list[str]] = {snapshots[-1].iteration: ["final"]} if snapshots else {}
    matched = {}
    for a, ratio in alpha_ratio.items():
        # Both of the iteration's measurements (its side-by-side pair in the search, and this round) at least
        # MATCH_MARGIN below the alpha model's: one round alone swings by about 2% (measured: an iteration at 0.842 x
        # start in this round came out at 0.859 beside alpha 0.75's 0.842 when the finished models were timed), and
        # the comparison is meant to be at no higher latency.
        snap = next((sn for sn, r in zip(snapshots, snap_ratio)
                     if max(r, sn.ratio_to_start) <= ratio * (1 - MATCH_MARGIN)), None)
        if snap is None:
            log(f"no iteration reached alpha {a:g}'s latency ({ratio:.3f} x start)")
            continue
        matched[a] = snap
        chosen.setdefault(snap.iteration, []).append(f"alpha {a:g}")
    candidates = [Candidate(f"netadapt-it{snap.iteration}", ArchTable.from_json(snap.arch), snap, s["final_steps"])
                  for snap in snapshots if snap.iteration in chosen]
    for a, arch in alpha_archs.items():
        # Same training as the NetAdapt model it is compared with: its search steps plus the final ones.
        steps = (matched[a].search_steps if a in matched else snapshots[-1].search_steps) + s["final_steps"]
        candidates.append(Candidate(f"alpha-{a:g}", arch, start, steps))
    results = [finish(ctx, c) for c in candidates]
    times = ctx.meter.time([paths[0], *(r["model_file"] for r in results)])
    target_ms = state.target_ratio * times[0]
    for r, ms in zip(results, times[1:]):
        r["latency_ms"], r["ratio_to_start"] = ms, ms / times[0]
        r["reward"] = mnasnet_reward(r["accuracy"]["int8_top1"], ms, target_ms, s["reward_w"])
    results.sort(key=lambda r: -r["reward"])
    log(f"\n## result (int8 top-1 on {ctx.data.num_eval} {ctx.data.eval_split_name} images; latency side by side, "
        f"start {times[0]:.3f} ms; reward = top-1 x (lat / {target_ms:.3f} ms)^{s['reward_w']:g})\n")
    log("| model | matched to | latency (ms) | x start | int8 top-1 | float top-1 | MnasNet reward | params | MAdds |"
        "\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        iteration = int(r["name"][len("netadapt-it"):]) if r["name"].startswith("netadapt-it") else None
        note = ", ".join(chosen.get(iteration, [])) if iteration is not None else "-"
        log(f"| {r['name']} | {note} | {r['latency_ms']:.3f} | {r['ratio_to_start']:.3f} | "
            f"{r['accuracy']['int8_top1']:.4f} | {r['accuracy']['keras_top1']:.4f} | {r['reward']:.4f} | "
            f"{r['params']:,} | {r['madds'] / 1e6:.1f}M |")
    report = {"settings": s, "start_ms": times[0], "target_ms": target_ms, "target": state.target_note,
              "search_seconds": state.seconds, "holdout": ctx.holdout_note,
              "alpha_ratio_search_round": alpha_ratio, "matched": {str(a): sn.iteration for a, sn in matched.items()},
              "snapshots": [dataclasses.asdict(sn) for sn in state.snapshots], "results": results}
    atomic_write_json(os.path.join(ctx.out, "report.json"), report)
    return report


def plot(report: dict, path: str) -> None:
    """The search path (held-out top-1 after each short fine-tune) and the finished models (int8 test top-1) against
    latency, NetAdapt beside the alpha models."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tflite_export.files import atomic_write_bytes

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    snaps, start_ms = report["snapshots"], report["start_ms"]
    left.plot([sn["ratio_to_start"] * start_ms for sn in snaps], [sn["accuracy"] for sn in snaps], "o-",
              label="NetAdapt iterations")
    for sn in snaps:
        left.annotate(str(sn["iteration"]), (sn["ratio_to_start"] * start_ms, sn["accuracy"]), fontsize=8)
    left.set(title="search path (float, held-out, after T steps)", xlabel="int8 latency (ms, 1 thread)",
             ylabel="top-1")
    for prefix, style, label in (("netadapt", "o-", "NetAdapt"), ("alpha", "s--", "width multiplier alpha")):
        rows = sorted((r for r in report["results"] if r["name"].startswith(prefix)), key=lambda r: r["latency_ms"])
        right.plot([r["latency_ms"] for r in rows], [r["accuracy"]["int8_top1"] for r in rows], style, label=label)
        for r in rows:
            right.annotate(r["name"].split("-", 1)[1], (r["latency_ms"], r["accuracy"]["int8_top1"]), fontsize=8)
    right.axvline(report["target_ms"], color="grey", lw=0.8, ls=":", label="target")
    right.set(title="after final fine-tune + QAT (int8, test split)", xlabel="int8 latency (ms, 1 thread)",
              ylabel="int8 top-1")
    right.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------------------- CLI

def define_flags() -> None:
    """The command's flags. Defined when it runs, not on import: tests import this module beside
    pipeline.train_and_export, whose flags (--dataset, --image_size, ...) share names with these."""
    flags.DEFINE_string("run_dir", None,
                        "A finished pipeline.train_and_export run folder (float_model.h5, run_config.json).")
    flags.DEFINE_string("output_dir", None, "Where the search goes (default <run_dir>-netadapt). Rerun to resume.")
    flags.DEFINE_float("target_ms", None, "Latency target in ms (int8, 1 thread, this machine).")
    flags.DEFINE_float("target_ratio", None, "Latency target as a fraction of the start model's.")
    flags.DEFINE_float("target_alpha", None, "Latency target: that of the same variant at this width multiplier.")
    flags.DEFINE_float("delta_ratio", 0.05, "Latency each iteration must save, as a fraction of the current latency "
                       "(the paper: 0.01; bigger saves iterations here).")
    flags.DEFINE_integer("finetune_steps", 40, "Short fine-tune of each proposal (T, steps).")
    flags.DEFINE_integer("start_steps", 0, "Fine-tune steps of the start model before the search (e.g. at a new "
                         "--image_size).")
    flags.DEFINE_integer("final_steps", 300, "Float fine-tune steps of the final models (before QAT).")
    flags.DEFINE_integer("qat_steps", 200, "QAT steps of the final models (the second half with BatchNorm frozen).")
    flags.DEFINE_integer("max_iterations", 30, "Stop after this many iterations even if the target is not met.")
    flags.DEFINE_boolean("search_only", False, "Stop after the search (rerun without it to go on to the final stage).")
    flags.DEFINE_list("alphas", [], "Width multipliers to compare with (cut from the same start, same training steps).")
    flags.DEFINE_string("dataset", None, "Data set (default: the run's).")
    flags.DEFINE_integer("image_size", None, "Resolution (default: the run's).")
    flags.DEFINE_integer("batch_size", 64, "Batch size of every fine-tune.")
    flags.DEFINE_float("learning_rate", 2e-4, "Peak learning rate (Adam, cosine) of the fine-tunes; QAT uses a fifth.")
    flags.DEFINE_float("weight_decay", 4e-5, "Decoupled weight decay.")
    flags.DEFINE_float("dropout", 0.2, "Dropout before the classifier.")
    flags.DEFINE_integer("holdout_images", 1000, "Training images the proposals are scored on.")
    flags.DEFINE_integer("latency_runs", 300,
                         "Timed LiteRT runs per model and round (cheap next to converting the candidates).")
    flags.DEFINE_integer("latency_rounds", 3, "Measurement rounds per iteration to find each group's width.")
    flags.DEFINE_integer("latency_calibration_images", 4, "Calibration images of the latency-only int8 exports.")
    flags.DEFINE_integer("calibration_images", 200, "Calibration images of the final int8 exports.")
    flags.DEFINE_integer("calibration_batches", 10, "Training batches that initialize QAT's activation ranges.")
    flags.DEFINE_float("reward_w", MNASNET_W,
                       "Exponent w of the MnasNet reward (MobileNetV3-Small's search used -0.15).")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def _settings() -> dict:
    """Flags plus what the run folder says, checked before anything is loaded (one-line ValueErrors)."""
    run_dir = FLAGS.run_dir
    if not run_dir:
        raise ValueError("--run_dir is required (a pipeline.train_and_export run folder)")
    from pipeline.config import FLOAT_MODEL_FILE
    from pipeline.run_dir import RUN_CONFIG_FILE, recorded_model, recorded_setting

    float_model = os.path.join(run_dir, FLOAT_MODEL_FILE)
    config_path = os.path.join(run_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(float_model) or not os.path.isfile(config_path):
        raise ValueError(f"{run_dir} has no {FLOAT_MODEL_FILE} and {RUN_CONFIG_FILE}: not a finished pipeline run")

    config = recorded_model(run_dir)  # the model-defining settings and classes, whichever version wrote the folder
    dataset = FLAGS.dataset or recorded_setting(run_dir, "dataset")
    if not dataset:
        raise ValueError(f"{run_dir} does not say which data set it was trained on: pass --dataset")
    if config.get("variant") not in ("small", "large"):
        raise ValueError(f"NetAdapt shrinks MobileNetV3 (small or large); {run_dir} holds {config.get('variant')!r}")
    targets = [name for name in ("target_ms", "target_ratio", "target_alpha") if FLAGS[name].value is not None]
    if len(targets) != 1:
        raise ValueError("give exactly one of --target_ms, --target_ratio, --target_alpha")
    if FLAGS.target_ratio is not None and not 0 < FLAGS.target_ratio < 1:
        raise ValueError(f"--target_ratio must be in (0, 1), got {FLAGS.target_ratio:g}")
    if FLAGS.target_ms is not None and FLAGS.target_ms <= 0:
        raise ValueError(f"--target_ms must be > 0, got {FLAGS.target_ms:g}")
    alphas = [float(a) for a in FLAGS.alphas]
    for a in alphas + ([FLAGS.target_alpha] if FLAGS.target_alpha is not None else []):
        if not 0 < a < config.get("alpha", 1.0):
            raise ValueError(f"alpha {a:g} must be in (0, the run's alpha {config.get('alpha', 1.0):g})")
    if not 0 < FLAGS.delta_ratio < 1:
        raise ValueError(f"--delta_ratio must be in (0, 1), got {FLAGS.delta_ratio:g}")
    for name in ("finetune_steps", "final_steps", "qat_steps", "holdout_images", "latency_runs", "latency_rounds",
                 "latency_calibration_images", "calibration_images", "calibration_batches", "max_iterations"):
        if FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be >= 1, got {FLAGS[name].value}")
    if FLAGS.start_steps < 0:
        raise ValueError("--start_steps must be >= 0")
    if not 0 <= FLAGS.dropout < 1 or FLAGS.weight_decay < 0:
        raise ValueError(f"--dropout must be in [0, 1) and --weight_decay >= 0, got {FLAGS.dropout:g} and "
                         f"{FLAGS.weight_decay:g}")
    from tflite_export.files import NETADAPT_SEARCH, check_folder_kind, check_writable_dir

    output_dir = FLAGS.output_dir or os.path.normpath(run_dir) + "-netadapt"
    check_writable_dir(output_dir, "--output_dir")
    check_folder_kind(output_dir, NETADAPT_SEARCH, "--output_dir")
    return {"run_dir": run_dir, "float_model": float_model, "output_dir": output_dir, "dataset": dataset,
            "variant": config["variant"], "alpha": config.get("alpha", 1.0),
            "minimalistic": config.get("minimalistic", False), "num_classes": len(config.get("classes", [])) or None,
            "image_size": FLAGS.image_size or config["image_size"], "batch_size": FLAGS.batch_size,
            "seed": FLAGS.seed, "target_ms": FLAGS.target_ms, "target_ratio": FLAGS.target_ratio,
            "target_alpha": FLAGS.target_alpha, "alphas": alphas, "delta_ratio": FLAGS.delta_ratio,
            "finetune_steps": FLAGS.finetune_steps, "start_steps": FLAGS.start_steps, "final_steps": FLAGS.final_steps,
            "qat_steps": FLAGS.qat_steps, "max_iterations": FLAGS.max_iterations,
            "learning_rate": FLAGS.learning_rate, "weight_decay": FLAGS.weight_decay, "dropout": FLAGS.dropout,
            "holdout_images": FLAGS.holdout_images, "latency_runs": FLAGS.latency_runs,
            "latency_rounds": FLAGS.latency_rounds, "latency_calibration_images": FLAGS.latency_calibration_images,
            "calibration_images": FLAGS.calibration_images, "calibration_batches": FLAGS.calibration_batches,
            "reward_w": FLAGS.reward_w, "search_only": FLAGS.search_only,
            # The run's own choice: the transfer recipe fine-tunes with BatchNorm frozen (prepare_batch_norm).
            "freeze_batch_norm": recorded_setting(run_dir, "recipe") == "transfer"}


class SearchLog:
    """search_log.md: appended line by line (a reader sees the search as it goes), echoed to the console."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


class TargetNotMet(Exception):
    """The search stopped above its latency target (the message says where and what to do); exit status 1."""


def target_shortfall(state: SearchState, max_iterations: int) -> str | None:
    """The "target not met" line of a search that stopped above its target, or None when it met it."""
    last = state.snapshots[-1]
    if last.ratio_to_start <= state.target_ratio:
        return None
    return (f"target not met: the search stopped at {last.ratio_to_start:.3f} x the start latency after "
            f"{last.iteration} iteration(s) (--max_iterations {max_iterations}), above the target "
            f"{state.target_note} = {state.target_ratio:.3f} x start; rerun with a higher --max_iterations (the search "
            "resumes) or a lower --delta_ratio, or set a target it can reach")


def resumable_state(settings: dict) -> SearchState | None:
    """The search state in --output_dir, checked against `settings` before any data is loaded; None for a new search.
    Another setting than the one the iterations were made with is a one-line refusal (the target may change)."""
    from pipeline.train import check_same_settings

    state_path = os.path.join(settings["output_dir"], STATE_FILE)
    if not os.path.exists(state_path):
        return None
    state = SearchState.load(state_path)
    recorded = {**{key: settings[key] for key in LATER_SEARCH_KEYS}, **state.settings}
    check_same_settings(state_path, {key: settings[key] for key in SEARCH_KEYS}, "a search made",
                        settings["output_dir"], recorded=recorded)
    return state


def run(settings: dict) -> dict:
    """Search (resuming from the state file), then the final stage; returns the report. A search that stops above its
    target still finishes its models, then raises TargetNotMet."""
    from tflite_export.files import atomic_write_json

    state = resumable_state(settings)
    ctx = Context(settings)
    log = SearchLog(os.path.join(ctx.out, "search_log.md"))
    state_path = os.path.join(ctx.out, STATE_FILE)
    if state is not None:
        log(f"\n(resumed after iteration {state.snapshots[-1].iteration})")
        if any(state.settings.get(key) != settings[key] for key in TARGET_KEYS):
            retarget(ctx, state, log)
            state.save(state_path)
    else:
        log(f"# NetAdapt search of {settings['run_dir']}\n\nproposals scored on {ctx.holdout_note}; "
            f"delta {settings['delta_ratio']:g} x current latency; T = {settings['finetune_steps']} steps")
        state = start_search(ctx, log)
        state.save(state_path)
    while not state.done(settings["max_iterations"]):
        iterate(ctx, state, log)
        state.save(state_path)
    final = ArchTable.from_json(state.snapshots[-1].arch)
    atomic_write_json(os.path.join(ctx.out, "arch.json"), final.to_json())
    log(f"\n## final architecture ({state.snapshots[-1].ratio_to_start:.3f} x start latency, search "
        f"{state.seconds / 60:.1f} min)\n\n```\n{final.format(settings['image_size'], len(ctx.classes))}\n```")
    shortfall = target_shortfall(state, settings["max_iterations"])
    if shortfall:
        log(f"\n{shortfall}")
    if settings["search_only"]:
        log(f"\nsearch stopped after iteration {state.snapshots[-1].iteration} (--search_only); rerun without it "
            "to go on to the final stage")
        report = {}
    else:
        report = final_stage(ctx, state, log)
        plot(report, os.path.join(ctx.out, "netadapt.png"))
        log(f"\narchitecture: {os.path.join(ctx.out, 'arch.json')}; plot: {os.path.join(ctx.out, 'netadapt.png')}")
    if shortfall:
        raise TargetNotMet(shortfall)
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from keras_models import WeightsError
    from pipeline.data import DataError
    from tflite_export.cli import one_line_error
    from tflite_export.convert import ConversionError
    from tflite_export.verify import VerificationError

    try:
        run(_settings())
    except (DataError, WeightsError, ConversionError, VerificationError, ValueError, OSError) as err:
        print(f"error: {one_line_error(err)}", file=sys.stderr)
        sys.exit(2)
    except TargetNotMet as shortfall:  # the search ran and its models are finished, but the target was asked for
        print(f"error: {shortfall}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
