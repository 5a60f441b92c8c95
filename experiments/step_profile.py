"""Where a training step's time goes (issue #17): op-type profile of one float and one QAT step, forward / backward /
optimizer split, and the per-epoch overheads of the pipeline's callbacks.

    nice -n 10 python -m experiments.step_profile [--image_size 64] [--batch_size 64] [--steps 10] [--json OUT]

Models and loop are bench.throughput's (ours, keras.applications' V3-Small, ours QAT; same data, recipe, compiled
Keras train function). Three parts:
  1. Op profile: `tf.profiler` traces `--steps` steps of each model; the trace (XPlane, what TensorBoard's trace
     viewer shows) is summed by op kind: the time each op ran on TensorFlow's inter-op threads, with the work it
     handed to the intra-op pool inside it. Ops of the two inter-op threads overlap, so the column is op time, not
     wall time; shares are of the summed op time.
  2. Stages (wall time, rounds interleaved): forward in training mode + loss; forward + gradients; the whole train
     step (+ optimizer update + metrics). Differences say what the backward pass and the optimizer add.
  3. Epoch overheads: `model.fit` of one epoch with the callbacks pipeline.train.run_stage uses (BackupAndRestore
     checkpoint each epoch, EpochLog's absl line, TensorBoard epoch logs) vs with none, alternating; and a direct
     timing of one BackupAndRestore checkpoint write.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import tempfile
import time

import numpy as np

from bench import _common
from bench.throughput import compiled_models
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import keras, tf

PROFILED = ("ours", "ours + Keras optimizer (before #17)", "keras.apps", "ours QAT")

ELEMENTWISE = {"Mul", "AddV2", "Add", "Sub", "Neg", "RealDiv", "Relu", "Relu6", "Relu6Grad", "ReluGrad", "Maximum",
               "Minimum", "Square", "Sqrt", "Rsqrt", "Cast", "SelectV2", "Select", "GreaterEqual", "Less", "Greater",
               "LessEqual", "ZerosLike", "OnesLike", "BroadcastTo", "Sign"}
# Name scopes of tfmot's quant_ops that track a fake-quant's range (its BatchMin/BatchMax reductions and assigns).
FAKE_QUANT_RANGE_SCOPES = ("BatchMin", "BatchMax", "AssignMinEma", "AssignMaxEma", "AssignMinLast", "AssignMaxLast",
                           "AssignMinAllValue", "AssignMaxAllValue")
OPTIMIZER = "optimizer update (weight decay, momentum, Nesterov step)"
# The trace has no op event for a call of an XLA-compiled function (here only pipeline.train's fused optimizer
# update): the inter-op thread that runs it shows these two, the second while the cluster's kernels run on the
# intra-op pool.
XLA_CALL_EVENTS = ("ThunkExecutor::Execute", "BlockUntilReady")
VARIABLE_OPS = {"ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "VarHandleOp"}


def op_category(node: str, op: str, optimizer_scope: str) -> str:
    """The row of the profile table a traced op belongs to (node: its full name, op: its type, maybe _MklNative...)."""
    kind = op.replace("_MklNative", "").replace("_Mkl", "")
    backward = node.startswith("gradient_tape/")
    if node.startswith(optimizer_scope + "/") or "_fusion" in kind or kind == "ExecuteAsyncOnStream":
        return OPTIMIZER  # (XLA's kernels and launch: only the fused optimizer update is compiled)
    if "FakeQuant" in kind:
        return "fake-quant ops (forward + gradient)"
    if kind.startswith("DepthwiseConv2dNative"):
        return {"DepthwiseConv2dNative": "DepthwiseConv2dNative forward",
                "DepthwiseConv2dNativeBackpropFilter": "DepthwiseConv2dNative backprop filter",
                "DepthwiseConv2dNativeBackpropInput": "DepthwiseConv2dNative backprop input"}.get(kind, kind)
    if "Conv2DBackpropFilter" in kind:
        return "Conv2D backprop filter"
    if "Conv2DBackpropInput" in kind:
        return "Conv2D backprop input"
    if "Conv2D" in kind or kind == "BiasAdd":
        return "Conv2D forward (+bias)"
    if kind == "BiasAddGrad":
        return "Conv2D backprop filter"
    if "FusedBatchNorm" in kind:
        return "FusedBatchNorm gradient" if "Grad" in kind else "FusedBatchNorm forward (+moving stats)"
    if any(part in node for part in FAKE_QUANT_RANGE_SCOPES):
        return "fake-quant range updates (batch min/max, moving averages)"
    if "AssignMovingAvg" in node and "BatchNorm" in node:
        return "FusedBatchNorm forward (+moving stats)"
    if kind in ELEMENTWISE:
        hswish = "/act/" in node or "hard_sigmoid" in node
        what = "h-swish / hard-sigmoid elementwise" if hswish else "other elementwise (SE gate, residual adds, loss)"
        return f"{what}, {'backward' if backward else 'forward'}"
    if kind == "AddN":
        return "gradient sums (AddN)"
    if kind in VARIABLE_OPS:
        return "variable reads / BN moving-stat and range assigns"
    if kind in {"Mean", "Sum", "Tile", "Max", "Min", "Prod", "Reshape", "Pad", "Slice", "StridedSlice"}:
        return "pooling, reductions, reshapes, padding"
    return f"other ({kind})"


def parse_trace(logdir: str, optimizer_scope: str) -> tuple[dict[str, float], dict[str, int], float]:
    """Sum a tf.profiler trace by op_category: (picoseconds per category, op counts, tf.data wait in picoseconds)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    times: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    data_wait = 0.0
    for line in host.lines:
        if line.name.startswith("tf_data_iterator_get_next"):
            for event in line.events:
                if host.event_metadata[event.metadata_id].name == "IteratorGetNextOp::DoCompute":
                    data_wait += event.duration_ps
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if name in XLA_CALL_EVENTS:
                category = OPTIMIZER
            elif ":" not in name or name.startswith(("ExecutorState", "ThreadpoolListener")):
                continue
            else:
                node, op = name.rsplit(":", 1)
                category = op_category(node, op, optimizer_scope)
            times[category] += event.duration_ps
            counts[category] += 1
    return dict(times), dict(counts), data_wait


