"""NetAdapt (Yang et al., 2018) with latency measured by LiteRT: shrink a trained MobileNetV3 layer by layer until its
int8 model meets a latency target on this machine.

    python -m pipeline.netadapt --run_dir runs/small-photos --target_ratio 0.6 --output_dir runs/small-photos-netadapt
    python -m pipeline.netadapt --run_dir RUN --target_alpha 0.5 --alphas 0.75,0.5     # as fast as alpha 0.5, compared

From Python: `pipeline.netadapt.run(NetAdaptConfig(run_dir="runs/small-photos", target_ratio=0.6))`.

Each iteration, for every width group (the stem; each bneck's expansion; the output width of each chain of
residual-connected bnecks, which must stay equal; the last stage's two 1x1 convs) the group's proposal is the widest
measured width, a multiple of 8, whose int8 model is at least `--delta_ratio` x the current latency faster than the
current model; each proposal inherits the current weights, is fine-tuned briefly and scored, and the best accuracy
change per latency saved is kept. The parts, one module each:

- `widths`: the width groups, an architecture with one group narrowed, and its model cut from a trained one;
- `latency`: the int8 files of candidates and their side-by-side timing, and each group's proposed width;
- `search`: the short fine-tunes, the pick, the iterations and the resumable state;
- `final`: the chosen and the alpha models' long fine-tune, QAT and int8 export, the report and its plot;
- `config`: the settings (`NetAdaptConfig`, whose fields are the command's flags) and the start run's record;
- `command`: `run` and the command's `main`, a tflite_export.command.Command (`python -m pipeline.netadapt`).
"""

from pipeline.netadapt.command import SearchLog, TargetNotMet, main, netadapt_command, run, target_shortfall
from pipeline.netadapt.config import MNASNET_W, NetAdaptConfig, StartRun, settings_record
from pipeline.netadapt.final import (
    MATCH_MARGIN,
    Candidate,
    FinishedModel,
    NetAdaptReport,
    final_stage,
    finish,
    mnasnet_reward,
    plot,
)
from pipeline.netadapt.latency import LatencyMeter, Proposal, propose_widths
from pipeline.netadapt.search import (
    LATER_SEARCH_KEYS,
    SEARCH_KEYS,
    STATE_FILE,
    TARGET_KEYS,
    Context,
    SearchState,
    Snapshot,
    evaluate,
    holdout_set,
    iterate,
    pick,
    prepare_batch_norm,
    short_finetune,
)
from pipeline.netadapt.widths import (
    MIN_WIDTH,
    Group,
    build,
    carry_weights,
    channel_axes,
    cut_model,
    filter_importance,
    group_width,
    kept_channels,
    madds_per_channel,
    recalibrate_batch_norm,
    same_residuals,
    width_groups,
    with_width,
)

__all__ = [
    "LATER_SEARCH_KEYS", "MATCH_MARGIN", "MIN_WIDTH", "MNASNET_W", "SEARCH_KEYS", "STATE_FILE", "TARGET_KEYS",
    "Candidate", "Context", "FinishedModel", "Group", "LatencyMeter", "NetAdaptConfig", "NetAdaptReport", "Proposal",
    "SearchLog", "SearchState", "Snapshot", "StartRun", "TargetNotMet", "build", "carry_weights", "channel_axes",
    "cut_model", "evaluate", "filter_importance", "final_stage", "finish", "group_width", "holdout_set", "iterate",
    "kept_channels", "madds_per_channel", "main", "mnasnet_reward", "netadapt_command", "pick", "plot",
    "prepare_batch_norm", "propose_widths", "recalibrate_batch_norm", "run", "same_residuals", "settings_record",
    "short_finetune", "target_shortfall", "width_groups", "with_width",
]
