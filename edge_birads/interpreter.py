"""Finding a TFLite interpreter, the quantization arithmetic around it, and running it.

Pure functions over an interpreter, in the style of pycoral's adapters: the
runtime's ``Classifier`` and every measurement in ``convert`` (parity, the
card's metrics, cross-validation) run a model through :func:`run_image` /
:func:`batch_probabilities`, so what is measured is what ships.

Order of preference: LiteRT (``ai_edge_litert``, maintained, numpy 2, arm64
wheels for Python 3.10-3.14), then ``tflite_runtime`` (the only choice on
32-bit Raspberry Pi OS). The runtime never falls back on the training
framework's own interpreter: it is not a dependency of the runtime.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_birads.errors import ModelError
from edge_birads.quiet import captured_stderr

# LiteRT announces its default CPU delegate on stderr at every load; in a one-line-per-file CLI and a
# journald log that is noise. Only this exact announcement is dropped; anything else is passed on.
DELEGATE_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."

INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


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


def make_interpreter(model: str | Path | bytes, threads: int = 1, delegates: bool = True) -> tuple[Any, str]:
    """Create and allocate an interpreter for a model file, or for a model's bytes (``convert`` checks a
    flatbuffer before writing it). ``delegates=False`` keeps LiteRT's default XNNPACK delegate out, so every
    op and weight tensor stays visible (reading the weights back; counting ops).
    """
    interpreter_class, module = find_interpreter_class()
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    shown = f"({len(model)} bytes in memory)" if "model_content" in source else str(model)
    if not delegates and module.startswith("ai_edge_litert"):
        from ai_edge_litert.interpreter import OpResolverType

        source["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = interpreter_class(**source, num_threads=int(threads))
        with captured_stderr() as said:
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load model {shown}: {exc}") from None
    passed_on = [line for line in "".join(said).splitlines() if line.strip() and line.strip() != DELEGATE_NOTICE]
    if passed_on:
        print("\n".join(passed_on), file=sys.stderr, flush=True)
    return interpreter, module


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float -> integer with the tensor's own scale and zero point, saturating."""
    info = np.iinfo(dtype)
    quantized = np.round(values / np.float32(scale)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: Any, zero_point: Any, axis: int | None = None) -> np.ndarray:
    """Integer -> float; widened to int64 first so the subtraction cannot wrap.

    Per-channel (a weight tensor): ``scale`` and ``zero_point`` are arrays along ``axis``.
    """
    scale, zero_point = np.asarray(scale, np.float32), np.asarray(zero_point, np.int64)
    if axis is not None and scale.size > 1:
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (values.astype(np.int64) - zero_point).astype(np.float32) * scale


