"""`python -m pipeline.netadapt`: the search (resumed from --output_dir's state file), then the final stage. `main` is
its tflite_export.command.Command: the flags are NetAdaptConfig's fields.

Outputs in --output_dir: arch.json (the final table; keras_models.build(arch=...) accepts it), search_log.md,
netadapt.png, report.json, candidates/<name>/model.tflite. Exit status 2 on a bad setting or input (one
`pipeline.netadapt: error: ...` line), 1 when the search stopped above its latency target (its models are finished
all the same).
"""

from __future__ import annotations

import os
import sys

from keras_models.mobilenet_v3 import ArchTable
from pipeline.netadapt.config import NetAdaptConfig, StartRun
from pipeline.netadapt.final import NetAdaptReport, final_stage, plot
from pipeline.netadapt.search import (
    STATE_FILE,
    TARGET_KEYS,
    Context,
    SearchState,
    iterate,
    resumable_state,
    retarget,
    start_search,
)
from tflite_export.command import Command, positional
from tflite_export.files import atomic_write_json


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


def run(config: NetAdaptConfig, start: StartRun | None = None) -> NetAdaptReport | None:
    """Search (resuming from the state file), then the final stage; returns its report (None with `search_only`).
    `start`: the run folder's record (default: read from `config.run_dir`). A search that stops above its target
    still finishes its models, then raises TargetNotMet."""
    start = start or StartRun.read(config.run_dir)
    config = config.resolved(start)
    state = resumable_state(config, start)
    ctx = Context(config, start)
    log = SearchLog(os.path.join(ctx.out, "search_log.md"))
    state_path = os.path.join(ctx.out, STATE_FILE)
    if state is not None:
        log(f"\n(resumed after iteration {state.snapshots[-1].iteration})")
        if any(state.settings.get(key) != getattr(config, key) for key in TARGET_KEYS):
            retarget(ctx, state, log)
            state.save(state_path)
    else:
        log(f"# NetAdapt search of {config.run_dir}\n\nproposals scored on {ctx.holdout_note}; "
            f"delta {config.delta_ratio:g} x current latency; T = {config.finetune_steps} steps")
        state = start_search(ctx, log)
        state.save(state_path)
    while not state.done(config.max_iterations):
        iterate(ctx, state, log)
        state.save(state_path)
    final = ArchTable.from_json(state.snapshots[-1].arch)
    atomic_write_json(os.path.join(ctx.out, "arch.json"), final.to_json())
    log(f"\n## final architecture ({state.snapshots[-1].ratio_to_start:.3f} x start latency, search "
        f"{state.seconds / 60:.1f} min)\n\n```\n{final.format(config.image_size, len(ctx.classes))}\n```")
    shortfall = target_shortfall(state, config.max_iterations)
    if shortfall:
        log(f"\n{shortfall}")
    if config.search_only:
        log(f"\nsearch stopped after iteration {state.snapshots[-1].iteration} (--search_only); rerun without it "
            "to go on to the final stage")
        report = None
    else:
        report = final_stage(ctx, state, log)
        plot(report, os.path.join(ctx.out, "netadapt.png"))
        log(f"\narchitecture: {os.path.join(ctx.out, 'arch.json')}; plot: {os.path.join(ctx.out, 'netadapt.png')}")
    if shortfall:
        raise TargetNotMet(shortfall)
    return report


def netadapt_command(config: NetAdaptConfig, args: list[str]) -> int:
    """The command on its parsed flags: bad settings and inputs raise one-line errors (exit 2); a search that stopped
    above its target prints its line and exits 1 (its models are finished all the same)."""
    positional(args, "no positional arguments: every setting is a flag", least=0, most=0)
    try:
        run(config)
    except TargetNotMet as shortfall:  # the search ran and its models are finished, but the target was asked for
        print(f"{main.name}: error: {shortfall}", file=sys.stderr)
        return 1
    return 0


main = Command("pipeline.netadapt", NetAdaptConfig, netadapt_command)
