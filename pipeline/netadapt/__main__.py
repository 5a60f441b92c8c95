"""NetAdapt (Yang et al., 2018) with latency measured by LiteRT: shrink a trained MobileNetV3 layer by layer until its
int8 model meets a latency target on this machine.

    python -m pipeline.netadapt --run_dir runs/small-photos --target_ratio 0.6 --output_dir runs/small-photos-netadapt
    python -m pipeline.netadapt --run_dir RUN --target_alpha 0.5 --alphas 0.75,0.5     # as fast as alpha 0.5, compared

Each iteration narrows one width group: of the cuts that save at least --delta_ratio of the latency, the one with the
best accuracy change per millisecond saved (after a short fine-tune, scored on training images it did not train on). The
state is saved after every iteration (rerun the same command to resume). At the end, the chosen models and, with
--alphas, the width-multiplier models of the same latency get the same long fine-tune, QAT and int8 export, ranked by
the MnasNet reward. Outputs in --output_dir: arch.json (the final table; keras_models.build(arch=...) accepts it),
search_log.md, netadapt.png, report.json, candidates/<name>/model.tflite. How each part works:
pipeline/netadapt/__init__.py.
"""

from pipeline.netadapt.command import main
from tflite_export.command import run_command

if __name__ == "__main__":
    run_command(main)  # the flags are made from NetAdaptConfig's fields when the command runs, never on import
