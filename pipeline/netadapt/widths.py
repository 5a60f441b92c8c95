"""Width groups and surgery: which channel counts NetAdapt changes together, the architecture with one group narrowed,
and the model of that architecture cut from a trained one, keeping each group's most important filters.

Filter importance is the L1 norm of each output filter with its BatchNorm folded in (the filter as the int8 file holds
it), summed over the convs that write the group's channels; the kept channels' depthwise, squeeze-and-excite and
projection slices go with them, and each squeeze-and-excite keeps its largest-L1 squeeze filters over the kept inputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import keras_models
from keras_models.backend import keras
from keras_models.mobilenet_v3 import ArchTable
from keras_models.profile import layer_costs

MIN_WIDTH = 8  # widths are multiples of 8, as make_divisible gives them


@dataclasses.dataclass(frozen=True)
class Group:
    """Widths that change together: `slots` are "stem", "exp<i>", "out<i>", "last_conv", "last_point"."""

    name: str
    slots: tuple[str, ...]


def _union_find(items):
    parent = {item: item for item in items}

    def find(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    return parent, find


def width_groups(arch: ArchTable) -> list[Group]:
    """The groups NetAdapt shrinks. The first bneck's expansion is the stem's width (it has no expand conv); residual
    connections tie a block's output to its input."""
    n = len(arch.blocks)
    outputs = ["stem"] + [f"out{i}" for i in range(n)]
    parent, find = _union_find(outputs)
    for i in range(n):
        if arch.residual(i):
            parent[find(f"out{i}")] = find(outputs[i])  # outputs[i] is block i's input
    chains: dict[str, list[str]] = {}
    for slot in outputs:
        chains.setdefault(find(slot), []).append(slot)
    groups = [Group("+".join(slots), tuple(slots)) for slots in chains.values()]
    groups += [Group(f"exp{i}", (f"exp{i}",)) for i in range(1, n)]
    groups += [Group("last_conv", ("last_conv",)), Group("last_point", ("last_point",))]
    return groups


def group_width(arch: ArchTable, group: Group) -> int:
    return _slot_width(arch, group.slots[0])


def _slot_width(arch: ArchTable, slot: str) -> int:
    if slot in ("stem", "last_conv", "last_point"):
        return getattr(arch, slot)
    index = int(slot[3:])
    return arch.blocks[index].exp if slot.startswith("exp") else arch.blocks[index].out


def with_width(arch: ArchTable, group: Group, width: int) -> ArchTable:
    """`arch` with every slot of `group` at `width` (the first bneck's expansion follows the stem)."""
    blocks = list(arch.blocks)
    changes = {}
    for slot in group.slots:
        if slot in ("stem", "last_conv", "last_point"):
            changes[slot] = width
            if slot == "stem":
                blocks[0] = blocks[0]._replace(exp=width)
        else:
            index = int(slot[3:])
            field = "exp" if slot.startswith("exp") else "out"
            blocks[index] = blocks[index]._replace(**{field: width})
    return dataclasses.replace(arch, blocks=tuple(blocks), **changes)


def same_residuals(a: ArchTable, b: ArchTable) -> bool:
    """Whether both tables have residual connections at the same bnecks (a cut must not add or drop one)."""
    return all(a.residual(i) == b.residual(i) for i in range(len(a.blocks)))


def channel_axes(arch: ArchTable) -> dict[str, tuple[str | None, str | None]]:
    """{layer name: (variable indexing its input channels, variable indexing its output channels)} for every layer
    with weights. Variables are group names, "se<i>" (a squeeze-and-excite width) or None (not pruned)."""
    group_of = {slot: group.name for group in width_groups(arch) for slot in group.slots}
    axes: dict[str, tuple[str | None, str | None]] = {"Conv": (None, group_of["stem"]),
                                                      "Conv/BatchNorm": (group_of["stem"], None)}
    for i, row in enumerate(arch.blocks):
        prefix = f"expanded_conv_{i}/" if i else "expanded_conv/"
        inp = group_of["stem" if i == 0 else f"out{i - 1}"]
        exp = inp if i == 0 else group_of[f"exp{i}"]
        out = group_of[f"out{i}"]
        if i:
            axes[prefix + "expand"] = (inp, exp)
            axes[prefix + "expand/BatchNorm"] = (exp, None)
        axes[prefix + "depthwise"] = (exp, None)
        axes[prefix + "depthwise/BatchNorm"] = (exp, None)
        if row.se:
            axes[prefix + "squeeze_excite/Conv"] = (exp, f"se{i}")
            axes[prefix + "squeeze_excite/Conv_1"] = (f"se{i}", exp)
        axes[prefix + "project"] = (exp, out)
        axes[prefix + "project/BatchNorm"] = (out, None)
    last = group_of[f"out{len(arch.blocks) - 1}"]
    axes.update({"Conv_1": (last, "last_conv"), "Conv_1/BatchNorm": ("last_conv", None),
                 "Conv_2": ("last_conv", "last_point"), "Logits": ("last_point", None)})
    return axes


