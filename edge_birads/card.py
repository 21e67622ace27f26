"""The model card: what a .tflite file is, what it expects and how good it is.

A card is a JSON file beside the model (``model.tflite`` -> ``model.json``).
The runtime reads labels, input spec, preprocessing and referral threshold
from it, and refuses a model whose sha256 does not match the card: a flipped
byte in a medical model must not go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_birads.errors import ModelError
from edge_birads.preprocess import PreprocessSpec
from edge_birads.results import REFER, ROUTINE, Rule

CARD_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """The fields the runtime relies on; everything else is kept in ``extra``."""

    name: str
    labels: tuple[str, ...]
    malignant_label: str
    referral_threshold: float
    sha256: str
    preprocessing: PreprocessSpec
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def malignant_index(self) -> int:
        return self.labels.index(self.malignant_label)

    @property
    def rule(self) -> Rule:
        """What every record carries: the model and the threshold its decision used."""
        return Rule(self.name, self.sha256, self.referral_threshold)


def decision_rule(malignant_label: str, threshold: float) -> str:
    """The one rule that turns a model's probabilities into what is reported, in words.

    Card writers store it in the card (``referral.decision_rule``); ``edge-birads info``
    and the README show it; :func:`edge_birads.classifier.to_prediction` applies it.
    """
    return (
        f"'{REFER}' when the suspicion score (the probability of {malignant_label}) is >= {threshold:.4f}, "
        f"else '{ROUTINE}'; the group reported never contradicts the decision: a referred image "
        f"is reported as {malignant_label} even when another group is more likely (the threshold is set low, for "
        f"sensitivity), a routine image as the most likely of the other groups; every group's probability is reported too"
    )


def card_path_for(model_path: str | Path) -> Path:
    """The card's conventional location beside its model."""
    return Path(model_path).with_suffix(".json")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_card(data: dict[str, Any], source: str = "model card") -> ModelCard:
    """Validate a card dict; every problem is a ModelError naming the field."""
    try:
        labels = tuple(str(label) for label in data["labels"])
        malignant_label = str(data["malignant_label"])
        threshold = float(data["referral"]["threshold"])
        sha = str(data["sha256"]).lower()
        preprocessing = PreprocessSpec.from_dict(data["preprocessing"])
        name = str(data.get("name", "unnamed"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: missing or invalid field ({exc})") from None
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelError(f"{source}: labels must be at least two distinct names")
    if malignant_label not in labels:
        raise ModelError(f"{source}: malignant_label {malignant_label!r} is not one of the labels")
    if not 0.0 <= threshold <= 1.0:
        raise ModelError(f"{source}: referral threshold {threshold} is outside 0..1")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError(f"{source}: sha256 is not a 64-digit hex digest")
    return ModelCard(name, labels, malignant_label, threshold, sha, preprocessing, extra=data)


def load_card(model_path: str | Path, card_path: str | Path | None = None) -> ModelCard:
    """Read the card for ``model_path`` and check the model's sha256 against it."""
    model_path = Path(model_path)
    card_path = Path(card_path) if card_path is not None else card_path_for(model_path)
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    if not card_path.is_file():
        raise ModelError(f"model card not found: {card_path} (every model needs its card beside it)")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model card {card_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model card {card_path} is not a JSON object")
    card = parse_card(data, str(card_path))
    actual = sha256_of(model_path)
    if actual != card.sha256:
        raise ModelError(
            f"model {model_path} has sha256 {actual[:16]}..., but its card says {card.sha256[:16]}...: "
            "the model file is corrupt or does not belong to this card; refusing to load it"
        )
    return card
