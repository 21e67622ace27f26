"""A small fully convolutional lesion network and its whole-image wrapper.

Why this shape: the patch network is trained on annotated lesions and normal
tissue; applied to a whole downscaled mammogram it gives a map of per-location
scores, and the image is as suspicious as its most suspicious region (max
pooling, as in the patch-to-whole-image approach of Shen et al. 2019). The
network has no dense layer over the image (the paper's Flatten -> Dense head
is 11 M parameters), so it has ~30 k parameters, a few hundred kB in int8,
and its cost scales with the input area only.

Per location the FCN outputs two log-odds against normal tissue:
``[benign - normal, malignant - normal]``; the 3-way per-location softmax is
over ``[0, benign, malignant]``. The whole-image model pools each log-odds map
(2x2 mean, then global max: a soft top-k) and maps the two pooled scores to
the three labels with a 2 -> 3 affine head and a softmax, so the runtime sees
an ordinary image -> 3 probabilities model.
"""

from __future__ import annotations

import keras
from keras import layers

STRIDE = 16


def sep_block(x, filters: int, name: str):
    """Depthwise-separable 3x3 conv + BN + ReLU: the cheap conv that fits a Pi."""
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return layers.ReLU(name=f"{name}_pw_relu")(x)


def build_fcn(width: int = 16, dropout: float = 0.2, name: str = "lesion_fcn") -> keras.Model:
    """(H, W, 1) image in [0, 1] -> (H/16, W/16, 2) log-odds maps. Receptive field ~123 px."""
    inputs = keras.Input(shape=(None, None, 1), name="image")
    x = layers.Conv2D(width, 5, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)  # /4
    x = sep_block(x, 2 * width, "b1")
    x = layers.MaxPooling2D(2, name="pool2")(x)  # /8
    x = sep_block(x, 4 * width, "b2")
    x = sep_block(x, 4 * width, "b3")
    x = layers.MaxPooling2D(2, name="pool3")(x)  # /16
    x = sep_block(x, 8 * width, "b4")
    x = sep_block(x, 8 * width, "b5")
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Conv2D(2, 1, name="logodds")(x)
    return keras.Model(inputs, outputs, name=name)


def pooled_scores(maps, smooth: int = 2):
    """(B, h, w, 2) log-odds -> (B, 2): soft top-k (mean over smooth x smooth windows, then max)."""
    if smooth > 1:
        maps = layers.AveragePooling2D(smooth, strides=1, padding="valid", name="smooth")(maps)
    return layers.GlobalMaxPooling2D(name="max_pool")(maps)


def build_whole_image_model(
    fcn: keras.Model, height: int, width: int, smooth: int = 2, batch_size: int | None = None
) -> keras.Model:
    """Image (H, W, 1) in [0, 1] -> softmax over the 3 labels; the FCN's weights are shared, not copied."""
    inputs = keras.Input(shape=(height, width, 1), batch_size=batch_size, name="image")
    maps = fcn(inputs)
    if smooth > 1:
        maps = layers.AveragePooling2D(smooth, strides=1, padding="valid", name="smooth")(maps)
    # A max-pool window over the whole (fixed-size) map is the global max, but converts to
    # MAX_POOL_2D + RESHAPE, ops checked against tflite-runtime 2.14 (REDUCE_MAX is not).
    map_h, map_w = int(maps.shape[1]), int(maps.shape[2])
    pooled = layers.MaxPooling2D((map_h, map_w), name="max_pool")(maps)
    scores = layers.Reshape((2,), name="scores")(pooled)
    logits = layers.Dense(3, name="head")(scores)
    outputs = layers.Softmax(name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name="lesion_whole_image")
    set_identity_head(model)
    return model


def set_identity_head(model: keras.Model) -> None:
    """Head weights so that logits = [0, benign score, malignant score]."""
    import numpy as np

    kernel = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype="float32")
    model.get_layer("head").set_weights([kernel, np.zeros(3, dtype="float32")])


def build_scores_model(fcn: keras.Model, height: int, width: int, smooth: int = 2) -> keras.Model:
    """Image -> the 2 pooled scores and the maps (for calibration and inspection)."""
    inputs = keras.Input(shape=(height, width, 1), name="image")
    maps = fcn(inputs)
    return keras.Model(inputs, [pooled_scores(maps, smooth), maps], name="lesion_scores")