def tensor_quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero_point) of a tensor detail; (0.0, 0) for a float tensor."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def tensor_spec(detail: dict) -> dict:
    """A tensor's shape, dtype and quantization, as a model card records them."""
    scale, zero_point = tensor_quantization(detail)
    return {"shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name, "scale": scale, "zero_point": zero_point}


def find_outputs(details: list[dict], n_labels: int | None = None) -> tuple[dict, dict | None]:
    """(probabilities output, lesion map output or None) among a model's outputs.

    The probabilities have one value per label (``n_labels``; None: whatever
    the one output of at most 2 dimensions holds); a lesion map is a 4-D
    (1, rows, cols, 1) tensor. Any other layout is refused: the runtime must
    never guess which output is the score.
    """
    if n_labels is None:
        flat = [d for d in details if len(d["shape"]) <= 2]
        n_labels = int(np.prod(flat[0]["shape"])) if len(flat) == 1 else -1
    probabilities = [d for d in details if int(np.prod(d["shape"])) == n_labels and len(d["shape"]) <= 2]
    maps = [d for d in details if len(d["shape"]) == 4 and int(d["shape"][0]) == 1 and int(d["shape"][3]) == 1]
    if len(probabilities) != 1 or len(maps) > 1 or len(probabilities) + len(maps) != len(details):
        shapes = ", ".join(str(tuple(int(x) for x in d["shape"])) for d in details)
        wanted = f"{n_labels} probabilities" if n_labels > 0 else "one vector of probabilities"
        raise ModelError(f"model outputs ({shapes}) are not {wanted}, optionally with one (1, rows, cols, 1) lesion map")
    return probabilities[0], (maps[0] if maps else None)


@dataclass(frozen=True)
class ModelTensors:
    """The tensor details a run needs, looked up once per interpreter."""

    input: dict
    probabilities: dict
    lesion_map: dict | None


def model_tensors(interpreter: Any, n_labels: int | None = None) -> ModelTensors:
    """The interpreter's input and its outputs (see :func:`find_outputs`)."""
    return ModelTensors(interpreter.get_input_details()[0], *find_outputs(interpreter.get_output_details(), n_labels))


def set_input(interpreter: Any, detail: dict, image: np.ndarray) -> None:
    """One preprocessed float image ((H, W, 1) in [0, 1]) into the input tensor, quantized if the model is integer."""
    dtype = detail["dtype"]
    batch = np.asarray(image).reshape(detail["shape"])
    if np.issubdtype(dtype, np.integer):
        scale, zero_point = tensor_quantization(detail)
        batch = quantize(batch, scale, zero_point, dtype)
    else:
        batch = batch.astype(dtype, copy=False)
    interpreter.set_tensor(detail["index"], batch)


def read_output(interpreter: Any, detail: dict) -> np.ndarray:
    """An output tensor as float32, dequantized if it is integer."""
    raw = interpreter.get_tensor(detail["index"])
    if np.issubdtype(raw.dtype, np.integer):
        scale, zero_point = tensor_quantization(detail)
        return dequantize(raw, scale, zero_point)
    return raw.astype(np.float32)


def run_image(interpreter: Any, image: np.ndarray, tensors: ModelTensors, with_map: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One invocation: (probabilities as a vector, the (rows, cols) lesion map or None when the model has none
    or ``with_map`` is off)."""
    set_input(interpreter, tensors.input, image)
    interpreter.invoke()
    lesion_map = tensors.lesion_map if with_map else None
    values = None if lesion_map is None else read_output(interpreter, lesion_map).reshape(lesion_map["shape"][1:3])
    return read_output(interpreter, tensors.probabilities).reshape(-1), values


def renormalise(probabilities: np.ndarray) -> np.ndarray:
    """Clip at 0 and rescale each row to sum 1 (uniform where a row is all zero): an int8 softmax sums to 1
    only to within a few output steps. float64."""
    p = np.clip(np.asarray(probabilities, np.float64), 0.0, None)
    total = p.sum(axis=-1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[-1])
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def batch_outputs(
    interpreter: Any, images: Iterable[np.ndarray], n_labels: int | None = None, renormalised: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (N, labels) and lesion maps (N, rows, cols) or None for N preprocessed images: an (N, H, W, 1)
    array or any iterable of (H, W, 1) images (a generator keeps a large pool out of memory).

    Image by image through :func:`run_image`, exactly as the runtime
    classifies; ``renormalised`` applies :func:`renormalise` (as the
    runtime's decision does), else the dequantized outputs are returned as
    they are (float32).
    """
    tensors = model_tensors(interpreter, n_labels)
    probabilities, maps = [], []
    for image in images:
        p, m = run_image(interpreter, np.asarray(image, np.float32), tensors)
        probabilities.append(p)
        maps.append(m)
    stacked = np.stack(probabilities) if probabilities else np.zeros((0, int(np.prod(tensors.probabilities["shape"]))), np.float32)
    if renormalised:
        stacked = renormalise(stacked)
    return stacked, (np.stack(maps) if tensors.lesion_map is not None and maps else None)


def batch_probabilities(interpreter: Any, images: Iterable[np.ndarray], n_labels: int | None = None, renormalised: bool = True) -> np.ndarray:
    """Probabilities (N, labels) for N preprocessed images (N, H, W, 1): see :func:`batch_outputs`."""
    return batch_outputs(interpreter, images, n_labels, renormalised)[0]
