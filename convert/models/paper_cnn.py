"""The paper's lightweight CNN, and the one variant the issue asks for (GAP head).

Paper (section 5.2): 3 x [Conv2D 3x3 ReLU, MaxPool 2x2] with 32/64/128
filters, Flatten, Dense 128 ReLU, Dropout 0.5, Dense softmax. At 224x224x1
input and 'valid' padding that is 11.2 M parameters, 11.1 M of them in the
Flatten -> Dense 128 head. ``head="gap"`` replaces Flatten by global average
pooling (about 0.1 M parameters) for the ablations of issue 6.
"""

from __future__ import annotations

import keras
from keras import layers

FILTERS = (32, 64, 128)


def build_paper_cnn(
    n_classes: int, image_size: int = 224, head: str = "flatten", dropout: float = 0.5, seed: int = 0
) -> keras.Model:
    """Build (uncompiled) the paper's network for ``image_size`` x ``image_size`` x 1 input."""
    if head not in ("flatten", "gap"):
        raise ValueError(f"unknown head {head!r} (flatten or gap)")
    init = lambda offset: keras.initializers.GlorotUniform(seed=seed + offset)  # noqa: E731
    inputs = keras.Input(shape=(image_size, image_size, 1), name="image")
    x = inputs
    for i, filters in enumerate(FILTERS):
        x = layers.Conv2D(filters, 3, activation="relu", padding="valid", kernel_initializer=init(i), name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x) if head == "flatten" else layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128, activation="relu", kernel_initializer=init(10), name="dense")(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", kernel_initializer=init(11), name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"paper_cnn_{head}_{image_size}")


def describe(model: keras.Model) -> str:
    """One line for the model card: layers and parameter count."""
    parts = []
    for layer in model.layers[1:]:
        cfg = layer.get_config()
        if isinstance(layer, layers.Conv2D):
            parts.append(f"Conv{cfg['kernel_size'][0]}x{cfg['kernel_size'][1]}({cfg['filters']},relu)")
        elif isinstance(layer, layers.MaxPooling2D):
            parts.append("MaxPool2")
        elif isinstance(layer, layers.Dense):
            parts.append(f"Dense({cfg['units']},{cfg['activation']})")
        elif isinstance(layer, layers.Dropout):
            parts.append(f"Dropout({cfg['rate']})")
        else:
            parts.append(type(layer).__name__)
    return f"{' -> '.join(parts)}; {model.count_params():,} parameters"


def compile_model(model: keras.Model, loss: str = "focal", learning_rate: float = 1e-3, gamma: float = 2.0, alpha: float = 0.25) -> keras.Model:
    """Adam + focal loss (the paper) or categorical cross-entropy (its baseline)."""
    from convert.models.losses import FocalLoss

    if loss == "focal":
        loss_fn = FocalLoss(gamma=gamma, alpha=alpha)
    elif loss == "crossentropy":
        loss_fn = keras.losses.CategoricalCrossentropy()
    else:
        raise ValueError(f"unknown loss {loss!r} (focal or crossentropy)")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss_fn, metrics=["accuracy"])
    return model


def load_model(path: str):
    """Load a Keras model saved by ``python -m convert train`` (custom loss registered)."""
    import convert.models.losses  # noqa: F401  registers FocalLoss

    return keras.models.load_model(path, compile=False)


def baseline_model(run_dir: str | None = None, n_classes: int = 3, image_size: int = 224, head: str = "flatten"):
    """The Keras baseline for benchmarks: the trained model of ``run_dir`` if it exists,
    else the same architecture with seeded random weights.

    Timing and memory of a forward pass do not depend on the weights, so the
    random-weight network is a fair stand-in on machines that never trained
    (the bundled .tflite ships without its 130 MB Keras file). Returns
    (model, "trained" | "random-weights").
    """
    from pathlib import Path

    if run_dir is not None and (Path(run_dir) / "model.keras").is_file():
        return load_model(str(Path(run_dir) / "model.keras")), "trained"
    return build_paper_cnn(n_classes, image_size, head=head, seed=0), "random-weights"
