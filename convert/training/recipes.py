"""Recipes: one small interface per architecture, one registry, one cross-validation runner.

A recipe is what differs between architectures: its configuration (a frozen
dataclass), the preprocessing its configuration asks for, how it builds its
Keras model and how it fits it on a prepared pool's training images (choosing
what it chooses on the validation images). Everything else is shared and lives
here or beside it: the folds (``convert.data.split.FoldProtocol``), int8 conversion
(``convert.evaluation.export.to_tflite_int8``), scoring float and int8 outputs on the
fold's patients with a validation-chosen threshold (``convert.training.paper_cv.score_fold``)
and the metrics (``convert.training.train_lesion.collect_cv``).

Adding an architecture: one module with a ``KerasRecipe`` subclass, and one
line in ``RECIPES``. Named configurations of it (rows of the ablation, or
presets of ``python -m convert build``) are lines of ``convert.training.rows.ROWS``.

    run_cv("paper-cnn", config_for("paper-focal"), Path("RUNS/paper-focal"))
"""

from __future__ import annotations

import importlib
import json
import time
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from convert.data.split import FoldProtocol, fold_split
from edge_birads.preprocess import PreprocessSpec


@dataclass
class Fitted:
    """A fold's fitted model: Keras, (N, H, W, 1) images in [0, 1] -> (N, 3) class probabilities."""

    model: Any
    record: dict = field(default_factory=dict)  # what the fit wants kept in fold{k}_history.json (epochs, chosen epoch)
    train_idx: np.ndarray | None = None  # the images it learnt from when fewer than the fold's (int8 calibration draws from these)


@runtime_checkable
class Recipe(Protocol):
    """What the cross-validation runner needs of an architecture."""

    name: str  # the registry key
    config_key: str  # the key of its configuration in a run's config.json

    @property
    def config_type(self) -> type: ...

    def spec(self, cfg) -> PreprocessSpec: ...

    def build(self, cfg, seed: int): ...

    def run_fold(self, cfg, pool, protocol: FoldProtocol, fold: int, out_dir: Path, log) -> None: ...


class KerasRecipe:
    """A recipe from ``build`` + ``fit`` (+ ``predict``): the fold step (split, fit, int8, score) is shared.

    Subclasses set ``name``, ``config_key``, ``config_type`` and implement
    ``spec``, ``build`` and ``fit``.
    """

    name: str = ""
    config_key: str = "config"
    config_type: type = object

    def spec(self, cfg) -> PreprocessSpec:
        raise NotImplementedError

    def build(self, cfg, seed: int):
        raise NotImplementedError

    def fit(self, cfg, pool, train_idx: np.ndarray, val_idx: np.ndarray, seed: int, log, prefix: Path) -> Fitted:
        """Fit on ``train_idx`` (``val_idx``: epoch choice, calibration); ``prefix``: where to keep weights (PREFIX.weights.h5)."""
        raise NotImplementedError

    def predict(self, cfg, model, images: np.ndarray) -> np.ndarray:
        from convert.evaluation.export import keras_predict

        return keras_predict(model, images)

    def int8_activations(self, cfg) -> str:
        """How the fold's int8 model quantizes its activations (convert.evaluation.export.INT8_ACTIVATIONS)."""
        return "calibrated"

    def calibration(self, pool, train_idx: np.ndarray, seed: int) -> np.ndarray:
        """int8 calibration images, drawn from the fold's training images."""
        from convert.training.paper_cv import representative

        return representative(pool, train_idx, seed)

    def run_fold(self, cfg, pool, protocol: FoldProtocol, fold: int, out_dir: Path, log) -> None:
        """Fit fold ``fold``, convert it to int8, score float and int8 on its test patients (fold{k}.npz, fold{k}_int8.npz)."""
        from convert.evaluation.export import TfliteModel, to_tflite_int8
        from convert.training.paper_cv import score_fold
        from convert.training.train_lesion import setup_tensorflow

        started = time.perf_counter()
        train_idx, val_idx, test_idx = fold_split(pool, protocol, fold)
        seed = cfg.seed + fold
        setup_tensorflow(seed, getattr(cfg, "threads", 2))
        log(f"fold {fold}: train {train_idx.size} images, validation {val_idx.size}, test {test_idx.size}")
        fitted = self.fit(cfg, pool, train_idx, val_idx, seed, log, out_dir / f"fold{fold}")
        trained = time.perf_counter() - started
        learnt = train_idx if fitted.train_idx is None else fitted.train_idx
        activations = self.int8_activations(cfg)
        images = self.calibration(pool, learnt, seed) if activations == "calibrated" else None  # dynamic ranges need none
        int8 = to_tflite_int8(fitted.model, images, activations)
        (out_dir / f"fold{fold}_int8.tflite").write_bytes(int8)
        predictors = {"": lambda x: self.predict(cfg, fitted.model, x), "_int8": TfliteModel(int8).predict}
        score_fold(pool, fold, val_idx, test_idx, predictors, protocol.referral_sensitivity, out_dir, log)
        (out_dir / f"fold{fold}_history.json").write_text(json.dumps({**fitted.record, "training_seconds": round(trained, 1)}, indent=1))
        log(f"fold {fold}: done in {time.perf_counter() - started:.0f} s (training {trained:.0f} s)")


