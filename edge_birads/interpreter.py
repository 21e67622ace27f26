"""Finding a TFLite interpreter and the quantization arithmetic around it.

Order of preference: LiteRT (``ai_edge_litert``, maintained, numpy 2, arm64
wheels for Python 3.10-3.14), then ``tflite_runtime`` (the only choice on
32-bit Raspberry Pi OS), then ``tensorflow.lite`` as a last resort. TensorFlow
is only imported when neither lean runtime exists, and never before
tflite_runtime: in one process that order makes tflite_runtime abort.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from edge_birads.errors import ModelError

INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def find_interpreter_class() -> tuple[type, str]:
    """Return (Interpreter class, module name) of the first runtime installed."""
    missing = []
    for name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc.__class__.__name__})")
            continue
        return module.Interpreter, name
    raise ModelError(
        "no TFLite interpreter found: install ai-edge-litert (pip install ai-edge-litert), "
        "or tflite-runtime on 32-bit Raspberry Pi OS (pip install 'edge-birads[tflite]'); tried " + ", ".join(missing)
    )


def make_interpreter(model_path: str, threads: int = 1) -> tuple[Any, str]:
    """Create and allocate an interpreter for ``model_path``."""
    interpreter_class, module = find_interpreter_class()
    try:
        interpreter = interpreter_class(model_path=str(model_path), num_threads=int(threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load model {model_path}: {exc}") from None
    return interpreter, module


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float -> integer with the tensor's own scale and zero point, saturating."""
    info = np.iinfo(dtype)
    quantized = np.round(values / np.float32(scale)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer -> float; widened to int64 first so the subtraction cannot wrap."""
    return (values.astype(np.int64) - int(zero_point)).astype(np.float32) * np.float32(scale)


def tensor_quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero_point) of a tensor detail; (0.0, 0) for a float tensor."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)
