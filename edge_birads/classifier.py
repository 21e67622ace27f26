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
from edge_birads.decode import DEFAULT_LIMITS, DecodeLimits, decode_bytes, model_input, read_input
from edge_birads.errors import InputError, ModelError, printable_name
from edge_birads.interpreter import find_outputs, make_interpreter, model_tensors, renormalise, run_image  # noqa: F401 (find_outputs: re-exported)
from edge_birads.heatmap import LesionMap
from edge_birads.preprocess import crop_box, prepare
from edge_birads.results import Prediction, Result

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "default.tflite"


def default_model_path() -> Path:
    """The bundled int8 model shipped inside the package."""
    return DEFAULT_MODEL


def to_prediction(probabilities: np.ndarray, card: ModelCard) -> Prediction:
    """Probabilities (renormalised to sum to 1) -> the card's decision rule (see card.decision_rule).

    Referral when the suspicion score P(malignant label) is at or above the threshold; the
    group is then the malignant label, else the most likely of the other labels.
    """
    probabilities = renormalise(np.asarray(probabilities).reshape(-1))
    score = float(probabilities[card.malignant_index])
    referral = score >= card.referral_threshold
    if referral:
        group = card.malignant_label
    else:
        others = [i for i in range(len(card.labels)) if i != card.malignant_index]
        group = card.labels[max(others, key=lambda i: probabilities[i])]
    return Prediction(
        referral=referral,
        group=group,
        suspicion_score=round(score, 6),
        probabilities={label: round(float(p), 6) for label, p in zip(card.labels, probabilities)},
    )


class Classifier:
    """An int8 (or float) TFLite BI-RADS group classifier and its model card."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int = 1,
        limits: DecodeLimits = DEFAULT_LIMITS,
        load_interpreter: bool = True,
    ) -> None:
        """The card is read and checked against the model file (sha256) here. The interpreter is created here too,
        or with ``load_interpreter=False`` at the first prediction (``load``), once the first image is decoded and
        its decoder's buffers are freed: a one-file run then peaks at the larger of the two, not at their sum.
        """
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.card = load_card(self.model_path)
        self.limits = limits
        self.threads = threads
        self._loaded: tuple | None = None
        if load_interpreter:
            self.load()

    def load(self) -> tuple:
        """(interpreter, runtime name, tensors), created once; ModelError when the model cannot run as its card says."""
        if self._loaded is None:
            interpreter, runtime = make_interpreter(str(self.model_path), self.threads)
            tensors = model_tensors(interpreter, len(self.card.labels))
            spec = self.card.preprocessing
            expected = (1, spec.height, spec.width, 1)
            shape_in = tuple(int(d) for d in tensors.input["shape"])
            if shape_in != expected:  # plain ints: numpy 2 would print np.int32(1)
                raise ModelError(f"model input shape {shape_in} does not match its card {expected}")
            self._loaded = (interpreter, runtime, tensors)
        return self._loaded

    @property
    def loaded(self) -> bool:
        """Whether the interpreter exists yet."""
        return self._loaded is not None

    @property
    def interpreter(self):
        return self.load()[0]

    @property
    def runtime(self) -> str:
        return self.load()[1]

    @property
    def _tensors(self):
        return self.load()[2]

    @property
    def has_lesion_map(self) -> bool:
        """True when the model has a second output: a per-location malignancy map (logits) in the input's frame."""
        return self._tensors.lesion_map is not None

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def failure(self, name: str, reason: str) -> Result:
        """The record of a file that could not be classified (prediction fields null, rule kept)."""
        return Result(file=name, rule=self.card.rule, latency_ms=None, error=reason)

    def predict(self, tensor: np.ndarray) -> np.ndarray:
        """Run one preprocessed (H, W, 1) float image; return class probabilities (dequantized, not renormalised)."""
        return run_image(self.interpreter, tensor, self._tensors, with_map=False)[0]

    def predict_with_map(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and, when the model has one, its (rows, cols) lesion map, from one invocation."""
        return run_image(self.interpreter, tensor, self._tensors)

    def classify_file(self, path: str | Path) -> Result:
        """Classify one file; a bad file becomes a Result with ``error`` set, never an exception. (A deferred
        interpreter is created at the first decoded file: ModelError there when the model cannot run as its card says.
        One thread at a time, as the interpreter itself.)"""
        return self._classify_path(path, want_map=False)[0]

    def explain_file(self, path: str | Path) -> tuple[Result, LesionMap | None]:
        """As ``classify_file``, plus the lesion map on the original image when the model has one (else None)."""
        return self._classify_path(path, want_map=self.has_lesion_map)

    def classify_bytes(self, data: bytes, name: str | Path) -> Result:
        """Classify a file's bytes, read once by the caller; ``name`` is reported and its suffix
        says whether to decode as DICOM. A bad file becomes a Result with ``error`` set.
        """
        return self._classify(data, name, want_map=False)[0]

    def explain_bytes(self, data: bytes, name: str | Path) -> tuple[Result, LesionMap | None]:
        """As ``classify_bytes``, plus the lesion map on the original image when the model has one (else None)."""
        return self._classify(data, name, want_map=self.has_lesion_map)

    def _classify_path(self, path: str | Path, want_map: bool) -> tuple[Result, LesionMap | None]:
        try:
            data = read_input(path, self.limits)
        except InputError as exc:
            return self.failure(printable_name(path), exc.reason), None
        prepared = self._prepare(data, path, want_map)
        del data  # the file's bytes are gone before inference (and before a deferred interpreter is created)
        return self._infer(prepared)

    def _classify(self, data: bytes, name: str | Path, want_map: bool) -> tuple[Result, LesionMap | None]:
        return self._infer(self._prepare(data, name, want_map))

    def _prepare(self, data: bytes, name: str | Path, want_map: bool) -> Result | tuple:
        """(name shown, decode seconds, model tensor, full-size image or None, crop box or None), or the file's failure.

        Decoding and preprocessing run under the per-file time limit (see deadline.py); inference has a fixed
        cost and runs outside it."""
        shown = printable_name(name)
        started = time.perf_counter()
        spec = self.card.preprocessing
        try:
            with time_limit(self.limits.max_seconds):
                if want_map:  # the map is drawn on the full-size image
                    image = decode_bytes(data, suffix=Path(name).suffix.lower(), limits=self.limits, for_model=True)
                    tensor, box = prepare(image, spec), crop_box(image, spec)
                else:
                    image, box = None, None
                    tensor = model_input(data, spec, suffix=Path(name).suffix.lower(), limits=self.limits)
        except InputError as exc:
            return self.failure(shown, exc.reason)
        except MemoryError:  # the size limits should prevent this; if not, it is this file's failure
            return self.failure(shown, "out of memory while decoding (lower --max-pixels)")
        return shown, time.perf_counter() - started, tensor, image, box

    def _infer(self, prepared: Result | tuple) -> tuple[Result, LesionMap | None]:
        """The prediction of a prepared image; ``latency_ms`` is its decoding plus its inference (never the
        creation of a deferred interpreter)."""
        if isinstance(prepared, Result):
            return prepared, None
        shown, decode_seconds, tensor, image, box = prepared
        self.load()
        started = time.perf_counter()
        probabilities, values = self.predict_with_map(tensor) if image is not None else (self.predict(tensor), None)
        prediction = to_prediction(probabilities, self.card)
        latency = round((decode_seconds + time.perf_counter() - started) * 1000.0, 3)
        result = Result(file=shown, rule=self.card.rule, latency_ms=latency, prediction=prediction)
        return result, (None if values is None else LesionMap(image, values, box))
