"""The latency meter and the width proposals it measures.

Latency: every candidate is cut from the current model (BatchNorm statistics re-estimated on one batch, so its int8
ranges are those of a trained model and XNNPACK takes the whole graph), exported to int8 TFLite by the project's own
converter (post-training calibration on a few training images) with lowered h-swish, and timed by
tflite_export.benchmark on 1 thread (XNNPACK), interleaved run by run with the current model (a pair at a time); a
candidate's latency is its ratio to the current model's (files are cached by architecture). The width to try is
guessed from a slope (the group's share of the multiply-adds at first, then its last measured saving per channel) and
corrected by measurement, at most `--latency_rounds` rounds; a group whose narrowest width is estimated to save less
than half of delta is not measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os

import numpy as np
from absl import logging

from keras_models.backend import keras
from keras_models.mobilenet_v3 import ArchTable
from keras_models.profile import totals
from pipeline.netadapt.widths import (
    MIN_WIDTH,
    Group,
    cut_model,
    group_width,
    madds_per_channel,
    recalibrate_batch_norm,
    same_residuals,
    width_groups,
    with_width,
)
from tflite_export.benchmark import benchmark_models
from tflite_export.cli import progress
from tflite_export.convert import convert
from tflite_export.files import atomic_write_bytes
from tflite_export.verify import analyze


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
        if len(paths) == 1:
            return [benchmark_models(paths, threads=(1,), runs=self.runs, warmup=self.warmup)[0].median_ms]
        pairs = [benchmark_models([paths[0], path], threads=(1,), runs=self.runs, warmup=self.warmup)
                 for path in paths[1:]]
        first_ms = float(np.median([pair[0].median_ms for pair in pairs]))
        return [first_ms] + [pair[1].ratio_vs_first * first_ms for pair in pairs]


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

