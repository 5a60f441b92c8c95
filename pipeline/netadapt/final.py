"""The final stage: the chosen models (the last one, and with --alphas the first one at or below each alpha model's
latency) get a long fine-tune, quantization-aware training and an int8 export through the pipeline's own stages
(pipeline.train's float stage, the training command's QAT step, tflite_export.export); the alpha models are cut from
the same start by the same importance criterion and given the same number of training steps. The report ranks them
all by the MnasNet reward: report.json, and netadapt.png (the search path and the finished models against latency).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil

from matplotlib.figure import Figure

from keras_models.backend import keras
from keras_models.mobilenet_v3 import ArchTable
from keras_models.profile import totals
from pipeline.netadapt.config import MNASNET_W, settings_record
from pipeline.netadapt.search import Context, SearchState, Snapshot, prepare_batch_norm
from pipeline.netadapt.widths import cut_model
from pipeline.train import one_hot, run_stage
from pipeline.train_and_export import quantization_aware_training
from tflite_export.cli import header
from tflite_export.evaluate import HeldOutAccuracy
from tflite_export.export import ModelInfo, export_model
from tflite_export.files import atomic_write_bytes, atomic_write_json


def mnasnet_reward(acc: float, lat: float, target: float, w: float = MNASNET_W) -> float:
    """MnasNet's objective ACC x (LAT / TAR)^w: with w < 0 a model slower than the target pays, a faster one gains."""
    if lat <= 0 or target <= 0:
        raise ValueError(f"latency and target must be > 0, got {lat} and {target}")
    return acc * (lat / target) ** w


@dataclasses.dataclass
class Candidate:
    name: str
    arch: ArchTable
    init: Snapshot  # the weights it starts from (alpha models: the start, cut)
    float_steps: int  # float fine-tune steps of the final stage


@dataclasses.dataclass(frozen=True)
class FinishedModel:
    """A candidate after its final training and int8 export (candidates/<name>/result.json); `timed` adds the
    side-by-side latency and the reward."""

    name: str
    arch: dict  # ArchTable.to_json()
    params: int
    madds: int
    model_file: str
    accuracy: HeldOutAccuracy  # the int8 file and its Keras model on the evaluation split
    float_steps: int
    qat_steps: int
    search_steps: int
    seconds: float  # training time of the final stage
    latency_ms: float | None = None
    ratio_to_start: float | None = None
    reward: float | None = None  # MnasNet's, against the target latency

    @classmethod
    def from_json(cls, record: dict) -> FinishedModel:
        return cls(**{**record, "accuracy": HeldOutAccuracy(**record["accuracy"])})

    def timed(self, ms: float, start_ms: float, target_ms: float, reward_w: float) -> FinishedModel:
        return dataclasses.replace(self, latency_ms=ms, ratio_to_start=ms / start_ms,
                                   reward=mnasnet_reward(self.accuracy.int8_top1, ms, target_ms, reward_w))


@dataclasses.dataclass(frozen=True)
class NetAdaptReport:
    """What `pipeline.netadapt.run` returns and report.json holds (`dataclasses.asdict`)."""

    settings: dict  # the search settings (config.settings_record)
    start_ms: float  # the start model's int8 latency, in the final side-by-side round
    target_ms: float
    target: str  # how the target was given ("alpha 0.5's latency", "0.6 x the start")
    search_seconds: float
    holdout: str  # what the proposals were scored on
    alpha_ratio_search_round: dict[float, float]  # alpha -> its latency / the start's, in the final stage's round
    matched: dict[str, int]  # alpha -> the iteration compared with it
    snapshots: list[Snapshot]
    results: list[FinishedModel]  # best MnasNet reward first


def finish(ctx: Context, candidate: Candidate) -> FinishedModel:
    """Long fine-tune, QAT and int8 export of one candidate with the pipeline's stages; resumable per candidate."""
    config = ctx.config
    workdir = os.path.join(ctx.out, "candidates", candidate.name)
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = FinishedModel.from_json(json.load(f))
        if result.arch == candidate.arch.to_json() and result.float_steps == candidate.float_steps:
            return result
        # A search resumed past its old target matches an alpha model with a later iteration, whose longer search
        # the alpha model's training must equal: its earlier training does not count.
        shutil.rmtree(workdir)
    header(f"final training of {candidate.name}: {candidate.float_steps} float + {config.qat_steps} QAT steps")
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "arch.json"), candidate.arch.to_json())
    init_arch, init_model = ctx.load(candidate.init)
    model = cut_model(init_model, init_arch, candidate.arch, config.image_size, len(ctx.classes))
    keras.utils.set_random_seed(config.seed)
    prepare_batch_norm(model, candidate.float_steps, ctx.start.freeze_batch_norm)
    batch = config.batch_size
    holdout = one_hot(ctx.holdout, len(ctx.classes))
    stage_args = dict(workdir=workdir, batch_size=batch, verbose=0)
    float_stage = run_stage("float", model, ctx.train.repeat().take(candidate.float_steps), holdout, epochs=1,
                            num_train=candidate.float_steps * batch, recipe=ctx.recipe, **stage_args)
    # The training command's QAT step, in two epochs of half the steps: the last one with BatchNorm frozen.
    qat_per_epoch = max(1, config.qat_steps // 2)
    qat_model, qat_stages = quantization_aware_training(
        model, lambda: ctx.data.train.take(config.calibration_batches), ctx.train.repeat().take(qat_per_epoch),
        holdout, epochs=2, freeze_bn_epochs=1,
        recipe=dataclasses.replace(ctx.recipe, learning_rate=ctx.recipe.learning_rate / 5),
        num_train=qat_per_epoch * batch, **stage_args)
    info = ModelInfo(name=f"NetAdapt {candidate.name} {config.image_size}px int8",
                     description=f"{ctx.variant} shrunk by pipeline.netadapt ({candidate.name}), QAT, int8")
    report = export_model(qat_model, lambda: ctx.data.representative(config.calibration_images), output_dir=workdir,
                          labels=ctx.classes, info=info, eval_batches=lambda: ctx.data.eval, reference_model=model)
    params, madds = totals(model)
    result = FinishedModel(name=candidate.name, arch=candidate.arch.to_json(), params=params, madds=madds,
                           model_file=report.model_file, accuracy=report.accuracy,
                           float_steps=candidate.float_steps, qat_steps=2 * qat_per_epoch,
                           search_steps=candidate.init.search_steps,
                           seconds=float_stage.seconds + sum(st.seconds for st in qat_stages))
    atomic_write_json(result_path, dataclasses.asdict(result))
    keras.backend.clear_session()
    return result


MATCH_MARGIN = 0.02  # how far below an alpha model's latency the NetAdapt model it is compared with must be


def final_stage(ctx: Context, state: SearchState, log) -> NetAdaptReport:
    """Finish the chosen models and the alpha models with equal step counts; time every int8 file side by side."""
    config = ctx.config
    start, snapshots = state.snapshots[0], state.snapshots[1:]
    start_arch = ArchTable.from_json(start.arch)
    alpha_archs = {a: ArchTable.paper(ctx.variant, a, ctx.start.minimalistic) for a in config.alphas}
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
    candidates = [Candidate(f"netadapt-it{snap.iteration}", ArchTable.from_json(snap.arch), snap, config.final_steps)
                  for snap in snapshots if snap.iteration in chosen]
    for a, arch in alpha_archs.items():
        # Same training as the NetAdapt model it is compared with: its search steps plus the final ones.
        steps = (matched[a].search_steps if a in matched else snapshots[-1].search_steps) + config.final_steps
        candidates.append(Candidate(f"alpha-{a:g}", arch, start, steps))
    results = [finish(ctx, c) for c in candidates]
    times = ctx.meter.time([paths[0], *(r.model_file for r in results)])
    target_ms = state.target_ratio * times[0]
    results = sorted((r.timed(ms, times[0], target_ms, config.reward_w) for r, ms in zip(results, times[1:])),
                     key=lambda r: -r.reward)
    log(f"\n## result (int8 top-1 on {ctx.data.num_eval} {ctx.data.eval_split_name} images; latency side by side, "
        f"start {times[0]:.3f} ms; reward = top-1 x (lat / {target_ms:.3f} ms)^{config.reward_w:g})\n")
    log("| model | matched to | latency (ms) | x start | int8 top-1 | float top-1 | MnasNet reward | params | MAdds |"
        "\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        iteration = int(r.name[len("netadapt-it"):]) if r.name.startswith("netadapt-it") else None
        note = ", ".join(chosen.get(iteration, [])) if iteration is not None else "-"
        log(f"| {r.name} | {note} | {r.latency_ms:.3f} | {r.ratio_to_start:.3f} | {r.accuracy.int8_top1:.4f} | "
            f"{r.accuracy.keras_top1:.4f} | {r.reward:.4f} | {r.params:,} | {r.madds / 1e6:.1f}M |")
    report = NetAdaptReport(settings=settings_record(config, ctx.start), start_ms=times[0], target_ms=target_ms,
                            target=state.target_note, search_seconds=state.seconds, holdout=ctx.holdout_note,
                            alpha_ratio_search_round=alpha_ratio,
                            matched={str(a): sn.iteration for a, sn in matched.items()},
                            snapshots=list(state.snapshots), results=results)
    atomic_write_json(os.path.join(ctx.out, "report.json"), dataclasses.asdict(report))
    return report


def plot(report: NetAdaptReport, path: str) -> None:
    """The search path (held-out top-1 after each short fine-tune) and the finished models (int8 test top-1) against
    latency, NetAdapt beside the alpha models."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    snaps, start_ms = report.snapshots, report.start_ms
    left.plot([sn.ratio_to_start * start_ms for sn in snaps], [sn.accuracy for sn in snaps], "o-",
              label="NetAdapt iterations")
    for sn in snaps:
        left.annotate(str(sn.iteration), (sn.ratio_to_start * start_ms, sn.accuracy), fontsize=8)
    left.set(title="search path (float, held-out, after T steps)", xlabel="int8 latency (ms, 1 thread)",
             ylabel="top-1")
    for prefix, style, label in (("netadapt", "o-", "NetAdapt"), ("alpha", "s--", "width multiplier alpha")):
        rows = sorted((r for r in report.results if r.name.startswith(prefix)), key=lambda r: r.latency_ms)
        right.plot([r.latency_ms for r in rows], [r.accuracy.int8_top1 for r in rows], style, label=label)
        for r in rows:
            right.annotate(r.name.split("-", 1)[1], (r.latency_ms, r.accuracy.int8_top1), fontsize=8)
    right.axvline(report.target_ms, color="grey", lw=0.8, ls=":", label="target")
    right.set(title="after final fine-tune + QAT (int8, test split)", xlabel="int8 latency (ms, 1 thread)",
              ylabel="int8 top-1")
    right.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())