def profile_steps(fn, iterator, steps: int, logdir: str) -> float:
    """Trace `steps` calls of a train function; returns the wall seconds per step while tracing."""
    tf.profiler.experimental.start(logdir)
    started = time.perf_counter()
    for _ in range(steps):
        logs = fn(iterator)
    float(logs["loss"])
    seconds = (time.perf_counter() - started) / steps
    tf.profiler.experimental.stop()
    return seconds


def stage_functions(model):
    """tf.functions for the three stages of a train step on one (x, y) batch."""
    def loss_of(x, y):
        return model.compiled_loss(y, model(x, training=True), regularization_losses=model.losses)

    @tf.function
    def forward(x, y):
        return loss_of(x, y)

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(x, y)
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def train_step(x, y):
        return model.train_step((x, y))

    return {"forward (training mode) + loss": forward, "forward + gradients": forward_backward,
            "whole train step (+ optimizer, metrics)": train_step}


def time_stages(models: dict, batch, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """Median wall ms per call of each stage of each model, rounds interleaving every (model, stage)."""
    x, y = batch
    jobs = {(name, stage): fn for name, model in models.items() for stage, fn in stage_functions(model).items()}
    for fn in jobs.values():
        for _ in range(2):
            out = fn(x, y)
    ms = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, fn in jobs.items():
            started = time.perf_counter()
            for _ in range(steps):
                out = fn(x, y)
            tf.nest.map_structure(lambda t: t.numpy(), out)
            ms[key].append(1e3 * (time.perf_counter() - started) / steps)
    result: dict[str, dict[str, float]] = {}
    for (name, stage), values in ms.items():
        result.setdefault(name, {})[stage] = float(np.median(values))
    return result


def epoch_overheads(size: int, num_classes: int, train, steps_per_epoch: int, repeats: int) -> dict:
    """One-epoch `fit` with run_stage's callbacks vs without, alternating; and one checkpoint write timed alone.

    Two models built alike (ours, project defaults), one always fit with the callbacks and one always without:
    BackupAndRestore's on_train_end deletes an attribute (`_training_state`) that a later `fit` without it reads."""
    from bench.throughput import build_model
    from pipeline.train import EpochLog, Recipe, compile_model, set_batch_norm_momentum

    def ours():
        model = build_model("ours", size, num_classes)
        set_batch_norm_momentum(model, 0.99)
        compile_model(model, Recipe(learning_rate=0.1), steps_per_epoch, epochs=12)
        model.fit(train, epochs=1, steps_per_epoch=steps_per_epoch, verbose=0)  # traces fit's functions
        return model

    workdir = tempfile.mkdtemp(prefix="bench-step-profile-")
    try:
        models = {"with the pipeline's callbacks": ours(), "without callbacks": ours()}
        seconds = {label: [] for label in models}
        for i in range(repeats):
            for label, model in models.items():
                callbacks = [] if label == "without callbacks" else [
                    keras.callbacks.BackupAndRestore(os.path.join(workdir, f"backup{i}")), EpochLog("float"),
                    keras.callbacks.TensorBoard(os.path.join(workdir, f"logs{i}"), update_freq="epoch",
                                                profile_batch=0)]
                started = time.perf_counter()
                model.fit(train, epochs=1, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=callbacks)
                seconds[label].append(time.perf_counter() - started)
        backup = keras.callbacks.BackupAndRestore(os.path.join(workdir, "alone"))
        backup.set_model(models["with the pipeline's callbacks"])
        backup.on_train_begin()
        writes = []
        for epoch in range(3):
            started = time.perf_counter()
            backup.on_epoch_end(epoch)
            writes.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    return {"epoch_seconds": seconds, "median_epoch_seconds": med, "checkpoint_write_seconds": writes,
            "steps_per_epoch": steps_per_epoch}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="profiled steps per model and round")
    p.add_argument("--profile_rounds", type=int, default=3)
    p.add_argument("--stage_rounds", type=int, default=10)
    p.add_argument("--epoch_repeats", type=int, default=3)
    p.add_argument("--parts", default="1,2,3", help="which parts to run: 1 op profile, 2 stages, 3 epoch overheads")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    parts = {int(part) for part in args.parts.split(",")}

    from tflite_export.quantization import quantize_scope

    machine = _common.machine()
    setup = compiled_models(args.image_size, args.batch_size, variants=PROFILED if parts & {1, 2} else ("ours",))
    result = {"machine": machine, "revision": _common.git_revision(), "command": _common.command_line(),
              "config": vars(args), "profile": {}}
    with quantize_scope():
        if 1 in parts:
            op_profile(setup, args, result)
        if 2 in parts:
            stage_table(setup, args, result)
    if 3 in parts:
        epoch_table(setup, args, result)
    print(f"\nmachine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}, end {os.getloadavg()}, {machine['date']}")
    result["loadavg_at_end"] = os.getloadavg()
    _common.write_json(args.json, result)