# ---------------------------------------------------------------- the registry: name -> recipe ("module:attribute" until first used)

RECIPES: dict[str, Recipe | str] = {
    "paper-cnn": "convert.training.paper_cv:RECIPE",
    "lesion-fcn": "convert.training.train_lesion:RECIPE",
    "pretrained": "convert.training.pretrained:RECIPE",
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if isinstance(recipe, str):
        module, _, attribute = recipe.partition(":")
        recipe = RECIPES[name] = getattr(importlib.import_module(module), attribute)
    return recipe


# ---------------------------------------------------------------- configurations: a row's overrides, then --set KEY=VALUE


def parse_value(config, key: str, text: str):
    """``text`` as the type of ``config``'s field ``key`` (``patch.size``: a field of a nested dataclass)."""
    target, _, rest = key.partition(".")
    names = {f.name: f for f in fields(config)}
    if target not in names:
        raise ValueError(f"unknown setting {key!r} for {type(config).__name__}; known: {', '.join(names)}")
    if rest:
        inner = getattr(config, target)
        if not is_dataclass(inner):
            raise ValueError(f"unknown setting {key!r}: {target} has no fields")
        return parse_value(inner, rest, text)
    hint = typing.get_type_hints(type(config)).get(target, type(getattr(config, target)))
    kinds = typing.get_args(hint) or (hint,)
    if type(None) in kinds and text.lower() == "none":
        return None
    kind = next(k for k in kinds if k is not type(None))
    origin = typing.get_origin(kind) or kind
    try:
        if origin is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        if origin is tuple:
            item = (typing.get_args(kind) or (float,))[0]
            return tuple(item(v) for v in text.split(","))
        return origin(text)
    except ValueError:
        raise ValueError(f"{key}={text}: not a valid {getattr(origin, '__name__', origin)}") from None


def with_settings(config, settings: list[str] | tuple[str, ...] = ()):
    """``config`` with ``KEY=VALUE`` settings applied (``patch.KEY=VALUE`` for a nested dataclass field)."""
    top: dict = {}
    nested: dict[str, dict] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"{setting!r}: expected KEY=VALUE")
        value = parse_value(config, key, text)
        if "." in key:
            outer, _, inner = key.partition(".")
            nested.setdefault(outer, {})[inner] = value
        else:
            top[key] = value
    for outer, values in nested.items():
        top[outer] = replace(getattr(config, outer), **values)
    return replace(config, **top)


def config_for(row: str, settings: list[str] | tuple[str, ...] = ()):
    """The configuration of a named row (``convert.training.rows.ROWS``), with ``KEY=VALUE`` settings on top."""
    from convert.training.rows import ROWS

    if row not in ROWS:
        raise ValueError(f"unknown configuration {row!r}; choose from {', '.join(ROWS)}")
    if ROWS[row].members:
        raise ValueError(f"{row!r} combines other rows ({', '.join(ROWS[row].members)}); it has no configuration of its own")
    return with_settings(replace(get_recipe(ROWS[row].recipe).config_type(), **ROWS[row].overrides), settings)


# ---------------------------------------------------------------- the cross-validation runner


def run_cv(name: str, cfg, out_dir: Path, protocol: FoldProtocol = FoldProtocol(), only_folds: list[int] | None = None, pool=None) -> dict:
    """Cross-validate recipe ``name`` with ``cfg`` on ``protocol``'s patient folds; resumable (finished folds are kept).

    Writes per fold ``fold{k}.npz`` (float) and ``fold{k}_int8.npz`` (the int8
    model the runtime would run), then parity_int8.json, metrics.json and
    metrics_int8.json; returns the int8 models' out-of-fold metrics.
    """
    from convert.data.lesion_data import load_pool
    from convert.training.paper_cv import run_folds, write_parity
    from convert.training.train_lesion import DEFAULT_CACHE, collect_cv, run_log

    recipe = get_recipe(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({"recipe": name, recipe.config_key: asdict(cfg), "folds": asdict(protocol)}, indent=1))
    pool = pool if pool is not None else load_pool(recipe.spec(cfg), DEFAULT_CACHE)
    with run_log(out_dir) as log:
        run_folds(out_dir, protocol, only_folds, log, lambda fold: recipe.run_fold(cfg, pool, protocol, fold, out_dir, log))
    write_parity(out_dir, protocol.folds)
    collect_cv(pool, out_dir, protocol)
    return collect_cv(pool, out_dir, protocol, suffix="_int8")
