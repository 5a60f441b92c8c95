"""Export a trained Keras model as the file users ship: int8 TFLite + metadata + labels + model card, verified.

Library: `export_model(...)`, called at the end of `python -m pipeline.train_and_export`.
CLI:     `python -m tflite_export.export MODEL.h5 --dataset DIR --output_dir DIR [--labels FILE] [--io uint8]`
         `[--hswish lowered] [--logits] [--calibration_images 200]` converts a saved Keras model (float: post-training
         quantization; QAT: its learned ranges).

--logits ends the file at the classifier's logits instead of its softmax: no SOFTMAX op, which XNNPACK cannot run in
int8 and which costs a separate kernel call per inference; the ranking is the same (softmax keeps the order). The
metadata names the output `logits` and the model card says `"activation": "none"`, so apps apply softmax themselves
where they show probabilities (the Android core does).

--dataset is a folder of images for calibration: class sub-folders (`DIR/<class>/*.jpg`, optionally `DIR/train/` and
`DIR/test/` or `DIR/val/`), or a flat folder of unlabelled images. Class folders also give the int8-vs-Keras accuracy
check (on the test/ or val/ split when there is one). The labels packed into the model are --labels, else the class
folders' names, else the `labels.txt` beside the model (a pipeline run directory).

Nothing is written unless conversion and every check pass; the files are published as one set
(`tflite_export.files.ArtifactSet`): a reader sees the previous set or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable, Iterable

import numpy as np

from keras_models.backend import keras
from tflite_export import metadata as tflite_metadata
from tflite_export import verify as tflite_verify
from tflite_export.cli import first_line
from tflite_export.command import REQUIRED, Command, positional, run_command, setting
from tflite_export.convert import ConversionError, RepresentativeData, convert
from tflite_export.evaluate import HeldOutAccuracy, HeldOutPredictions, discover_dataset, map_classes_to_outputs
from tflite_export.files import (
    CARD_FILE,
    EXPORT_RUN,
    LABELS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    ArtifactSet,
    artifact_set,
    atomic_write_bytes,
    check_folder_kind,
    check_writable_dir,
    images_under,
    labels_text,
    load_model_bytes,
    read_labels,
)
from tflite_export.model_card import InputSpec, ModelCard, OutputSpec
from tflite_export.preprocessing import PIXEL_MEAN, PIXEL_STD, dequantize, load_eval_image, quantize_input
from tflite_export.quantization import quantize_scope

EVAL_BATCH = 32
# Post-training calibration needs images to measure ranges on: with none the converter leaves float tensors.
MIN_CALIBRATION_IMAGES = 1


@dataclasses.dataclass
class ModelInfo:
    name: str
    description: str
    version: str = "1.0"
    author: str = "MobileNet mobile deployment pipeline"
    license: str = "Apache-2.0"


def op_resolver(kernels: str):
    """LiteRT's kernel set by name: "xnnpack" (the default, what apps run), "builtin" (TFLite's optimized kernels) or
    "reference"; they round differently (XNNPACK requantizes once in float, the others in fixed point, twice)."""
    from ai_edge_litert.interpreter import OpResolverType

    resolvers = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "reference": OpResolverType.BUILTIN_REF}
    if kernels not in resolvers:
        raise ValueError(f"kernels must be one of {', '.join(resolvers)}, got {kernels!r}")
    return resolvers[kernels]


def run_tflite(model: bytes | str | os.PathLike, images: np.ndarray, num_threads: int = 2, *,
               pixel_bytes: bool = False, kernels: str = "xnnpack") -> np.ndarray:
    """Float pixels [N, H, W, 3] in [0, 255] -> dequantized outputs [N, classes], one image at a time as on a phone.

    The project's contract (mean 0, std 1) quantized with the input's own scale and zero point; `pixel_bytes` feeds a
    uint8 input the pixel bytes themselves whatever its quantization, as apps feed published uint8 models. `kernels`:
    see `op_resolver`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=load_model_bytes(model), num_threads=num_threads,
                              experimental_op_resolver_type=op_resolver(kernels))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    if pixel_bytes and inp["dtype"] != np.uint8:
        raise ValueError(f"pixel bytes need a uint8 input; this model takes {np.dtype(inp['dtype'])}")
    if pixel_bytes:
        in_scale, in_zp = 1.0, 0
    results = []
    for image in images:
        if in_scale:
            tensor = quantize_input(image, mean=0.0, std=1.0, scale=in_scale, zero_point=in_zp, dtype=inp["dtype"])
        else:
            tensor = image.astype(np.float32)
        interpreter.set_tensor(inp["index"], tensor[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        results.append(dequantize(raw, scale=out_scale, zero_point=out_zp) if out_scale else raw.astype(np.float32))
    return np.stack(results)


def compare_with_keras(
    content: bytes, keras_model: keras.Model, batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
    logits: bool = False,
) -> HeldOutAccuracy:
    """Top-1 of the int8 file and of the Keras model on the same held-out images, and how often they agree."""
    return held_out_predictions(content, keras_model, batches, logits=logits).summary()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def ending_at_logits(model: keras.Model) -> keras.Model:
    """`model` (float or QAT) without its final softmax: the same layers and weights, ending at the logits.

    The builders end the classifier in a softmax `Activation` (tfmot wraps it in QAT models); a model that does not
    gets a ConversionError."""
    last = model.layers[-1]
    inner = getattr(last, "layer", last)  # tfmot's QuantizeWrapper keeps the layer it wraps as `.layer`
    is_softmax = isinstance(inner, keras.layers.Softmax) or (
        isinstance(inner, keras.layers.Activation) and inner.get_config().get("activation") == "softmax")
    if not is_softmax:
        raise ConversionError(f"--logits needs a model that ends in a softmax; {model.name} ends in {last.name} "
                              f"({type(inner).__name__})")
    return keras.Model(model.inputs, last.input, name=f"{model.name}_logits")


def held_out_predictions(
    content: bytes, keras_model: keras.Model, batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
    logits: bool = False,
) -> HeldOutPredictions:
    """Every image's int8 outputs (as probabilities: softmax applied when the file ends at its `logits`) and Keras
    top-1, with its label, in the order of `batches`."""
    labels, scores, reference = [], [], []
    for images, batch_labels in batches:
        images = np.asarray(images, np.float32)
        labels.append(np.asarray(batch_labels).reshape(-1))
        outputs = run_tflite(content, images)
        scores.append(softmax(outputs) if logits else outputs)
        reference.append(np.asarray(keras_model.predict_on_batch(images)).argmax(-1))
    if not labels:
        raise ValueError("no evaluation images")
    return HeldOutPredictions(np.concatenate(labels), np.concatenate(scores), np.concatenate(reference))


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and found."""

    model_file: str  # model.tflite in the output folder
    size_bytes: int
    convert_seconds: float
    io_dtype: str  # uint8 or int8
    hswish: str  # lowered or builtin
    output: str  # softmax, or logits (the file ends at the classifier's logits)
    ops: dict[str, int]  # op histogram
    float_tensors: int
    xnnpack_partitions: int | None
    accuracy: HeldOutAccuracy | None = None  # against the Keras model, when evaluation batches were given


INT8_IO_WARNING = ("--io int8: browsers cannot load this model (LiteRT.js and MediaPipe's web runtime take no int8 "
                   "input); --io uint8, the default, makes a browser file")


def model_card(analysis, info: ModelInfo, labels: list[str], hswish: str, logits: bool = False) -> ModelCard:
    inp, out = analysis.inputs[0], analysis.outputs[0]
    return ModelCard(
        **dataclasses.asdict(info),  # name, description, version, author, license: as in the metadata
        model_file=MODEL_FILE,
        labels_file=LABELS_FILE,
        input=InputSpec(height=int(inp.shape[1]), width=int(inp.shape[2]), channels=int(inp.shape[3]),
                        dtype=inp.dtype, scale=float(inp.scale), zero_point=int(inp.zero_point),
                        mean=list(PIXEL_MEAN), std=list(PIXEL_STD)),
        output=OutputSpec(dtype=out.dtype, scale=float(out.scale), zero_point=int(out.zero_point),
                          num_classes=len(labels), activation="none" if logits else "softmax"),
        classes=list(labels),
        hswish=hswish,
        ops=dict(analysis.op_histogram),
    )


def export_model(
    model: keras.Model,
    representative_data: RepresentativeData,
    *,
    output_dir: str,
    labels: list[str],
    info: ModelInfo,
    io_dtype: str = "uint8",
    hswish: str = "lowered",
    eval_batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    reference_model: keras.Model | None = None,
    artifacts: ArtifactSet | None = None,
    logits: bool = False,
) -> ExportResult:
    """Convert, verify, add metadata, write `model.tflite`, `labels.txt`, `model_card.json`; return what was written.

    `reference_model` is the Keras model the int8 accuracy is compared with (defaults to `model`). `logits`: the file
    ends at the classifier's logits (`ending_at_logits`), not its softmax.
    Raises ConversionError / VerificationError before anything is written. The files go into `artifacts` when the
    caller has an open set (the pipeline adds its report to it before publishing), else into a set of their own
    published in `output_dir`.
    """
    num_outputs = model.output_shape[-1]
    if len(labels) != num_outputs:
        raise ConversionError(f"{len(labels)} labels for a model with {num_outputs} outputs")
    if io_dtype == "int8":
        print(f"warning: {INT8_IO_WARNING}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    content = convert(ending_at_logits(model) if logits else model, representative_data, io_dtype=io_dtype,
                      hswish=hswish)
    convert_seconds = time.perf_counter() - started
    analysis = tflite_verify.verify(content, allow_hard_swish=(hswish == "builtin"), io_dtype=io_dtype)
    content = tflite_metadata.write_metadata(content, labels=labels, **dataclasses.asdict(info), mean=PIXEL_MEAN,
                                             std=PIXEL_STD, logits=logits)
    accuracy = None
    if eval_batches is not None:
        accuracy = compare_with_keras(content, reference_model or model, eval_batches(), logits=logits)
    report = ExportResult(
        model_file=os.path.join(output_dir, MODEL_FILE), size_bytes=len(content),
        convert_seconds=round(convert_seconds, 1), io_dtype=io_dtype, hswish=hswish,
        output="logits" if logits else "softmax", ops=dict(analysis.op_histogram),
        float_tensors=len(analysis.float_tensors), xnnpack_partitions=analysis.xnnpack_partitions, accuracy=accuracy)
    own_set = artifact_set(output_dir, replaces=(MODEL_FILE, LABELS_FILE, CARD_FILE, REPORT_FILE))
    with contextlib.nullcontext(artifacts) if artifacts is not None else own_set as files:
        atomic_write_bytes(files.path(LABELS_FILE), labels_text(labels))
        atomic_write_bytes(files.path(CARD_FILE), model_card(analysis, info, labels, hswish, logits).to_json().encode())
        atomic_write_bytes(files.path(MODEL_FILE), content)
    return report


def _load_keras_model(path: str) -> keras.Model:
    if not os.path.exists(path):
        raise ConversionError(f"model file not found: {path}")
    try:
        with quantize_scope():
            model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - corrupt files raise many types
        raise ConversionError(f"could not load a Keras model from {path}: {first_line(err)}") from None
    # A SavedModel of something else loads as a bare object; a Keras model of another kind has other shapes.
    if not isinstance(model, keras.Model):
        raise ConversionError(f"{path} is a SavedModel but not a Keras model (it loads as {type(model).__name__}): "
                              "pass the float_model.h5 or qat_model/ of a pipeline run")
    inputs, outputs = model.inputs, model.outputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3] or len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ConversionError(f"{path} is not an image classifier this tool exports (one [batch, height, width, 3] "
                              f"input, one [batch, classes] output): its inputs are "
                              f"{[tuple(t.shape) for t in inputs]}, its outputs {[tuple(t.shape) for t in outputs]}")
    return model


def _labels_beside(model_path: str) -> str | None:
    """The labels.txt of the folder the model is in (a pipeline run directory keeps its models beside it)."""
    candidate = pathlib.Path(model_path).resolve().parent / LABELS_FILE
    return str(candidate) if candidate.is_file() else None


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The flags of `python -m tflite_export.export` (the positional argument: the saved Keras model, .h5 / .keras /
    SavedModel folder, float or QAT)."""

    dataset: str = setting(REQUIRED, "Folder of images for calibration: class sub-folders (also used for the accuracy "
                           "check) or a flat folder of unlabelled images.")
    output_dir: str = setting(REQUIRED, "Where model.tflite, labels.txt and model_card.json go.")
    io: str = setting("uint8", "Input/output dtype of the TFLite model.", ("uint8", "int8"))
    hswish: str = setting("lowered", "h-swish as ADD/RELU6/MUL ops, or HARD_SWISH.", ("lowered", "builtin"))
    logits: bool = setting(False, "End the file at the logits, not the softmax (no SOFTMAX op; see the module doc).")
    labels: str | None = setting(None, "Labels file (one per line); default: the dataset's class folders, else the "
                                 f"{LABELS_FILE} beside the model.")
    name: str | None = setting(None, "Model name in the metadata and the model card (default: the Keras model's).")
    calibration_images: int = setting(200, "Images for int8 calibration.")


def export_command(options: ExportOptions, args: list[str]) -> int:
    (model_path,) = positional(args, "MODEL: a saved Keras model (.h5, .keras or a SavedModel folder)")
    # Everything that can be refused without the model is refused before loading and converting it (~40 s).
    check_writable_dir(options.output_dir, "--output_dir")
    check_folder_kind(options.output_dir, EXPORT_RUN, "--output_dir")
    if options.calibration_images < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"--calibration_images must be at least {MIN_CALIBRATION_IMAGES}, got "
                         f"{options.calibration_images}")
    labels = read_labels(options.labels, "--labels") if options.labels else None
    labels_source = f"--labels {options.labels}"
    dataset = pathlib.Path(options.dataset)
    train_dir = dataset / "train" if (dataset / "train").is_dir() else dataset
    calibration_files = images_under(train_dir, options.calibration_images)
    has_eval_split = any((dataset / split).is_dir() for split in ("test", "val"))
    # Class indices in sorted folder order; map_classes_to_outputs below turns them into the model's outputs.
    found = discover_dataset(dataset if has_eval_split else train_dir, allow_unlabelled=True)
    if labels is None and not found.class_names:
        beside = _labels_beside(model_path)
        if beside is None:
            raise ValueError(f"--dataset {options.dataset} holds unlabelled images, which name no classes: pass "
                             "--labels with the model's labels file, one line per output")
        labels, labels_source = read_labels(beside), beside
    model = _load_keras_model(model_path)
    size = model.input_shape[1]
    num_outputs = int(model.output_shape[-1])
    if labels is not None and len(labels) != num_outputs:
        raise ValueError(f"{labels_source} has {len(labels)} labels but the model has {num_outputs} outputs")
    eval_batches = None
    if found.class_names:
        # The accuracy check compares the model's argmax with the dataset's class indices: they must be the same
        # outputs.
        classes = map_classes_to_outputs(found.class_names, labels, num_outputs, labels_source=labels_source,
                                         match_names=found.layout == "class-folders")
        if classes["label_offset"]:
            raise ValueError(f"the dataset has {len(found.class_names)} classes and the model {num_outputs} outputs: "
                             "export a model with one output per class")
        labels = labels or found.class_names
        to_output = np.asarray(classes["index"])

        def eval_batches():
            for start in range(0, len(found.items), EVAL_BATCH):
                chunk = found.items[start:start + EVAL_BATCH]
                yield (np.stack([load_eval_image(path, size) for path, _ in chunk]),
                       to_output[[label for _, label in chunk]])

        print(f"classes: {classes['mapping']}")
    info = ModelInfo(name=options.name or model.name,
                     description=f"{model.name} int8 classifier ({len(labels)} classes)")
    report = export_model(
        model,
        lambda: (load_eval_image(path, size)[None] for path in calibration_files),
        output_dir=options.output_dir,
        labels=labels,
        info=info,
        io_dtype=options.io,
        hswish=options.hswish,
        eval_batches=eval_batches,
        logits=options.logits,
    )
    print(f"calibrated on {len(calibration_files)} images of {train_dir}")
    line = f"wrote {report.model_file} ({report.size_bytes:,} bytes)"
    if report.accuracy is not None:
        acc = report.accuracy
        line += (f"; int8 top-1 {acc.int8_top1:.4f}, keras top-1 {acc.keras_top1:.4f}, agreement "
                 f"{acc.agreement:.4f} on {acc.images} labelled images")
    print(line)
    return 0


main = Command("tflite_export.export", ExportOptions, export_command, renamed={"out": "output_dir"})

if __name__ == "__main__":
    run_command(main)
