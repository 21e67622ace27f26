"""The one class around the TFLite interpreter: load once, classify many.

It owns the model, its card and the interpreter; everything else (decoding,
preprocessing, quantization arithmetic) is a pure function it calls.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_birads.card import ModelCard, load_card
from edge_birads.deadline import time_limit
from edge_birads.decode import DEFAULT_LIMITS, DecodeLimits, decode_bytes, read_input
from edge_birads.errors import InputError, ModelError, printable_name
from edge_birads.interpreter import dequantize, make_interpreter, quantize, tensor_quantization
from edge_birads.preprocess import prepare
from edge_birads.results import Prediction, Result

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "default.tflite"


def default_model_path() -> Path:
    """The bundled int8 model shipped inside the package."""
    return DEFAULT_MODEL


def to_prediction(probabilities: np.ndarray, card: ModelCard) -> Prediction:
    """Probabilities (renormalised to sum to 1) -> label, malignancy score, referral flag."""
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 0.0, None)
    total = probabilities.sum()
    if total <= 0:
        probabilities = np.full(len(card.labels), 1.0 / len(card.labels))
    else:
        probabilities = probabilities / total
    score = float(probabilities[card.malignant_index])
    return Prediction(
        label=card.labels[int(np.argmax(probabilities))],
        probabilities={label: round(float(p), 6) for label, p in zip(card.labels, probabilities)},
        malignancy_score=round(score, 6),
        referral=score >= card.referral_threshold,
    )


class Classifier:
    """An int8 (or float) TFLite BI-RADS group classifier and its model card."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int = 1,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.card = load_card(self.model_path)
        self.limits = limits
        self.interpreter, self.runtime = make_interpreter(str(self.model_path), threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        spec = self.card.preprocessing
        expected = (1, spec.height, spec.width, 1)
        if tuple(int(d) for d in self._input["shape"]) != expected:
            raise ModelError(f"model input shape {tuple(self._input['shape'])} does not match its card {expected}")
        if int(np.prod(self._output["shape"])) != len(self.card.labels):
            raise ModelError(f"model output size {tuple(self._output['shape'])} does not match the card's {len(self.card.labels)} labels")

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def predict(self, tensor: np.ndarray) -> np.ndarray:
        """Run one preprocessed (H, W, 1) float image; return class probabilities."""
        dtype = self._input["dtype"]
        batch = tensor.reshape(self._input["shape"])
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = tensor_quantization(self._input)
            batch = quantize(batch, scale, zero_point, dtype)
        else:
            batch = batch.astype(dtype, copy=False)
        self.interpreter.set_tensor(self._input["index"], batch)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output["index"])
        if np.issubdtype(raw.dtype, np.integer):
            scale, zero_point = tensor_quantization(self._output)
            return dequantize(raw, scale, zero_point).reshape(-1)
        return raw.astype(np.float32).reshape(-1)

    def classify_image(self, image: np.ndarray) -> Prediction:
        """Classify a decoded 2-D grayscale image."""
        return to_prediction(self.predict(prepare(image, self.card.preprocessing)), self.card)

    def classify_file(self, path: str | Path) -> Result:
        """Classify one file; a bad file becomes a Result with ``error`` set, never an exception."""
        try:
            data = read_input(path, self.limits)
        except InputError as exc:
            return Result(file=printable_name(path), model_sha256=self.sha256, latency_ms=None, error=exc.reason)
        return self.classify_bytes(data, path)

    def classify_bytes(self, data: bytes, name: str | Path) -> Result:
        """Classify a file's bytes, read once by the caller; ``name`` is reported and its suffix
        says whether to decode as DICOM. A bad file becomes a Result with ``error`` set.

        Decoding and preprocessing run under the per-file time limit (see
        deadline.py); inference has a fixed cost and runs outside it.
        """
        shown = printable_name(name)
        started = time.perf_counter()
        try:
            with time_limit(self.limits.max_seconds):
                image = decode_bytes(data, suffix=Path(name).suffix.lower(), limits=self.limits)
                tensor = prepare(image, self.card.preprocessing)
        except InputError as exc:
            return Result(file=shown, model_sha256=self.sha256, latency_ms=None, error=exc.reason)
        except MemoryError:  # the size limits should prevent this; if not, it is this file's failure
            return Result(file=shown, model_sha256=self.sha256, latency_ms=None, error="out of memory while decoding (lower --max-pixels)")
        prediction = to_prediction(self.predict(tensor), self.card)
        latency = round((time.perf_counter() - started) * 1000.0, 3)
        return Result(file=shown, model_sha256=self.sha256, latency_ms=latency, prediction=prediction)
