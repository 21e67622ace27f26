"""The model card: what a .tflite file is, what it expects and how good it is.

A card is a JSON file beside the model (``model.tflite`` -> ``model.json``).
The runtime reads labels, input spec, preprocessing and referral threshold
from it, and refuses a model whose sha256 does not match the card: a flipped
byte in a medical model must not go unnoticed.

This module owns the card's layout: :data:`SECTIONS` lists every section a
card must have (the bundled ``models/default.json`` is a complete one), and
:func:`new_card` / :func:`write_card` are the one writer every ``convert``
recipe uses; it reads the input and output tensors, the sha256 and the size
off the model itself and refuses to write an incomplete card. The runtime
holds a card that declares this schema version to it; an older or hand-made
card (a test model's) needs only the fields the runtime uses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_birads import DISCLAIMER
from edge_birads.durable import write_json_atomic
from edge_birads.errors import ModelError
from edge_birads.interpreter import make_interpreter, model_tensors, tensor_spec
from edge_birads.preprocess import PreprocessSpec
from edge_birads.results import REFER, ROUTINE, Rule

#: 2: every section of SECTIONS is required of a written card (1: only the runtime's fields).
CARD_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Section:
    """One required part of a card: where it is (a dotted path), what it holds, the keys it must have."""

    path: str
    what: str
    keys: tuple[str, ...] = ()


SECTIONS: tuple[Section, ...] = (
    Section("schema_version", "the card layout's version (CARD_SCHEMA_VERSION)"),
    Section("name", "the model's name"),
    Section("labels", "the groups, in the order of the model's probabilities"),
    Section("malignant_label", "the group whose probability is the suspicion score"),
    Section("input", "the input tensor", ("shape", "dtype")),
    Section("output", "the output tensor(s)"),
    Section("preprocessing", "how an image becomes the input (edge_birads.preprocess.PreprocessSpec)", ("height", "width")),
    Section("training.data", "the training data: sources with their images and patients, label mapping", ("label_mapping",)),
    Section("training.split", "how patients were split, and the images and patients of each part", ("method", "train", "val", "test")),
    Section("metrics", "the int8 model's figures on held-out patients, computed by the runtime's own code", ("note", "test")),
    Section("metrics.recipe_cross_validation", "the recipe's k-fold cross-validation, or a note saying it was not run", ("note",)),
    Section("referral", "the threshold rule: the threshold, how it was chosen, the decision it drives", ("threshold", "method", "decision_rule")),
    Section("initialisation", "where the starting weights came from", ("source",)),
    Section("versions", "the library versions the model was built with"),
    Section("sha256", "the model file's sha256"),
    Section("intended_use", "research use, not a diagnostic device"),
)

#: The cross-validation section of a recipe that was not cross-validated.
NOT_CROSS_VALIDATED = {"note": "not run; the test figures come from one patient-level split only"}


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
    # A card that says it follows the schema is held to it; older and hand-made test cards need only the runtime's fields.
    complete = isinstance(data.get("schema_version"), int) and data["schema_version"] >= CARD_SCHEMA_VERSION
    card = validate_card(data, str(card_path)) if complete else parse_card(data, str(card_path))
    actual = sha256_of(model_path)
    if actual != card.sha256:
        raise ModelError(
            f"model {model_path} has sha256 {actual[:16]}..., but its card says {card.sha256[:16]}...: "
            "the model file is corrupt or does not belong to this card; refusing to load it"
        )
    return card


def section_value(data: dict, path: str) -> Any:
    """The value at a dotted path, or None when any part of it is missing."""
    value: Any = data
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def validate_card(data: dict[str, Any], source: str = "model card") -> ModelCard:
    """Check a card against :data:`SECTIONS` (and the runtime's own field checks); the first problem is one
    ModelError naming the section and what it should hold."""
    for section in SECTIONS:
        value = section_value(data, section.path)
        if value is None or value == {} or value == []:
            raise ModelError(f"{source}: missing section '{section.path}' ({section.what})")
        missing = [key for key in section.keys if not isinstance(value, dict) or key not in value]
        if missing:
            raise ModelError(f"{source}: section '{section.path}' lacks {', '.join(repr(k) for k in missing)} ({section.what})")
    return parse_card(data, source)


def new_card(
    model_path: str | Path,
    *,
    name: str,
    description: str,
    labels: list[str],
    malignant_label: str,
    preprocessing: dict,
    referral: dict,
    training: dict,
    metrics: dict,
    cross_validation: dict | None,
    initialisation: dict,
    versions: dict,
    intended_use: str = DISCLAIMER,
    output: dict | None = None,
    **more: Any,
) -> dict[str, Any]:
    """A complete card for the model at ``model_path``, validated.

    What the model itself says is read off it: the input and output tensors
    (through the runtime's interpreter; ``output`` overrides the latter for a
    model with a lesion map), the sha256 and the size; the decision rule is
    worded from the threshold. ``cross_validation`` None records that the
    recipe was not cross-validated. ``more`` (parity, conversion, keras_config)
    is kept as given.
    """
    model_path = Path(model_path)
    tensors = model_tensors(make_interpreter(model_path)[0], len(labels))
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "description": description,
        "labels": list(labels),
        "malignant_label": malignant_label,
        "input": tensor_spec(tensors.input),
        "output": output if output is not None else tensor_spec(tensors.probabilities),
        "preprocessing": preprocessing,
        "referral": {**referral, "decision_rule": decision_rule(malignant_label, float(referral["threshold"]))},
        "training": training,
        "initialisation": initialisation,
        "metrics": {**metrics, "recipe_cross_validation": cross_validation or NOT_CROSS_VALIDATED},
        **more,
        "sha256": sha256_of(model_path),
        "size_bytes": model_path.stat().st_size,
        "versions": versions,
        "intended_use": intended_use,
    }
    validate_card(card, f"new card for {model_path}")
    return card


def write_card(card: dict[str, Any], model_path: str | Path) -> Path:
    """Write ``card`` beside its model (``name.json`` beside ``name.tflite``) atomically, after checking it is
    complete, then load it back the way the runtime does (sha256 included)."""
    validate_card(card, f"card for {model_path}")
    path = card_path_for(model_path)
    write_json_atomic(path, card)
    load_card(model_path, path)
    return path