def op_profile(setup, args, result):
    print("1. op profile", flush=True)
    # Rounds alternate the models (each round traces `steps` steps of every model), so that load changes on a
    # shared machine hit all of them alike; per-step figures are over all rounds.
    sums = {name: [collections.Counter(), collections.Counter(), 0.0, 0.0] for name in setup.entries}
    for _ in range(args.profile_rounds):
        for name, entry in setup.entries.items():
            logdir = tempfile.mkdtemp(prefix="bench-trace-")
            try:
                wall = profile_steps(entry.train_function, entry.iterator, args.steps, logdir)
                times, counts, data_wait = parse_trace(logdir, entry.model.optimizer.name)
            finally:
                shutil.rmtree(logdir, ignore_errors=True)
            total = sums[name]
            total[0].update(times)
            total[1].update(counts)
            total[2] += data_wait
            total[3] += wall
    steps = args.steps * args.profile_rounds
    tables = {name: (dict(t[0]), dict(t[1]), t[2], t[3] / args.profile_rounds) for name, t in sums.items()}
    for name, (times, counts, data_wait, wall) in tables.items():
        result["profile"][name] = {"op_ps": times, "op_counts": counts, "data_wait_ps": data_wait,
                                   "wall_s_per_step_traced": wall, "steps": steps}
    categories = sorted({c for t in tables.values() for c in t[0]}, key=lambda c: -tables["ours"][0].get(c, 0))
    ours_total = sum(tables["ours"][0].values())
    rows = [[c, f"{100 * tables['ours'][0].get(c, 0) / ours_total:.1f}"]
            + [f"{times.get(c, 0) / 1e9 / steps:.1f} ({counts.get(c, 0) / steps:.0f})"
               for times, counts, _, _ in tables.values()] for c in categories]
    rows.append(["all ops (summed op time)", "100"] + [
        f"{sum(times.values()) / 1e9 / steps:.1f} ({sum(counts.values()) / steps:.0f})"
        for times, counts, _, _ in tables.values()])
    rows.append(["wall time per step while tracing", ""] + [f"{1e3 * t[3]:.1f}" for t in tables.values()])
    rows.append(["waiting for tf.data (IteratorGetNext)", ""] + [f"{t[2] / 1e9 / steps:.2f}"
                                                                 for t in tables.values()])
    print(f"\nOp time per training step by op kind, V3-Small 1.0 at {args.image_size} px, batch {args.batch_size} "
          f"({args.profile_rounds} rounds x {args.steps} traced steps per model): ms per step (ops per step)")
    print(_common.table(["op kind", "ours % of op time"] + [f"{name} ms (ops)" for name in tables], rows))