def _folded_filter_l1(model: keras.Model, conv_name: str) -> np.ndarray:
    """L1 norm of each output filter of a conv, with the following BatchNorm's scale folded in (as in the int8 file)."""
    kernel = model.get_layer(conv_name).get_weights()[0]
    l1 = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    try:
        bn = model.get_layer(conv_name + "/BatchNorm")
    except ValueError:
        return l1  # Conv_2 and the SE convs have no BatchNorm
    gamma, _, _, variance = bn.get_weights()
    return l1 * np.abs(gamma) / np.sqrt(variance + bn.epsilon)


def filter_importance(model: keras.Model, arch: ArchTable) -> dict[str, np.ndarray]:
    """{group name: importance of each channel}: the folded-filter L1 norms of every conv that writes the group's
    channels (the stem conv, expand convs, projection convs of a residual chain, Conv_1, Conv_2), summed."""
    importance: dict[str, np.ndarray] = {}
    for name, (_, out_var) in channel_axes(arch).items():
        if out_var is None or out_var.startswith("se") or "squeeze_excite" in name:
            continue
        l1 = _folded_filter_l1(model, name)
        importance[out_var] = importance.get(out_var, 0) + l1
    return importance


def kept_channels(model: keras.Model, arch: ArchTable, new_arch: ArchTable) -> dict[str, np.ndarray]:
    """{variable: sorted indices of the channels `new_arch` keeps}: the most important ones (all when unchanged)."""
    importance = filter_importance(model, arch)
    new_widths = {group.name: group_width(new_arch, group) for group in width_groups(arch)}
    kept = {}
    for var, scores in importance.items():
        keep = new_widths[var]
        if keep > len(scores):
            raise ValueError(f"{var}: cannot grow from {len(scores)} to {keep} channels")
        kept[var] = np.sort(np.argsort(-scores, kind="stable")[:keep])
    return kept


def carry_weights(model: keras.Model, arch: ArchTable, new_model: keras.Model, new_arch: ArchTable) -> dict:
    """Copy `model`'s weights into `new_model` (built from `new_arch`, a cut of `arch`), keeping the most important
    channels of each group (`kept_channels`) and, per squeeze-and-excite, the largest-L1 squeeze filters over the kept
    inputs. Returns the kept indices per variable."""
    kept = kept_channels(model, arch, new_arch)
    axes = channel_axes(arch)
    for layer in new_model.layers:
        if not layer.weights:
            continue
        in_var, out_var = axes[layer.name]
        old = model.get_layer(layer.name).get_weights()
        if out_var is not None and out_var.startswith("se") and out_var not in kept:
            squeeze = old[0][:, :, kept[in_var] if in_var in kept else slice(None), :]
            width = layer.get_weights()[0].shape[-1]
            kept[out_var] = np.sort(np.argsort(-np.abs(squeeze).reshape(-1, squeeze.shape[-1]).sum(0),
                                               kind="stable")[:width])
        pick_in = kept.get(in_var, slice(None)) if in_var else slice(None)
        pick_out = kept.get(out_var, slice(None)) if out_var else slice(None)
        new = []
        for value in old:
            if value.ndim == 4 and isinstance(layer, keras.layers.DepthwiseConv2D):
                value = value[:, :, pick_in, :]
            elif value.ndim == 4:
                value = value[:, :, pick_in, :][..., pick_out]
            elif isinstance(layer, keras.layers.BatchNormalization):
                value = value[pick_in]
            else:  # a conv's bias
                value = value[pick_out]
            new.append(value)
        layer.set_weights(new)
    return kept


def build(arch: ArchTable, image_size: int, num_classes: int, dropout: float = 0.2) -> keras.Model:
    return keras_models.build(arch.model_type, input_shape=(image_size, image_size, 3), num_classes=num_classes,
                              dropout=dropout, arch=arch)


def cut_model(model: keras.Model, arch: ArchTable, new_arch: ArchTable, image_size: int,
              num_classes: int) -> keras.Model:
    """The model of `new_arch` (a cut of `arch`) with `model`'s most important filters (`carry_weights`)."""
    new_model = build(new_arch, image_size, num_classes)
    carry_weights(model, arch, new_model, new_arch)
    return new_model


def recalibrate_batch_norm(model: keras.Model, images) -> None:
    """Re-estimate every BatchNorm's moving statistics on `images` (one training-mode pass, weights unchanged): a cut
    changes the statistics of the layers after it (as in slimmable networks' BN calibration)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def madds_per_channel(model: keras.Model, arch: ArchTable) -> dict[str, float]:
    """{group: multiply-adds that one channel of the group costs} (convs reading or writing it)."""
    axes = channel_axes(arch)
    widths = {group.name: group_width(arch, group) for group in width_groups(arch)}
    per_channel: dict[str, float] = {}
    for cost in layer_costs(model):
        for var in set(axes.get(cost.name, (None, None))):
            if var in widths:
                per_channel[var] = per_channel.get(var, 0.0) + cost.madds / widths[var]
    return per_channel

