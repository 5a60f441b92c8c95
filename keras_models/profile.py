"""Per-layer parameter and multiply-add counts, the two cost measures the MobileNet papers report.

MAdds count the multiply-accumulates of convolutions and fully-connected layers, as the papers do; element-wise ops
(activations, BN folded into convs at inference, adds, SE multiplies) are not counted.

Run `python -m keras_models.profile small --size 224` for a table.
"""

from __future__ import annotations

import dataclasses
import sys

from keras_models import VARIANTS, build
from keras_models.backend import keras

layers = keras.layers


@dataclasses.dataclass
class LayerCost:
    name: str
    kind: str
    output_shape: tuple
    params: int
    madds: int


def _spatial(shape) -> int:
    return int(shape[1]) * int(shape[2])


def layer_costs(model: keras.Model) -> list[LayerCost]:
    """Cost of every layer with weights or multiply-adds (the model needs a fixed input size)."""
    costs = []
    for layer in model.layers:
        out = layer.output_shape if not isinstance(layer.output_shape, list) else layer.output_shape[0]
        madds = 0
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            madds = _spatial(out) * kh * kw * int(layer.input_shape[-1]) * layer.depth_multiplier
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            madds = _spatial(out) * kh * kw * int(layer.input_shape[-1]) * layer.filters // layer.groups
        elif isinstance(layer, layers.Dense):
            madds = int(layer.input_shape[-1]) * layer.units
        params = layer.count_params()
        if params or madds:
            costs.append(LayerCost(layer.name, type(layer).__name__, tuple(out[1:]), params, madds))
    return costs


def totals(model: keras.Model) -> tuple[int, int]:
    """(parameters, multiply-adds) of the whole model."""
    costs = layer_costs(model)
    return model.count_params(), sum(c.madds for c in costs)


def format_table(model: keras.Model) -> str:
    costs = layer_costs(model)
    rows = [f"{'layer':45s} {'kind':22s} {'output':>16s} {'params':>10s} {'MAdds':>12s}"]
    for c in costs:
        rows.append(f"{c.name:45s} {c.kind:22s} {'x'.join(map(str, c.output_shape)):>16s} {c.params:>10,d} "
                    f"{c.madds:>12,d}")
    params, madds = totals(model)
    rows.append(f"{'total':45s} {'':22s} {'':>16s} {params:>10,d} {madds:>12,d}")
    rows.append(f"{model.name}: {params / 1e6:.3f}M params, {madds / 1e6:.1f}M MAdds")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keras_models.profile", description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--minimalistic", action="store_true")
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        extra = {"minimalistic": True} if args.minimalistic else {}
        model = build(args.variant, input_shape=(args.size, args.size, 3), alpha=args.alpha, num_classes=args.classes,
                      **extra)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(model))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
