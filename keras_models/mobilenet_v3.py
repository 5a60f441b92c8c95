"""MobileNetV3-Large and -Small (Howard et al., 2019), plus the minimalistic variants.

The tables below are Tables 1 and 2 of the paper. Layer names and weight shapes equal keras.applications'
MobileNetV3Large/Small, so official Keras weight files load by name; the only difference is how h-swish is written
(see blocks.hard_swish), which keeps the int8 TFLite model free of HARD_SWISH ops.

Every model is built from an `ArchTable`: the paper's rows with explicit channel counts (stem, each bneck's expansion
and output, the last stage's two widths). `ArchTable.paper(model_type, alpha, minimalistic)` applies the width
multiplier the way keras.applications does; a table with other per-layer widths (pipeline.netadapt's result) goes
through the same builder, is saved as JSON and printed like the paper's tables.
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

from keras_models.backend import keras
from keras_models.blocks import ACTIVATIONS, batch_norm, correct_pad, make_divisible, squeeze_excite
from keras_models.common import check_common_args, classifier_activation, features_head, image_input

layers = keras.layers


class Bneck(NamedTuple):
    """One row of the paper's table: a bottleneck (inverted residual) block."""

    kernel: int  # depthwise kernel size
    exp: int  # expansion size (channels after the 1x1 expand conv) at alpha=1
    out: int  # output channels at alpha=1
    se: bool  # squeeze-and-excite after the depthwise conv
    nl: str  # non-linearity: "RE" (ReLU) or "HS" (h-swish)
    stride: int


# Table 1: MobileNetV3-Large. Input 224x224x3 -> conv2d 3x3, 16, HS, s2 -> these bnecks -> last stage.
LARGE = [
    Bneck(3, 16, 16, False, "RE", 1),
    Bneck(3, 64, 24, False, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 1),
    Bneck(5, 72, 40, True, "RE", 2),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(3, 240, 80, False, "HS", 2),
    Bneck(3, 200, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 480, 112, True, "HS", 1),
    Bneck(3, 672, 112, True, "HS", 1),
    Bneck(5, 672, 160, True, "HS", 2),
    Bneck(5, 960, 160, True, "HS", 1),
    Bneck(5, 960, 160, True, "HS", 1),
]

# Table 2: MobileNetV3-Small.
SMALL = [
    Bneck(3, 16, 16, True, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 2),
    Bneck(3, 88, 24, False, "RE", 1),
    Bneck(5, 96, 40, True, "HS", 2),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 120, 48, True, "HS", 1),
    Bneck(5, 144, 48, True, "HS", 1),
    Bneck(5, 288, 96, True, "HS", 2),
    Bneck(5, 576, 96, True, "HS", 1),
    Bneck(5, 576, 96, True, "HS", 1),
]

STEM_FILTERS = 16  # the paper halves the stem from 32 to 16 filters thanks to h-swish
SE_RATIO = 0.25  # squeeze to 1/4 of the expansion channels
# Efficient last stage: 1x1 conv to 6x the last bneck width, pool, then a 1x1 conv (no BN) at this width.
LAST_POINT_FILTERS = {"large": 1280, "small": 1024}
TABLES = {"large": LARGE, "small": SMALL}


def minimalistic_row(row: Bneck) -> Bneck:
    """The minimalistic models drop SE, h-swish and 5x5 kernels (for hardware that lacks them)."""
    return row._replace(kernel=3, se=False, nl="RE")


class ArchTableError(ValueError):
    """An architecture table that cannot be built; the message says which entry and why."""


