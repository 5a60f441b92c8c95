"""`python -m tflite_export.evaluate MODEL.tflite --dataset DIR [--labels FILE] [--mean M --std S] [--limit N]
[--json OUT.json|-]`

Top-1/top-5 of a TFLite classifier with the project's evaluation preprocessing (tflite_export.preprocessing: central
87.5% crop, bilinear resize, pixels in [0, 255], then the model's own input quantization).

Datasets:
* a class-folder tree `DIR/<class>/*.jpg`; if DIR has a `test/` (else `val/`) split folder, that split is used;
  class index = position of the folder name in sorted order, or, when labels are known (--labels or the model's
  metadata) and contain every folder name, the label's index;
* the ImageNet-samples flat layout `DIR/<wnid>_<name>.JPEG`: class index = position of the wnid in sorted order.
A model with one output more than the data set has classes (1001 vs 1000: TF-slim's background class at 0) gets its
labels shifted by one. The CLI refuses, with one line saying what to pass, a dataset whose classes cannot be matched
to the model's outputs (`map_classes_to_outputs`): a label file with another line count than the model has outputs,
class folders of which only some are among the labels, or a class count that is neither the output count nor one less.

Normalization: --mean/--std if given, else the model's metadata (NormalizationOptions), else 127.5/127.5 (the
MobileNet convention); the tool prints which it used. How pixels reach the input tensor (--input_mode):
* auto (default): a uint8 input gets the pixel bytes themselves (rounded), as the TFLite Task Library and Android apps
  feed quantized image models (metadata normalization applies to float inputs there); this is what reproduces
  Google's published accuracy of its uint8 models (V3-Small: 78.6% here with raw bytes vs 76.7% when re-quantizing
  with mean/std 127.5 and the input's scale 1/127, zero point 128). For the project's own models (uint8 scale 1,
  zero point 0, mean 0, std 1) both are the same. An int8 input gets `quantize_input(pixels, mean, std, scale,
  zero_point)`, a float input `(pixels - mean) / std`.
* quantize: every integer input gets `quantize_input` with mean/std (tflite_export.preprocessing's contract).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from tflite_export.cli import EXIT_OK
from tflite_export.command import (
    JSON_HELP,
    REQUIRED,
    Command,
    check_json_target,
    emit,
    positional,
    run_command,
    setting,
)
from tflite_export.files import (
    IMAGE_EXTENSIONS,
    image_files,
    load_model_bytes,
    read_labels,
)
from tflite_export.metadata import read_metadata
from tflite_export.preprocessing import load_eval_image, quantize_input
from tflite_export.verify import analyze, check_runs_in_xnnpack

DEFAULT_MEAN = 127.5
DEFAULT_STD = 127.5
_WNID_FILE = re.compile(r"^(n\d{8})_.*$")


# ------------------------------------------------------------------------------------------------------------ datasets
@dataclasses.dataclass(frozen=True)
class ImageSet:
    """The images of a dataset folder and what they are."""

    items: list[tuple[str, int | None]]  # (path, class index), the index None for unlabelled images
    class_names: list[str]  # empty for unlabelled images
    layout: str  # "class-folders", "wnid-flat" or "unlabelled"
    root: str  # the folder the images were taken from (DIR, or its test/ or val/ split)
    mapping: str  # how class indices were assigned


def discover_dataset(dataset: str | os.PathLike, labels: Sequence[str] | None = None, *,
                     allow_unlabelled: bool = False) -> ImageSet:
    """Find the images and their class indices (module docstring). `allow_unlabelled`: a folder of images in no class
    folders and not named by wnid is an "unlabelled" set (calibration needs no labels) rather than an error."""
    root = pathlib.Path(dataset)
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset directory")
    for split in ("test", "val"):
        if (root / split).is_dir():
            root = root / split
            break
    flat = image_files(root)
    wnid_files = [p for p in flat if _WNID_FILE.match(p.name)]
    if wnid_files and len(wnid_files) == len(flat):
        wnids = sorted({_WNID_FILE.match(p.name).group(1) for p in wnid_files})
        index = {w: i for i, w in enumerate(wnids)}
        names = {}
        for p in wnid_files:
            wnid = _WNID_FILE.match(p.name).group(1)
            names.setdefault(wnid, p.stem[len(wnid) + 1:])
        items = [(str(p), index[_WNID_FILE.match(p.name).group(1)]) for p in wnid_files]
        return ImageSet(items, [names[w] for w in wnids], "wnid-flat", str(root), "sorted wnid index")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        if allow_unlabelled and flat:
            return ImageSet([(str(p), None) for p in flat], [], "unlabelled", str(root), "none (unlabelled images)")
        raise ValueError(f"{root}: no class folders and no <wnid>_*.JPEG images")
    mapping = "sorted folder index"
    class_index = {c: i for i, c in enumerate(classes)}
    if labels:
        by_name = {str(label).strip().lower(): i for i, label in enumerate(labels)}
        if all(c.lower() in by_name for c in classes):
            class_index = {c: by_name[c.lower()] for c in classes}
            mapping = "label-file index by folder name"
    items = [(str(p), class_index[c]) for c in classes for p in image_files(root / c)]
    if not items:
        raise ValueError(f"{root}: class folders contain no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(items, classes, "class-folders", str(root), mapping)


def map_classes_to_outputs(classes: Sequence[str], labels: Sequence[str] | None, num_outputs: int, *,
                           labels_source: str = "--labels", match_names: bool = True) -> dict:
    """Which model output each dataset class is: {index: [output per class], mapping: how, label_offset: 0 or 1}.

    By name when every class is among `labels` (one label per output); otherwise by position (sorted class order),
    which needs one class per output, or one output more (TF-slim's background class at output 0). Anything else
    would score a meaningless number, so it raises ValueError naming what to pass instead. `match_names=False` for
    layouts whose class order is the model's by construction (ImageNet wnids in sorted order).
    """
    classes = list(classes)
    if labels is not None and len(labels) != num_outputs:
        background = " ('background' first for a 1001-output model)" if num_outputs == len(labels) + 1 else ""
        raise ValueError(f"{labels_source} has {len(labels)} labels but the model has {num_outputs} outputs: pass the "
                         f"model's own label file, one line per output{background}")
    if labels and match_names:
        by_name = {str(label).strip().lower(): i for i, label in enumerate(labels)}
        missing = [c for c in classes if c.lower() not in by_name]
        if not missing:
            return {"index": [by_name[c.lower()] for c in classes], "mapping": "label-file index by folder name",
                    "label_offset": 0}
        if len(missing) < len(classes):
            raise ValueError(f"{len(missing)} of {len(classes)} class folders are not among the model's labels "
                             f"({labels_source}), e.g. {', '.join(repr(c) for c in missing[:3])}: name every class "
                             "folder as the label of its output")
    if len(classes) in (num_outputs, num_outputs - 1):
        offset = num_outputs - len(classes)
        return {"index": [i + offset for i in range(len(classes))],
                "mapping": "sorted folder index" + (" + 1 (background class at output 0)" if offset else ""),
                "label_offset": offset}
    hint = ("or name the class folders as the model's labels" if labels else
            "or pass --labels with the model's label file so that folders are matched by name")
    raise ValueError(f"the dataset has {len(classes)} classes but the model has {num_outputs} outputs, and its folders "
                     f"are not named after the model's labels: use a dataset with one class per output, {hint}")


# ---------------------------------------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class InputTensor:
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Top-1/top-5 of a TFLite classifier (`evaluate_tflite`; the command's --json)."""

    model: str
    n: int  # images evaluated
    top1: float  # fractions
    top5: float
    correct_top1: int
    correct_top5: int
    mean: list[float]  # the normalization used, and where it came from
    std: list[float]
    normalization_source: str
    input_feed: str  # how pixels reached the input tensor
    label_offset: int  # added to each class index (1: the model has a background class at output 0)
    num_outputs: int
    input: InputTensor
    seconds: float
    # The data set, when the command read it from a folder (`discover_dataset`).
    dataset: str | None = None
    layout: str | None = None
    class_mapping: str | None = None
    num_classes: int | None = None


def _model_normalization(data: bytes) -> tuple[list[float] | None, list[float] | None, list[str] | None, str | None]:
    """(mean, std, labels, note) from the model's metadata, or Nones (note says why) when there is none/unreadable."""
    try:
        md = read_metadata(data)
    except ValueError as exc:
        return None, None, None, f"metadata unreadable ({exc})"
    if not md:
        return None, None, None, None
    return md.get("mean"), md.get("std"), md.get("labels"), None


def evaluate_tflite(
    model_path,
    images: Iterable[tuple[str, int]],
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    num_classes: int | None = None,
    label_offset: int | None = None,
    limit: int | None = None,
    num_threads: int = 2,
    input_mode: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Top-1/top-5 of a TFLite classifier over (image path, class index) pairs.

    mean/std: None -> the model's metadata, else 127.5/127.5. input_mode: "auto" (uint8 input = pixel bytes, see the
    module doc) or "quantize" (quantize_input with mean/std for any integer input). label_offset: None -> 1 when the
    model has exactly one output more than `num_classes` (background class), else 0.
    """
    from ai_edge_litert.interpreter import Interpreter

    if input_mode not in ("auto", "quantize"):
        raise ValueError(f"input_mode must be 'auto' or 'quantize', got {input_mode!r}")
    data = load_model_bytes(model_path)
    source = "given"
    if mean is None or std is None:
        md_mean, md_std, _, note = _model_normalization(data)
        if md_mean is not None and md_std is not None:
            mean = md_mean if mean is None else mean
            std = md_std if std is None else std
            source = "model metadata"
        else:
            mean = DEFAULT_MEAN if mean is None else mean
            std = DEFAULT_STD if std is None else std
            source = "default 127.5/127.5 (MobileNet convention; " + (note or "no metadata") + ")"
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    if np.any(std_arr == 0):
        raise ValueError("std must not be 0")

    check_runs_in_xnnpack(data, model_path)
    interpreter = Interpreter(model_content=data, num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    shape = [int(v) for v in inp["shape"]]
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ValueError(f"expected a square RGB image input [1, S, S, 3], got {shape}")
    size = shape[1]
    in_dtype = np.dtype(inp["dtype"])
    scale, zero_point = inp["quantization"]
    out_dim = int(out["shape"][-1])
    if label_offset is None:
        label_offset = 1 if num_classes is not None and out_dim == num_classes + 1 else 0
    k = min(5, out_dim)
    raw_bytes = input_mode == "auto" and in_dtype == np.uint8
    feed = "uint8 pixel bytes (Task Library / Android convention)" if raw_bytes else (
        f"quantize_input(mean, std, scale={scale:.6g}, zero_point={zero_point})"
        if np.issubdtype(in_dtype, np.integer) else "(pixels - mean) / std")

    items = list(images)
    if limit is not None:
        items = items[: max(0, int(limit))]
    if not items:
        raise ValueError("no images to evaluate")
    correct1 = correct5 = 0
    start = time.perf_counter()
    for count, (path, label) in enumerate(items, 1):
        try:
            pixels = load_eval_image(str(path), size)
        except Exception as exc:  # noqa: BLE001  (TF raises InvalidArgumentError for undecodable files)
            raise ValueError(f"{path}: cannot decode image ({type(exc).__name__})") from None
        if raw_bytes:
            tensor = quantize_input(pixels, mean=0.0, std=1.0, scale=1.0, zero_point=0, dtype=np.uint8)
        elif np.issubdtype(in_dtype, np.integer):
            if not scale:
                raise ValueError(f"integer input {inp['name']!r} has no quantization scale")
            tensor = quantize_input(pixels, mean=mean_arr, std=std_arr, scale=scale, zero_point=zero_point,
                                    dtype=in_dtype)
        else:
            tensor = ((pixels - mean_arr) / std_arr).astype(in_dtype)
        interpreter.set_tensor(inp["index"], tensor[np.newaxis])
        interpreter.invoke()
        scores = interpreter.get_tensor(out["index"]).reshape(-1)
        target = int(label) + label_offset
        # stable descending order: among equal (quantized) scores the lower index ranks first, like argmax
        top = np.argsort(-scores.astype(np.float64), kind="stable")[:k]
        correct1 += int(top[0] == target)
        correct5 += int(target in top)
        if progress is not None:
            progress(count, len(items))
    seconds = time.perf_counter() - start
    n = len(items)
    return Evaluation(
        model=str(model_path), n=n, top1=correct1 / n, top5=correct5 / n, correct_top1=correct1,
        correct_top5=correct5, mean=[float(v) for v in mean_arr], std=[float(v) for v in std_arr],
        normalization_source=source, input_feed=feed, label_offset=label_offset, num_outputs=out_dim,
        input=InputTensor(shape=shape, dtype=in_dtype.name, scale=float(scale), zero_point=int(zero_point)),
        seconds=seconds)


@dataclasses.dataclass(frozen=True)
class HeldOutAccuracy:
    """Top-1 of an int8 file and of the Keras model it came from, on the same held-out images."""

    images: int
    keras_top1: float
    int8_top1: float
    agreement: float  # fraction of images where the two have the same top-1


@dataclasses.dataclass(frozen=True)
class HeldOutPredictions:
    """Per-image results of an int8 model and the Keras model it came from on labelled images, in the order given:
    what the accuracies, the confusion matrix and the worst-classified images of a report are computed from."""

    labels: np.ndarray  # int [N]: the true class, as a model output index
    scores: np.ndarray  # float32 [N, outputs]: the int8 model's dequantized outputs (softmax probabilities)
    reference: np.ndarray  # int [N]: the Keras model's top-1

    @property
    def predicted(self) -> np.ndarray:
        return self.scores.argmax(-1)

    def summary(self) -> HeldOutAccuracy:
        """Top-1 of the int8 file and of the Keras model on the same images, and how often they agree."""
        total = len(self.labels)
        if not total:
            raise ValueError("no evaluation images")
        return HeldOutAccuracy(images=total, keras_top1=float(np.mean(self.reference == self.labels)),
                               int8_top1=float(np.mean(self.predicted == self.labels)),
                               agreement=float(np.mean(self.predicted == self.reference)))

    def confusion_matrix(self) -> np.ndarray:
        """int [true, predicted] image counts of the int8 model, one row and one column per model output."""
        outputs = self.scores.shape[-1]
        cells = np.bincount(self.labels.astype(np.int64) * outputs + self.predicted, minlength=outputs * outputs)
        return cells.reshape(outputs, outputs)

    def worst(self, count: int) -> list[int]:
        """Indices of up to `count` worst-classified images: the int8 model's mistakes, most confident first, then (when
        there are fewer mistakes) the correct ones it was least sure of."""
        index = np.arange(len(self.labels))
        confidence = self.scores[index, self.predicted]
        wrong = self.predicted != self.labels
        mistakes = index[wrong][np.argsort(-confidence[wrong], kind="stable")]
        unsure = index[~wrong][np.argsort(confidence[~wrong], kind="stable")]
        return [int(i) for i in np.concatenate([mistakes, unsure])[:count]]


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """The flags of `python -m tflite_export.evaluate`."""

    dataset: str = setting(REQUIRED, "Class-folder tree (optionally with test/ or val/) or the imagenet-samples flat "
                           "layout.")
    labels: str | None = setting(None, "Label file of the model's outputs (maps class folders by name).")
    mean: float | None = setting(None, "Normalization mean (default: metadata, else 127.5).")
    std: float | None = setting(None, "Normalization std (default: metadata, else 127.5).")
    limit: int | None = setting(None, "Evaluate only the first N images.")
    input_mode: str = setting("auto", "auto: uint8 inputs get the pixel bytes (Task Library convention); quantize: "
                              "quantize_input with mean/std for every integer input.", ("auto", "quantize"))
    threads: int = setting(2, "LiteRT threads.")
    json: str | None = setting(None, JSON_HELP)


def evaluate_command(options: EvaluateOptions, args: list[str]) -> int:
    check_json_target(options.json)  # before the evaluation, not after it
    (model,) = positional(args, "MODEL: a .tflite file")
    if (options.mean is None) != (options.std is None):
        raise ValueError("give both --mean and --std, or neither")
    if options.std == 0:
        raise ValueError("--std must not be 0")
    if options.mean is not None and not (math.isfinite(options.mean) and math.isfinite(options.std)):
        raise ValueError(f"--mean and --std must be finite numbers, got {options.mean:g} and {options.std:g}")
    data = load_model_bytes(model)  # fail fast, before scanning the data set
    outputs = analyze(data, xnnpack=False).outputs
    if len(outputs) != 1 or not outputs[0].shape:
        raise ValueError(f"{model}: expected a classifier with one output tensor, found {len(outputs)}")
    num_outputs = int(outputs[0].shape[-1])
    labels, labels_source = (read_labels(options.labels, "--labels"), f"--labels {options.labels}") \
        if options.labels else (None, "")
    if labels is None:
        _, _, labels, _ = _model_normalization(data)
        labels_source = "the model's metadata"
    dataset = discover_dataset(options.dataset)
    classes = map_classes_to_outputs(dataset.class_names, labels, num_outputs, labels_source=labels_source,
                                     match_names=dataset.layout == "class-folders")
    items = [(path, classes["index"][label]) for path, label in dataset.items]
    result = evaluate_tflite(model, items, mean=options.mean, std=options.std, label_offset=0, limit=options.limit,
                             num_threads=options.threads, input_mode=options.input_mode)
    result = dataclasses.replace(result, dataset=dataset.root, layout=dataset.layout, class_mapping=classes["mapping"],
                                 label_offset=classes["label_offset"], num_classes=len(dataset.class_names))
    emit(format_evaluation(result), result, options.json)
    return EXIT_OK


def format_evaluation(result: Evaluation) -> str:
    background = ", labels shifted by 1 for the background class" if result.label_offset else ""
    return "\n".join([
        f"normalization: mean={result.mean} std={result.std} ({result.normalization_source}); input "
        f"{result.input.dtype} fed as {result.input_feed}",
        f"dataset: {result.dataset} ({result.layout}, {result.num_classes} classes, {result.class_mapping}"
        f"{background})",
        f"top-1: {100 * result.top1:.2f}%  top-5: {100 * result.top5:.2f}%  ({result.n} images, "
        f"{result.seconds:.1f} s)"])


main = Command("tflite_export.evaluate", EvaluateOptions, evaluate_command)

if __name__ == "__main__":
    run_command(main)
