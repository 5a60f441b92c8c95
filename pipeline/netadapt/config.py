"""The settings of a NetAdapt search: `NetAdaptConfig` (the command's flags, one field each, with their defaults and
help: tflite_export.command makes the flags from it when the command runs) and `StartRun` (what the trained run
folder says about the model the search starts from).

    config = NetAdaptConfig(run_dir="runs/small-photos", target_ratio=0.6)
    start = StartRun.read(config.run_dir)
    config = config.resolved(start)      # the run's data set and resolution filled in, every value checked

Every refusal is a one-line ValueError naming the flag, raised before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from pipeline.config import FLOAT_MODEL_FILE, setting, values_from_flags
from pipeline.run_dir import RUN_CONFIG_FILE, recorded_model, recorded_setting
from tflite_export.files import NETADAPT_SEARCH, check_folder_kind, check_writable_dir

MNASNET_W = -0.07  # MnasNet's soft-constraint exponent; MobileNetV3-Small's search used -0.15
# Settings that count steps, images or runs: each must be at least 1.
_POSITIVE = ("finetune_steps", "final_steps", "qat_steps", "holdout_images", "latency_runs", "latency_rounds",
             "latency_calibration_images", "calibration_images", "calibration_batches", "max_iterations")


@dataclasses.dataclass(frozen=True)
class StartRun:
    """The finished pipeline.train_and_export run a search shrinks, as its folder records it."""

    float_model: str  # its float_model.h5
    variant: str  # "small" or "large" as recorded (checked by NetAdaptConfig.resolved)
    alpha: float
    minimalistic: bool
    num_classes: int | None
    image_size: int  # the run's resolution: the search's unless --image_size says otherwise
    dataset: str | None  # the run's data set, None when the folder does not say
    # The run's own choice: the transfer recipe fine-tunes with BatchNorm frozen (search.prepare_batch_norm).
    freeze_batch_norm: bool

    @classmethod
    def read(cls, run_dir: str | None) -> StartRun:
        """The record of `run_dir`; a folder that is not a finished run is a one-line ValueError."""
        if not run_dir:
            raise ValueError("--run_dir is required (a pipeline.train_and_export run folder)")
        float_model = os.path.join(run_dir, FLOAT_MODEL_FILE)
        config_path = os.path.join(run_dir, RUN_CONFIG_FILE)
        if not os.path.isfile(float_model) or not os.path.isfile(config_path):
            raise ValueError(f"{run_dir} has no {FLOAT_MODEL_FILE} and {RUN_CONFIG_FILE}: not a finished pipeline run")
        model = recorded_model(run_dir)  # the model-defining settings and classes, whichever version wrote the folder
        return cls(float_model=float_model, variant=model.get("variant"), alpha=model.get("alpha", 1.0),
                   minimalistic=model.get("minimalistic", False),
                   num_classes=len(model.get("classes", [])) or None, image_size=model["image_size"],
                   dataset=recorded_setting(run_dir, "dataset"),
                   freeze_batch_norm=recorded_setting(run_dir, "recipe") == "transfer")


@dataclasses.dataclass(frozen=True)
class NetAdaptConfig:
    """Every setting of one search and its final stage. As given, `output_dir`, `dataset` and `image_size` may be None
    (the run's); `resolved(start)` returns the config with the values used."""

    run_dir: str | None = setting(
        None, "A finished pipeline.train_and_export run folder (float_model.h5, run_config.json).")
    output_dir: str | None = setting(None, "Where the search goes (default <run_dir>-netadapt). Rerun to resume.")
    target_ms: float | None = setting(None, "Latency target in ms (int8, 1 thread, this machine).")
    target_ratio: float | None = setting(None, "Latency target as a fraction of the start model's.")
    target_alpha: float | None = setting(None,
                                         "Latency target: that of the same variant at this width multiplier.")
    delta_ratio: float = setting(0.05, "Latency each iteration must save, as a fraction of the current latency "
                                       "(the paper: 0.01; bigger saves iterations here).")
    finetune_steps: int = setting(40, "Short fine-tune of each proposal (T, steps).")
    start_steps: int = setting(0, "Fine-tune steps of the start model before the search (e.g. at a new "
                                  "--image_size).")
    final_steps: int = setting(300, "Float fine-tune steps of the final models (before QAT).")
    qat_steps: int = setting(200, "QAT steps of the final models (the second half with BatchNorm frozen).")
    max_iterations: int = setting(30, "Stop after this many iterations even if the target is not met.")
    search_only: bool = setting(False, "Stop after the search (rerun without it to go on to the final stage).")
    alphas: tuple[float, ...] = setting(
        (), "Width multipliers to compare with (cut from the same start, same training steps).")
    dataset: str | None = setting(None, "Data set (default: the run's).")
    image_size: int | None = setting(None, "Resolution (default: the run's).")
    batch_size: int = setting(64, "Batch size of every fine-tune.")
    learning_rate: float = setting(2e-4,
                                   "Peak learning rate (Adam, cosine) of the fine-tunes; QAT uses a fifth.")
    weight_decay: float = setting(4e-5, "Decoupled weight decay.")
    dropout: float = setting(0.2, "Dropout before the classifier.")
    holdout_images: int = setting(1000, "Training images the proposals are scored on.")
    latency_runs: int = setting(300,
                                "Timed LiteRT runs per model and round (cheap next to converting the candidates).")
    latency_rounds: int = setting(3, "Measurement rounds per iteration to find each group's width.")
    latency_calibration_images: int = setting(4, "Calibration images of the latency-only int8 exports.")
    calibration_images: int = setting(200, "Calibration images of the final int8 exports.")
    calibration_batches: int = setting(10, "Training batches that initialize QAT's activation ranges.")
    reward_w: float = setting(MNASNET_W,
                              "Exponent w of the MnasNet reward (MobileNetV3-Small's search used -0.15).")
    seed: int = setting(0, "Random seed.")

    @classmethod
    def from_flags(cls, flag_values: flags.FlagValues) -> NetAdaptConfig:
        """The config of the parsed flags, as given (not resolved: that needs the run folder)."""
        return cls(**values_from_flags(cls, flag_values))

    def resolved(self, start: StartRun) -> NetAdaptConfig:
        """This config with the run's data set, resolution and the default output folder filled in, checked against
        `start`: one-line ValueErrors naming the flag. Resolving a resolved config changes nothing."""
        dataset = self.dataset or start.dataset
        if not dataset:
            raise ValueError(f"{self.run_dir} does not say which data set it was trained on: pass --dataset")
        if start.variant not in ("small", "large"):
            raise ValueError(f"NetAdapt shrinks MobileNetV3 (small or large); {self.run_dir} holds {start.variant!r}")
        try:
            alphas = tuple(float(a) for a in self.alphas)
        except ValueError:
            raise ValueError(f"--alphas takes numbers, got {','.join(map(str, self.alphas))}") from None
        self._check(alphas, start.alpha)
        output_dir = self.output_dir or os.path.normpath(self.run_dir) + "-netadapt"
        check_writable_dir(output_dir, "--output_dir")
        check_folder_kind(output_dir, NETADAPT_SEARCH, "--output_dir")
        return dataclasses.replace(self, dataset=dataset, image_size=self.image_size or start.image_size,
                                   output_dir=output_dir, alphas=alphas)

    def _check(self, alphas: tuple[float, ...], start_alpha: float) -> None:
        targets = [name for name in ("target_ms", "target_ratio", "target_alpha") if getattr(self, name) is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of --target_ms, --target_ratio, --target_alpha")
        if self.target_ratio is not None and not 0 < self.target_ratio < 1:
            raise ValueError(f"--target_ratio must be in (0, 1), got {self.target_ratio:g}")
        if self.target_ms is not None and self.target_ms <= 0:
            raise ValueError(f"--target_ms must be > 0, got {self.target_ms:g}")
        for a in alphas + ((self.target_alpha,) if self.target_alpha is not None else ()):
            if not 0 < a < start_alpha:
                raise ValueError(f"alpha {a:g} must be in (0, the run's alpha {start_alpha:g})")
        if not 0 < self.delta_ratio < 1:
            raise ValueError(f"--delta_ratio must be in (0, 1), got {self.delta_ratio:g}")
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.start_steps < 0:
            raise ValueError("--start_steps must be >= 0")
        if not 0 <= self.dropout < 1 or self.weight_decay < 0:
            raise ValueError(f"--dropout must be in [0, 1) and --weight_decay >= 0, got {self.dropout:g} and "
                             f"{self.weight_decay:g}")


def settings_record(config: NetAdaptConfig, start: StartRun) -> dict:
    """The search's settings as one record (the state file's and report.json's "settings"): the resolved config and
    the start run's model."""
    return {**dataclasses.asdict(start), **dataclasses.asdict(config), "alphas": list(config.alphas)}