@dataclasses.dataclass(frozen=True)
class ArchTable:
    """A MobileNetV3 with explicit widths: the stem conv, the bneck rows (exp and out are channel counts, not
    alpha=1 values), the last stage's 1x1 conv (`last_conv`, BatchNorm) and the pooled 1x1 conv (`last_point`).

    The first bneck has no expand conv: its `exp` is the stem width. A bneck has a residual connection when its stride
    is 1 and its input and output widths are equal (the paper's rule). SE squeezes to make_divisible(exp / 4).
    """

    model_type: str  # "large" or "small": names the model
    stem: int
    blocks: tuple[Bneck, ...]
    last_conv: int
    last_point: int
    head_nl: str = "HS"  # non-linearity of the stem and the last stage (RE for the minimalistic models)
    minimalistic: bool = False  # names the model "..._minimalistic"

    @classmethod
    def paper(cls, model_type: str, alpha: float = 1.0, minimalistic: bool = False) -> ArchTable:
        """Table 1 or 2 at width multiplier `alpha`, with the channel counts keras.applications builds."""
        if model_type not in TABLES:
            raise ValueError(f"model_type must be one of {sorted(TABLES)}, got {model_type!r}")
        rows = [minimalistic_row(r) for r in TABLES[model_type]] if minimalistic else TABLES[model_type]
        blocks, in_filters, in_filters_at_1 = [], STEM_FILTERS, STEM_FILTERS  # the stem is not width-scaled
        for row in rows:
            # Expansion is kept as the paper's ratio exp/in so that width-scaled models match keras.applications.
            expanded = make_divisible(in_filters * (row.exp / in_filters_at_1))
            out = make_divisible(row.out * alpha)
            blocks.append(row._replace(exp=expanded, out=out))
            in_filters, in_filters_at_1 = out, row.out
        last_point = LAST_POINT_FILTERS[model_type]
        return cls(model_type=model_type, stem=STEM_FILTERS, blocks=tuple(blocks),
                   last_conv=make_divisible(in_filters * 6),
                   last_point=make_divisible(last_point * alpha) if alpha > 1.0 else last_point,
                   head_nl="RE" if minimalistic else "HS", minimalistic=minimalistic)

    def in_filters(self, index: int) -> int:
        return self.stem if index == 0 else self.blocks[index - 1].out

    def residual(self, index: int) -> bool:
        row = self.blocks[index]
        return row.stride == 1 and self.in_filters(index) == row.out

    def validate(self) -> None:
        if self.model_type not in TABLES:
            raise ArchTableError(f"model_type must be one of {sorted(TABLES)}, got {self.model_type!r}")
        if not self.blocks:
            raise ArchTableError("an architecture table needs at least one bneck")
        if self.head_nl not in ACTIVATIONS:
            raise ArchTableError(f"head_nl must be one of {sorted(ACTIVATIONS)}, got {self.head_nl!r}")
        for name in ("stem", "last_conv", "last_point"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ArchTableError(f"{name} must be a positive channel count, got {getattr(self, name)!r}")
        for i, row in enumerate(self.blocks):
            if min(row.exp, row.out) < 1 or row.stride not in (1, 2) or row.kernel < 1 or row.nl not in ACTIVATIONS:
                raise ArchTableError(f"bneck {i} {tuple(row)}: channels must be >= 1, stride 1 or 2, nl one of "
                                     f"{sorted(ACTIVATIONS)}")
        if self.blocks[0].exp != self.stem:
            raise ArchTableError(f"the first bneck has no expand conv: its exp ({self.blocks[0].exp}) must equal the "
                                 f"stem width ({self.stem})")

    def to_json(self) -> dict:
        return {"model_type": self.model_type, "stem": self.stem, "head_nl": self.head_nl,
                "minimalistic": self.minimalistic, "last_conv": self.last_conv, "last_point": self.last_point,
                "bnecks": [dict(row._asdict()) for row in self.blocks]}

    @classmethod
    def from_json(cls, payload: dict) -> ArchTable:
        """The table `to_json` wrote; every value must be of its JSON type (a "stride" of 1.9, an "se" of "false" or
        an "out" of true are refused, naming the key, instead of being read as 1, True and 1)."""
        if not isinstance(payload, dict):
            raise ArchTableError("not an architecture table (a JSON object)")
        bnecks = _field(payload, "bnecks", list, "")
        if not all(isinstance(b, dict) for b in bnecks):
            raise ArchTableError("'bnecks' must be a list of objects")
        table = cls(model_type=_field(payload, "model_type", str, ""), stem=_field(payload, "stem", int, ""),
                    blocks=tuple(Bneck(*(_field(b, name, kind, f"bneck {i}: ") for name, kind in BNECK_FIELDS))
                                 for i, b in enumerate(bnecks)),
                    last_conv=_field(payload, "last_conv", int, ""), last_point=_field(payload, "last_point", int, ""),
                    head_nl=_field(payload, "head_nl", str, "", "HS"),
                    minimalistic=_field(payload, "minimalistic", bool, "", False))
        table.validate()
        return table

    @classmethod
    def load(cls, path: str) -> ArchTable:
        """Read a table saved as JSON (`to_json`; pipeline.netadapt writes them). Errors name the file."""
        try:
            with open(path) as f:
                payload = json.load(f)
        except (OSError, ValueError) as err:
            raise ArchTableError(f"cannot read an architecture table from {path}: {err}") from None
        if not isinstance(payload, dict):
            raise ArchTableError(f"{path} does not hold an architecture table (a JSON object)")
        try:
            return cls.from_json(payload)
        except ArchTableError as err:
            raise ArchTableError(f"{path}: {err}") from None

    def key(self) -> str:
        """A short stable name of the widths (cache key)."""
        widths = [self.stem, *(w for row in self.blocks for w in (row.exp, row.out)), self.last_conv, self.last_point]
        return "-".join(str(w) for w in widths)

    def format(self, image_size: int = 224, num_classes: int = 1000) -> str:
        """The table in the paper's layout (Input, Operator, exp size, #out, SE, NL, s)."""
        rows = [("Input", "Operator", "exp size", "#out", "SE", "NL", "s")]
        size = -(-image_size // 2)
        rows.append((f"{image_size}^2 x 3", "conv2d, 3x3", "-", str(self.stem), "", self.head_nl, "2"))
        channels = self.stem
        for row in self.blocks:
            rows.append((f"{size}^2 x {channels}", f"bneck, {row.kernel}x{row.kernel}", str(row.exp), str(row.out),
                         "yes" if row.se else "", row.nl, str(row.stride)))
            size, channels = -(-size // row.stride), row.out
        rows += [(f"{size}^2 x {channels}", "conv2d, 1x1", "-", str(self.last_conv), "", self.head_nl, "1"),
                 (f"{size}^2 x {self.last_conv}", "pool, global", "-", "-", "", "", "1"),
                 (f"1^2 x {self.last_conv}", "conv2d 1x1, NBN", "-", str(self.last_point), "", self.head_nl, "1"),
                 (f"1^2 x {self.last_point}", "conv2d 1x1, NBN", "-", str(num_classes), "", "", "1")]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


BNECK_FIELDS = (("kernel", int), ("exp", int), ("out", int), ("se", bool), ("nl", str), ("stride", int))
_MISSING = object()
_JSON_TYPES = {int: "an integer", bool: "true or false", str: "a string", list: "a list"}


def _field(payload: dict, key: str, kind: type, where: str, default=_MISSING):
    """payload[key] if it is of JSON type `kind` (an integer is not a boolean, nor 1.9 an integer)."""
    if key not in payload:
        if default is not _MISSING:
            return default
        raise ArchTableError(f"{where}'{key}' is missing")
    value = payload[key]
    if kind is int and type(value) is float and value.is_integer():
        return int(value)
    if type(value) is not kind:
        raise ArchTableError(f"{where}'{key}' must be {_JSON_TYPES[kind]}, got {json.dumps(value)[:40]}")
    return value


def _bneck(x, row: Bneck, block_id: int):
    shortcut = x
    in_filters = x.shape[-1]
    expanded = row.exp
    filters = row.out
    activation = ACTIVATIONS[row.nl]
    prefix = f"expanded_conv_{block_id}/" if block_id else "expanded_conv/"

    if block_id:  # the first bneck's expansion equals its input width: no expand conv
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
        x = batch_norm(prefix + "expand/BatchNorm")(x)
        x = activation(x, name=prefix + "expand/act")
    if row.stride == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1:3], row.kernel), name=prefix + "depthwise/pad")(x)
    x = layers.DepthwiseConv2D(
        row.kernel,
        strides=row.stride,
        padding="same" if row.stride == 1 else "valid",
        use_bias=False,
        name=prefix + "depthwise",
    )(x)
    x = batch_norm(prefix + "depthwise/BatchNorm")(x)
    x = activation(x, name=prefix + "depthwise/act")
    if row.se:
        x = squeeze_excite(x, expanded, SE_RATIO, prefix)
    # Linear bottleneck: no activation after the projection.
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = batch_norm(prefix + "project/BatchNorm")(x)
    if row.stride == 1 and in_filters == filters:
        x = layers.Add(name=prefix + "Add")([shortcut, x])
    return x


