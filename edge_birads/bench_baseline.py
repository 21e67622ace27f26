"""The float baseline of ``edge-birads bench``: a float32 TFLite and the float Keras model of the same network.

The only runtime-side module that knows the training framework exists: it asks whether TensorFlow is
installed (without importing it), has a child process rebuild the float network from the card's
``keras_config`` and convert it, and times both in their own children. Nothing of the runtime imports it
except ``bench``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from edge_birads.bench_child import EngineResult, engine_from_child, run_child
from edge_birads.progress import Progress

BASELINE = "Keras (TensorFlow)"  # the engine the ratios divide by the int8 one
FLOAT32 = "float32 TFLite"
NO_TENSORFLOW = "TensorFlow is not installed (pip install 'edge-birads[train]')"
DISTRIBUTIONS = ("tensorflow", "keras")  # versions listed in the report's machine section


def tensorflow_installed() -> bool:
    """Whether TensorFlow is importable, without importing it here."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def float_model_with_card(float_model: Path, int8_model: Path, scratch: Path) -> Path:
    """A user's float32 .tflite, with a card: its own beside it, else the int8 card with its sha256."""
    from edge_birads.card import card_path_for, sha256_of

    if card_path_for(float_model).is_file():
        return float_model
    data = json.loads(card_path_for(int8_model).read_text(encoding="utf-8"))
    data["sha256"] = sha256_of(float_model)
    linked = scratch / "user-float32.tflite"
    shutil.copyfile(float_model, linked)
    card_path_for(linked).write_text(json.dumps(data), encoding="utf-8")
    return linked


def float_engines(model: Path, float_model: Path | None, card, base_job: dict, scratch: str, threads: int,
                  progress: Progress) -> tuple[list[EngineResult], list[str]]:
    """The float32 TFLite and Keras engines (run, or skipped with the reason), and notes for the report."""
    from edge_birads.card import card_path_for

    notes: list[str] = []
    has_tf = tensorflow_installed()
    has_config = "keras_config" in card.extra
    prepared: dict | None = None
    prepare_error = None
    engines: list[EngineResult] = []
    if has_tf and has_config:
        prepared, _, prepare_error = run_child(
            {"kind": "prepare", "model": str(model), "card": str(card_path_for(model)), "out_dir": scratch, "threads": threads}
        )
        if prepared:
            notes.append(f"float engines: Keras model rebuilt from the card's keras_config with {prepared['weights']}"
                         + (f" ({prepared['weights_note']})" if prepared.get("weights_note") else ""))
    if float_model is not None:
        float_path = float_model_with_card(float_model, model, Path(scratch))
        engines.append(engine_from_child(FLOAT32, dict(base_job, kind="tflite", model=str(float_path)), progress))
        engines[-1].model = str(float_model)
    elif prepared:
        engines.append(engine_from_child(FLOAT32, dict(base_job, kind="tflite", model=prepared["float_model"]), progress))
        engines[-1].model = "converted from keras_config (temporary)"
    else:
        engines.append(EngineResult(FLOAT32, "skipped", reason=skip_reason(has_tf, has_config, prepare_error)))
    if prepared:
        keras_job = dict(base_job, kind="keras", model=prepared["keras_model"], card_model=str(model))
        engines.append(engine_from_child(BASELINE, keras_job, progress))
        engines[-1].model = "rebuilt from keras_config (temporary)"
    else:
        engines.append(EngineResult(BASELINE, "skipped", reason=skip_reason(has_tf, has_config, prepare_error)))
    return engines, notes


def skip_reason(has_tf: bool, has_config: bool, prepare_error: str | None) -> str:
    if not has_tf:
        return NO_TENSORFLOW
    if not has_config:
        return "the model card has no keras_config to rebuild the float network from (or pass --float-model)"
    return f"could not rebuild and convert the float model: {prepare_error}"
