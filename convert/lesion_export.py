"""Full-integer int8 TFLite export of the lesion whole-image model, with a parity check.

Why a separate module: the whole-image model is the FCN plus a pooling head,
exported with batch size 1 fixed (fixed shapes keep the graph to plain
CONV/DEPTHWISE/POOL/FULLY_CONNECTED/SOFTMAX ops that tflite-runtime 2.14 can
load). Input and output are int8, calibrated with representative images from
the training patients; parity is measured on held-out patients, and the int8
model's own outputs are what the model card's metrics describe.
"""

from __future__ import annotations

import numpy as np


def convert_int8(model, representative: np.ndarray) -> bytes:
    """Keras model with a fixed [1, H, W, 1] input -> int8-in/int8-out TFLite flatbuffer."""
    import tensorflow as tf

    shape = tuple(int(d) for d in model.inputs[0].shape)
    if shape[0] != 1:
        raise ValueError(f"export needs batch size 1 fixed, got input shape {shape}")

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def samples():
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


class Int8Runner:
    """Runs an int8 .tflite on float [0, 1] images and returns float probabilities."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - fallback when LiteRT is absent
            from tensorflow.lite import Interpreter
        self.interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def quantization(self) -> dict:
        (in_scale, in_zero), (out_scale, out_zero) = self.input["quantization"], self.output["quantization"]
        return {
            "input": {"shape": [int(d) for d in self.input["shape"]], "dtype": "int8", "scale": float(in_scale), "zero_point": int(in_zero)},
            "output": {"shape": [int(d) for d in self.output["shape"]], "dtype": "int8", "scale": float(out_scale), "zero_point": int(out_zero)},
        }

    def __call__(self, image01: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        q = np.clip(np.round(image01 / scale + zero), -128, 127).astype(np.int8)
        self.interpreter.set_tensor(self.input["index"], q.reshape(self.input["shape"]))
        self.interpreter.invoke()
        out_scale, out_zero = self.output["quantization"]
        raw = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
        return ((raw - out_zero) * out_scale).reshape(-1)


def parity(float_probs: np.ndarray, int8_probs: np.ndarray) -> dict:
    """Top-1 agreement and largest probability difference between the float and int8 models."""
    return {
        "top1_agreement": float((float_probs.argmax(1) == int8_probs.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(float_probs - int8_probs).max()),
        "mean_abs_malignant_diff": float(np.abs(float_probs[:, 2] - int8_probs[:, 2]).mean()),
        "n_images": int(float_probs.shape[0]),
    }


def representative_images(pool, indices, count: int, seed: int) -> np.ndarray:
    """``count`` training images (float [0, 1], (H, W, 1)) for int8 calibration, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices)
    pick = indices if indices.size <= count else rng.choice(indices, size=count, replace=False)
    return pool.images[np.sort(pick)].astype(np.float32)[..., None] / 255.0


def whole_image_keras(fcn, pool, head: tuple[np.ndarray, np.ndarray], smooth: int):
    """The exportable model: fixed [1, H, W, 1] input, FCN, pooling, calibrated head, softmax."""
    from convert.lesion_model import build_whole_image_model

    model = build_whole_image_model(fcn, pool.spec.height, pool.spec.width, smooth=smooth, batch_size=1)
    model.get_layer("head").set_weights([head[0].astype(np.float32), head[1].astype(np.float32)])
    return model


def run_int8(runner: Int8Runner, pool, indices) -> np.ndarray:
    return np.stack([runner(pool.images[i].astype(np.float32)[..., None] / 255.0) for i in indices]) if len(indices) else np.zeros((0, 3))


def keras_probs(model, pool, indices, batch: int = 1) -> np.ndarray:
    return np.stack([np.asarray(model(pool.images[i : i + 1].astype(np.float32)[..., None] / 255.0, training=False))[0] for i in indices])