def mobilenet_v3(
    model_type: str,
    input_shape=(224, 224, 3),
    alpha: float = 1.0,
    minimalistic: bool = False,
    arch: ArchTable | None = None,
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 0.2,
    pooling: str | None = None,
    include_preprocessing: bool = True,
    classifier_activation_name: str | None = "softmax",
) -> keras.Model:
    """MobileNetV3-`model_type` ("large" or "small") with width multiplier `alpha`, or the explicit widths of `arch`
    (then `alpha` must be 1 and `minimalistic` False: the table says it all); any input size >= 32."""
    check_common_args(
        input_shape=input_shape, alpha=alpha, num_classes=num_classes, include_top=include_top, dropout=dropout,
        pooling=pooling,
    )
    if arch is None:
        arch = ArchTable.paper(model_type, alpha, minimalistic)
    else:
        if alpha != 1.0 or minimalistic:
            raise ValueError("an architecture table gives every width: pass alpha=1 and minimalistic=False with it")
        if model_type != arch.model_type:
            raise ValueError(f"the architecture table is a {arch.model_type} model, not {model_type}")
        arch.validate()
    stem_activation = ACTIVATIONS[arch.head_nl]

    inputs, x = image_input(input_shape, include_preprocessing)
    x = layers.Conv2D(arch.stem, 3, strides=2, padding="same", use_bias=False, name="Conv")(x)
    x = batch_norm("Conv/BatchNorm")(x)
    x = stem_activation(x, name="Conv/act")

    for block_id, row in enumerate(arch.blocks):
        x = _bneck(x, row, block_id)

    x = layers.Conv2D(arch.last_conv, 1, padding="same", use_bias=False, name="Conv_1")(x)
    x = batch_norm("Conv_1/BatchNorm")(x)
    x = stem_activation(x, name="Conv_1/act")

    if include_top:
        # Efficient last stage: pool first, so the wide 1x1 conv runs on a 1x1 map.
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_pool")(x)
        x = layers.Conv2D(arch.last_point, 1, padding="same", use_bias=True, name="Conv_2")(x)
        x = stem_activation(x, name="Conv_2/act")
        if dropout > 0:
            x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, padding="same", name="Logits")(x)
        x = layers.Flatten(name="flatten")(x)
        x = classifier_activation(x, classifier_activation_name, "Predictions")
    else:
        x = features_head(x, pooling=pooling)
    suffix = "_minimalistic" if arch.minimalistic else ""
    return keras.Model(inputs, x, name=f"MobilenetV3{model_type}{suffix}")


def mobilenet_v3_small(**kwargs) -> keras.Model:
    return mobilenet_v3("small", **kwargs)


def mobilenet_v3_large(**kwargs) -> keras.Model:
    return mobilenet_v3("large", **kwargs)
