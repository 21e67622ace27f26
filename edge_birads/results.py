"""Result records: one per input file, the same fields in every output format."""

from __future__ import annotations

from dataclasses import asdict, dataclass

RESULT_FIELDS = (
    "file",
    "label",
    "probabilities",
    "malignancy_score",
    "referral",
    "model_sha256",
    "latency_ms",
    "error",
)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one preprocessed image."""

    label: str
    probabilities: dict[str, float]
    malignancy_score: float
    referral: bool


@dataclass(frozen=True)
class Result:
    """One input file's outcome: a prediction, or an error and no prediction."""

    file: str
    model_sha256: str
    latency_ms: float | None
    prediction: Prediction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """The JSONL/CSV record; prediction fields are null for a failed file."""
        prediction = asdict(self.prediction) if self.prediction else {}
        return {
            "file": self.file,
            "label": prediction.get("label"),
            "probabilities": prediction.get("probabilities"),
            "malignancy_score": prediction.get("malignancy_score"),
            "referral": prediction.get("referral"),
            "model_sha256": self.model_sha256,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }
