"""MobileNetV2 in Keras, laid out like torchvision's so its ImageNet state dict loads tensor for tensor.

Two details make the Keras network compute what the torch one does:
- torch pads a 3x3 stride-2 convolution by one pixel on every side; Keras
  ``padding="same"`` pads only bottom/right for even sizes. Stride-2 layers
  here are an explicit ``ZeroPadding2D(1)`` then a ``valid`` convolution.
- torchvision's batch norm uses epsilon 1e-5 (Keras defaults to 1e-3).

The input is the runtime's one-channel image in [0, 1]. ``grey_to_imagenet``
is a fixed 1x1 convolution (1 -> 3 channels) that replicates the grey level
and applies ImageNet's mean and standard deviation, exactly what the torch
network saw for a grey photograph; it is part of the graph, so the int8
model still takes the runtime's single channel.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPSILON = 1e-5
# torchvision's inverted-residual settings: expansion t, output channels c, repeats n, first stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LAST_BLOCK = 17  # features[1..17] are inverted residuals; features[18] is the 1x1 conv to 1280


def block_plan() -> list[tuple[int, int, int, int]]:
    """(features index, expansion, output channels, stride) of every inverted-residual block."""
    plan, index = [], 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            plan.append((index, t, c, s if i == 0 else 1))
            index += 1
    return plan


def _name(prefix: str) -> str:
    return prefix.replace(".", "_")


def build_mobilenet_v2(
    input_shape: tuple[int, int, int] = (224, 224, 1), last_block: int = 13, include_top: bool = False, name: str = "mobilenet_v2"
):
    """Keras MobileNetV2 from the grey input to ``features[last_block]`` (or the ImageNet classifier).

    ``include_top=True`` builds the whole network (features 0-18, global
    average pool, 1000-way linear + softmax), used to prove the weights load.
    Returns the model; its layers are named after the torch parameters
    (``features.3.conv.1.0`` -> ``features_3_conv_1_0``).
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(3, 1, use_bias=True, trainable=False, name="grey_to_imagenet")(inputs)

    def conv_bn(x, prefix: str, filters: int, kernel: int, stride: int, relu: bool, depthwise: bool = False):
        if stride == 2:
            x = layers.ZeroPadding2D(kernel // 2, name=_name(prefix) + "_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=_name(prefix + ".0"))(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=_name(prefix + ".0"))(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=_name(prefix + ".1"))(x)
        return layers.ReLU(6.0, name=_name(prefix) + "_relu6")(x) if relu else x

    x = conv_bn(x, "features.0", 32, 3, 2, relu=True)
    channels = 32
    top = LAST_BLOCK if include_top else last_block
    for index, t, c, s in block_plan():
        if index > top:
            break
        prefix = f"features.{index}.conv"
        shortcut = x
        hidden = channels * t
        if t == 1:
            y = conv_bn(x, f"{prefix}.0", hidden, 3, s, relu=True, depthwise=True)
            project = f"{prefix}.1"
            bn = f"{prefix}.2"
        else:
            y = conv_bn(x, f"{prefix}.0", hidden, 1, 1, relu=True)
            y = conv_bn(y, f"{prefix}.1", hidden, 3, s, relu=True, depthwise=True)
            project = f"{prefix}.2"
            bn = f"{prefix}.3"
        y = layers.Conv2D(c, 1, use_bias=False, name=_name(project))(y)
        y = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=_name(bn))(y)
        if s == 1 and channels == c:
            y = layers.Add(name=f"features_{index}_add")([shortcut, y])
        x = y
        channels = c
    if include_top:
        x = conv_bn(x, "features.18", 1280, 1, 1, relu=True)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dense(1000, activation="softmax", name="classifier_1")(x)
    model = keras.Model(inputs, x, name=name)
    set_grey_to_imagenet(model)
    return model


def set_grey_to_imagenet(model) -> None:
    """Fix the input layer to grey -> (grey - mean) / std per RGB channel."""
    layer = model.get_layer("grey_to_imagenet")
    kernel = (1.0 / IMAGENET_STD).reshape(1, 1, 1, 3).astype(np.float32)
    bias = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
    layer.set_weights([kernel, bias])


def load_torch_state(model, state: "OrderedDict[str, np.ndarray]") -> list[str]:
    """Copy torchvision MobileNetV2 tensors into the matching layers of ``model``; returns the layer names loaded.

    Every weighted layer named ``features_*`` / ``classifier_*`` must find its
    tensors (a head added after the trunk, and ``grey_to_imagenet``, are left alone).
    """
    from convert.models.trunks import load_layers

    return load_layers(model, state, lambda name: name.startswith(("features_", "classifier_")), _torch_prefix)


def _torch_prefix(layer_name: str) -> str:
    return layer_name.replace("_", ".")