def stage_table(setup, args, result):
    print("\n2. stages", flush=True)
    batch = next(setup.iterator_of_batches())
    stages = time_stages({n: setup.entries[n].model for n in ("ours", "keras.apps", "ours QAT")}, batch,
                         args.stage_rounds, 3)
    result["stages_ms"] = stages
    stage_names = list(next(iter(stages.values())))
    print(f"\nWall ms per call, medians of {args.stage_rounds} interleaved rounds")
    print(_common.table(["stage"] + list(stages), [[s] + [f"{stages[n][s]:.1f}" for n in stages]
                                                   for s in stage_names]))



def epoch_table(setup, args, result):
    print("\n3. epoch overheads (ours float)", flush=True)
    overheads = epoch_overheads(args.image_size, setup.num_classes, setup.train, setup.steps_per_epoch,
                                args.epoch_repeats)
    result["epoch_overheads"] = overheads
    med = overheads["median_epoch_seconds"]
    with_cb, without = med["with the pipeline's callbacks"], med["without callbacks"]
    print(_common.table(["one epoch of model.fit (" + str(setup.steps_per_epoch) + " steps)", "median s"], [
        ["with the pipeline's callbacks (BackupAndRestore, EpochLog, TensorBoard)", f"{with_cb:.2f}"],
        ["without callbacks", f"{without:.2f}"],
        ["difference", f"{with_cb - without:+.2f} ({100 * (with_cb / without - 1):+.1f}%)"],
        ["one BackupAndRestore checkpoint write alone (median of 3)",
         f"{np.median(overheads['checkpoint_write_seconds']):.2f}"],
    ]))


if __name__ == "__main__":
    main()
