"""Keras -> TFLite (int8 with calibrated or dynamic activations, and float32), op-version check, parity.

Why a batch-1 concrete function: Keras 3's Flatten traced with a dynamic
batch converts to SHAPE / STRIDED_SLICE / PACK ops around a RESHAPE; with the
batch fixed to 1 the converter folds them into one static RESHAPE, which is
both faster and loadable by older interpreters.

Why check op versions: the Raspberry Pi fallback is tflite-runtime 2.14,
whose kernels stop at certain versions (FULLY_CONNECTED at 9, for example).
A model using a newer version loads on LiteRT but fails there, so the
conversion reports every op's version and refuses what 2.14 cannot run.

Every int8 model is run by the runtime's own code (edge_birads.interpreter:
input quantized with the model's own scale / zero point, output dequantized
with int64 widening, then renormalised), so parity, the card's metrics and the
cross-validation measure what ships. There is one converter
(:func:`to_tflite_int8`) and one parity gate (:func:`parity_gate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_birads.interpreter import batch_probabilities, make_interpreter, model_tensors, tensor_spec

#: Highest builtin-op versions tflite-runtime 2.14 registers (tensorflow/lite/kernels/register.cc
#: at v2.14.0) for the ops these CNNs use. Checked by loading our models in tflite-runtime 2.14.
TFLITE_214_MAX_VERSIONS = {
    "CONV_2D": 8,
    "DEPTHWISE_CONV_2D": 7,
    "MAX_POOL_2D": 4,
    "AVERAGE_POOL_2D": 4,
    "MEAN": 3,
    "RESHAPE": 1,
    "FULLY_CONNECTED": 9,
    "SOFTMAX": 3,
    "QUANTIZE": 3,
    "DEQUANTIZE": 5,
    "RELU": 3,
    "ADD": 4,
    "MUL": 6,
    "PAD": 4,
    "CONCATENATION": 4,
    "LOGISTIC": 3,
}


# --------------------------------------------------------------------------- conversion


def _batch1_concrete_function(model):
    import tensorflow as tf

    shape = [1, *model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def serve(image):
        return model(image, training=False)

    return serve.get_concrete_function()


def to_tflite_float(model) -> bytes:
    """Float32 TFLite of the same network (the benchmark's middle engine)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([_batch1_concrete_function(model)])
    return converter.convert()


#: How an int8 model's activations are quantized. "calibrated": full-integer int8, each activation tensor's
#: range fixed once from representative images (int8 input and output; fastest). "dynamic": int8 weights,
#: activations quantized per image at run time from their own range (float input and output). Per-tensor
#: calibrated ranges were too coarse for the ImageNet MobileNetV2 on mammograms: fine-tuned models failed the
#: parity gate on every fold (docs/ablation.md, "what int8 costs"), while dynamic ranges follow the float model.
INT8_ACTIVATIONS = ("calibrated", "dynamic")


def to_tflite_int8(model, representative: np.ndarray | None, activations: str = "calibrated") -> bytes:
    """int8 TFLite of ``model`` (batch 1), activations ``"calibrated"`` or ``"dynamic"`` (see INT8_ACTIVATIONS).

    ``representative`` are preprocessed training images (N, H, W, 1) in
    [0, 1]; 100-200 are enough to calibrate the activation ranges. Dynamic
    activations need none (and ignore them): weights are quantized per channel.
    """
    import tensorflow as tf

    if activations not in INT8_ACTIVATIONS:
        raise ValueError(f"int8 activations must be one of {INT8_ACTIVATIONS}, not {activations!r}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_batch1_concrete_function(model)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if activations == "dynamic":
        return converter.convert()
    if representative is None or len(representative) == 0:
        raise ValueError("int8 conversion needs representative images")
    images = np.asarray(representative, np.float32)

    def dataset():
        for i in range(len(images)):
            yield [images[i : i + 1]]

    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# --------------------------------------------------------------------------- op versions


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the install
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def op_versions(tflite: bytes) -> dict[str, int]:
    """Builtin op name -> highest version used, read from the flatbuffer."""
    schema = _schema()
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(bytearray(tflite), 0)
    used: dict[str, int] = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = f"CUSTOM:{code.CustomCode().decode()}"
        used[name] = max(used.get(name, 0), int(code.Version()))
    return dict(sorted(used.items()))


def tflite_214_problems(versions: dict[str, int]) -> list[str]:
    """Ops tflite-runtime 2.14 cannot run (unknown op or version above its maximum)."""
    problems = []
    for name, version in versions.items():
        limit = TFLITE_214_MAX_VERSIONS.get(name)
        if limit is None:
            problems.append(f"{name} v{version} (not in the checked op list)")
        elif version > limit:
            problems.append(f"{name} v{version} > v{limit}")
    return problems


# --------------------------------------------------------------------------- running TFLite


@dataclass(frozen=True)
class TensorSpecInfo:
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


class TfliteModel:
    """A TFLite file or flatbuffer loaded into the runtime's interpreter; ``predict`` is the runtime's
    :func:`edge_birads.interpreter.batch_probabilities`. No arithmetic of its own."""

    def __init__(self, model: str | Path | bytes, threads: int = 1) -> None:
        self.interpreter, self.runtime = make_interpreter(model, threads)
        self.tensors = model_tensors(self.interpreter)

    @property
    def input_spec(self) -> TensorSpecInfo:
        return TensorSpecInfo(**tensor_spec(self.tensors.input))

    @property
    def output_spec(self) -> TensorSpecInfo:
        return TensorSpecInfo(**tensor_spec(self.tensors.probabilities))

    def predict(self, images: np.ndarray, renormalised: bool = True) -> np.ndarray:
        """Probabilities (N, n_classes) for preprocessed images (N, H, W, 1) in [0, 1]."""
        return batch_probabilities(self.interpreter, images, renormalised=renormalised)


# --------------------------------------------------------------------------- parity

#: The parity gate's defaults (python -m convert convert: --min-agreement, --max-diff).
MIN_AGREEMENT = 0.95
MAX_DIFF = 0.1


class ParityError(RuntimeError):
    """The int8 model disagrees with the float model beyond the configured limits."""


@dataclass(frozen=True)
class Parity:
    """How closely the int8 model follows the float Keras model on held-out images.

    ``top1_agreement`` counts every image. ``decisive_agreement`` leaves out
    near-ties, images where the float model's two best classes are within
    ``tie_margin`` of each other: there a flip is a coin toss the int8
    output step (1/256) can decide, not a conversion fault. The gate uses
    the decisive figure and the ``diff_quantile`` quantile of the per-image
    largest probability difference (0.99 by default; 1.0 is the strict
    maximum). One image in a few hundred can sit where a few int8 steps of an
    over-confident network's logits move a probability by 0.2 (seen on the
    bundled model); that image is reported (``max_abs_prob_diff``,
    ``n_over_limit``), while a systematic conversion fault moves the quantile.
    """

    top1_agreement: float
    decisive_agreement: float
    n_near_ties: int
    tie_margin: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    diff_quantile: float
    quantile_abs_prob_diff: float
    n_images: int

    def ok(self, min_agreement: float, max_diff: float) -> bool:
        return self.decisive_agreement >= min_agreement and self.quantile_abs_prob_diff <= max_diff

    def n_over(self, reference: np.ndarray, candidate: np.ndarray, limit: float) -> int:
        return int((np.abs(np.asarray(reference) - np.asarray(candidate)).max(axis=1) > limit).sum())

    def to_dict(self) -> dict:
        return asdict(self)


def parity(reference: np.ndarray, candidate: np.ndarray, tie_margin: float = 0.02, diff_quantile: float = 0.99) -> Parity:
    """Top-1 agreement (all images, and decisive ones) and largest / mean |probability difference|."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or len(reference) == 0:
        raise ValueError(f"parity needs two non-empty arrays of one shape, got {reference.shape} and {candidate.shape}")
    diff = np.abs(reference - candidate)
    agree = reference.argmax(1) == candidate.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= tie_margin
    return Parity(
        top1_agreement=float(agree.mean()),
        decisive_agreement=float(agree[decisive].mean()) if decisive.any() else 1.0,
        n_near_ties=int((~decisive).sum()),
        tie_margin=float(tie_margin),
        max_abs_prob_diff=float(diff.max()),
        mean_abs_prob_diff=float(diff.mean()),
        diff_quantile=float(diff_quantile),
        quantile_abs_prob_diff=float(np.quantile(diff.max(axis=1), diff_quantile)),
        n_images=int(len(reference)),
    )


def parity_gate(result: Parity, min_agreement: float = MIN_AGREEMENT, max_diff: float = MAX_DIFF, where: str = "") -> Parity:
    """The one parity gate: ``result`` when the int8 model follows the float one, else ParityError saying why.

    ``result`` is a :class:`Parity` or its ``to_dict()`` (as saved by a cross-validation run).
    """
    if isinstance(result, dict):
        result = Parity(**{name: result[name] for name in Parity.__dataclass_fields__})
    if not result.ok(min_agreement, max_diff):
        raise ParityError(
            f"{where}poor int8 parity: top-1 agreement {result.decisive_agreement:.3f} on images without near-ties (need >= {min_agreement}), "
            f"{result.diff_quantile:g} quantile of the largest probability difference {result.quantile_abs_prob_diff:.4f} (need <= {max_diff})"
        )
    return result


def keras_predict(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Float Keras probabilities (inference mode)."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]))
    return np.asarray(model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0), np.float64)
