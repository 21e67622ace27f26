"""Result records: one per input file, the same fields in every output format.

One decision per image (see :func:`edge_birads.card.decision_rule`): ``referral``
is true ("refer for review") when the suspicion score, the model's probability of
the suspicious group, is at or above the card's threshold, else false ("routine").
``group`` never contradicts it: a referred image is in the suspicious group, a
routine one in the most likely of the other groups. Every record also says under
which rule it was decided (threshold, model name and sha256).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RESULT_FIELDS = (
    "file",
    "referral",
    "group",
    "suspicion_score",
    "probabilities",
    "referral_threshold",
    "model",
    "model_sha256",
    "latency_ms",
    "error",
)

REFER = "refer for review"
ROUTINE = "routine"


def decision(referral: bool) -> str:
    """The triage decision in words: what the table and the daemon's log say first."""
    return REFER if referral else ROUTINE


@dataclass(frozen=True)
class Rule:
    """Under which rule an image is decided: the model and its referral threshold."""

    model: str
    model_sha256: str
    referral_threshold: float


@dataclass(frozen=True)
class Prediction:
    """What the model says about one preprocessed image."""

    referral: bool
    group: str
    suspicion_score: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class Result:
    """One input file's outcome: a prediction, or an error and no prediction."""

    file: str
    rule: Rule
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
            "referral": prediction.get("referral"),
            "group": prediction.get("group"),
            "suspicion_score": prediction.get("suspicion_score"),
            "probabilities": prediction.get("probabilities"),
            "referral_threshold": self.rule.referral_threshold,
            "model": self.rule.model,
            "model_sha256": self.rule.model_sha256,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }
