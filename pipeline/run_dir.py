"""The run folder's records: `run_config.json`, what a rerun into the folder is checked against.

`run_config.json` in the output folder records the config of the run that started the folder, with the classes of its
data, so that a rerun which would build another model from its checkpoints is refused before loading data
(`check_run_directory`). Folders from before the record was versioned (a flat object of the model-defining fields), or
from before it existed (only a report.json), are checked against what they hold.
"""

from __future__ import annotations

import dataclasses
import os

import keras_models
from pipeline import schema
from pipeline.config import MODEL_FIELDS, RunConfig
from pipeline.report import REPORT_FILE, Report
from pipeline.train import check_same_settings
from tflite_export.files import atomic_write_json

RUN_CONFIG_FILE = "run_config.json"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """run_config.json: the config of the run that started the folder and the classes of its data."""

    # 1: a flat object of the model-defining fields and the classes (no schema_version); 2: with --head_epochs
    SCHEMA_VERSION = 3

    schema_version: int
    config: RunConfig
    classes: list[str]


def write_run_record(config: RunConfig, classes: list[str]) -> None:
    """Record the folder's model once: reruns are checked against the run that made its checkpoints."""
    path = os.path.join(config.output_dir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        atomic_write_json(path, schema.to_json_dict(RunRecord(RunRecord.SCHEMA_VERSION, config, list(classes))))


def forget_unresumable_run(output_dir: str) -> None:
    """After a failed first run: when it left nothing to resume (no finished stage, no epoch checkpoint), remove its
    run record and stage settings, so that a corrected command is a new run instead of a refused "resume"."""
    checkpoints = os.path.join(output_dir, "checkpoints")
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    if any(name.endswith(".weights.h5") or (name.endswith("_backup") and os.listdir(os.path.join(checkpoints, name)))
           for name in names):
        return
    for name in names:
        if name.endswith(".settings.json"):
            os.remove(os.path.join(checkpoints, name))
    if os.path.exists(os.path.join(output_dir, RUN_CONFIG_FILE)):
        os.remove(os.path.join(output_dir, RUN_CONFIG_FILE))


def recorded_model(output_dir: str) -> dict | None:
    """The model-defining fields (and classes) the folder's checkpoints were made with, or None for a new folder.

    From run_config.json; for folders from before it existed, from their report.json."""
    path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if os.path.exists(path):
        data = schema.read_json(path)
        if "schema_version" not in data:  # version 1: the flat record of the model-defining fields
            return data
        record = schema.read_record(RunRecord, path, "run record", "resume it with the pipeline version that made "
                                    "the folder, or pass a fresh --output_dir")
        return {**record.config.model_definition, "classes": record.classes}
    path = os.path.join(output_dir, REPORT_FILE)
    if not os.path.exists(path):
        return None
    data = schema.read_json(path)
    if "schema_version" in data:
        report = Report.read(path)
        return {**report.config.model_definition, "classes": report.data.classes}
    # A report.json of version 1 (untyped): what model the folder holds is all this reads of it.
    config = data.get("config", {})
    legacy = {key: config[key] for key in MODEL_FIELDS if key in config}
    if "variant" in config:
        legacy["variant"] = keras_models.canonical_variant(config["variant"])
    if "classes" in data.get("data", {}):
        legacy["classes"] = data["data"]["classes"]
    return legacy


def recorded_setting(output_dir: str, name: str):
    """One setting (the data set, the recipe) of the run that made `output_dir`, or None: from run_config.json's typed
    record, else report.json's config; every version of both keeps its settings under "config"."""
    for record in (RUN_CONFIG_FILE, REPORT_FILE):
        path = os.path.join(output_dir, record)
        if os.path.exists(path):
            value = schema.read_json(path).get("config", {}).get(name)
            if value:
                return value
    return None


def check_run_directory(config: RunConfig, recorded: dict | None, classes: list[str] | None = None) -> None:
    """Refuse a rerun that would build another model from the folder's checkpoints and weights (ValueError naming the
    settings that differ). Called with the config before the data is loaded, then with its classes."""
    if recorded is None:
        return
    settings = config.model_definition if classes is None else {"classes": list(classes)}
    check_same_settings("", {k: v for k, v in settings.items() if k in recorded}, "a run made", config.output_dir,
                        recorded=recorded)
