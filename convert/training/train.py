"""Training: configurations, the batch feeder (augmentation, oversampling), the fit loop.

A run directory holds everything needed to convert and evaluate later
without retraining: ``model.keras``, ``config.json``, ``split.json`` (every
image with its patient, label, source and split part), ``history.json``.
Images are re-read from their paths through the runtime's preprocessing;
no pixel data is written to the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from convert.data.sources import (
    MALIGNANT_LABEL,
    PAPER_LABELS,
    Record,
    data_counts,
    labels_for,
    load_images,
    load_sources,
    subset_by_patient,
)
from convert.data.split import Split, split_by_patient
from convert.evaluation.metrics import roc_auc
from edge_birads.preprocess import PreprocessSpec

log = logging.getLogger("convert.training.train")


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. ``paper`` is the published method; the rest are ablations."""

    name: str = "paper"
    data: str = "auto"
    image_size: int = 224
    head: str = "flatten"
    loss: str = "focal"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    class_weights: bool = False
    oversample: bool = False
    rotation_degrees: float = 0.0
    clahe_clip_limit: float | None = None
    crop_to_breast: bool = False
    seed: int = 0
    subset: int | None = None  # at most this many images per source (whole patients), for quick runs
    test_fraction: float = 0.2
    val_fraction: float = 0.125
    threads: int = 2
    referral_sensitivity: float = 0.9

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            height=self.image_size,
            width=self.image_size,
            crop_to_breast=self.crop_to_breast,
            clahe_clip_limit=self.clahe_clip_limit,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def get_config(name: str, **overrides) -> TrainConfig:
    """A named paper-CNN configuration (a row of ``convert.training.rows.ROWS``), with the non-None ``overrides`` on top."""
    from convert.training.rows import ROWS

    choices = [row for row, spec in ROWS.items() if spec.recipe == "paper-cnn"]
    if name not in choices:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(choices)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(TrainConfig(**ROWS[name].overrides), **overrides)


def configure_tensorflow(threads: int, seed: int) -> None:
    """Cap threads (shared 2-core machines), seed everything, deterministic ops."""
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process
        pass
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


# --------------------------------------------------------------------------- the data of a run


@dataclass
class RunData:
    """Records with their preprocessed images and split."""

    records: list[Record]
    images: np.ndarray
    labels: tuple[str, ...]
    split: Split
    spec: PreprocessSpec
    summary: dict = field(default_factory=dict)

    def y(self) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[r.label] for r in self.records], np.int64)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, list[Record]]:
        idx = np.array(getattr(self.split, name), np.int64)
        return self.images[idx], self.y()[idx], [self.records[i] for i in idx]

    def malignant_labels(self) -> tuple[str, ...]:
        if self.labels == PAPER_LABELS:
            return ("BI-RADS 4", "BI-RADS 5")
        return (MALIGNANT_LABEL,) if MALIGNANT_LABEL in self.labels else (self.labels[-1],)

    def split_document(self) -> dict:
        part_of = {}
        for part in ("train", "val", "test"):
            for i in getattr(self.split, part):
                part_of[i] = part
        return {
            "labels": list(self.labels),
            "seed": self.split.seed,
            "preprocessing": self.spec.to_dict(),
            "images": [
                {"path": r.path, "patient_id": r.patient_id, "label": r.label, "source": r.source, "part": part_of[i]}
                for i, r in enumerate(self.records)
            ],
        }


def prepare_run_data(config: TrainConfig, synthetic_dir: Path | None = None) -> RunData:
    """Load records, read and preprocess pixels, split by patient."""
    records = load_sources(config.data, synthetic_dir=synthetic_dir, seed=config.seed)
    if config.subset:
        records = subset_by_patient(records, config.subset, seed=config.seed)
    spec = config.preprocess_spec()
    started = time.perf_counter()
    images, kept = load_images(records, spec)
    log.info("read and preprocessed %d images in %.1f s", len(kept), time.perf_counter() - started)
    split = split_by_patient(kept, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction)
    return RunData(kept, images, labels_for(kept), split, spec, data_counts(kept))


def load_run_data(run_dir: str | Path) -> RunData:
    """Re-read the images of a finished run, exactly as split then."""
    doc = json.loads((Path(run_dir) / "split.json").read_text())
    spec = PreprocessSpec.from_dict(doc["preprocessing"])
    records = [Record(d["path"], d["patient_id"], d["label"], d["source"]) for d in doc["images"]]
    parts = [d["part"] for d in doc["images"]]
    images, kept = load_images(records, spec)
    if len(kept) != len(records):
        raise RuntimeError(f"{len(records) - len(kept)} images of the run could not be read again")
    split = Split(
        tuple(i for i, p in enumerate(parts) if p == "train"),
        tuple(i for i, p in enumerate(parts) if p == "val"),
        tuple(i for i, p in enumerate(parts) if p == "test"),
        int(doc["seed"]),
    )
    return RunData(records, images, tuple(doc["labels"]), split, spec, data_counts(records))


# --------------------------------------------------------------------------- batches


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate an (H, W, 1) image about its centre; corners filled with 0 (background)."""
    import cv2

    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    out = cv2.warpAffine(image[:, :, 0], matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out[:, :, None]


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (k * count_c) per class (0 for absent classes): each class weighs the same in total."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def epoch_order(y: np.ndarray, rng: np.random.Generator, oversample: bool) -> np.ndarray:
    """A shuffled epoch; with ``oversample`` every class is drawn up to the majority count."""
    if not oversample:
        return rng.permutation(len(y))
    counts = np.bincount(y)
    target = counts.max()
    parts = []
    for cls in np.nonzero(counts)[0]:
        members = np.nonzero(y == cls)[0]
        extra = rng.choice(members, target - len(members), replace=True) if target > len(members) else np.zeros(0, int)
        parts.append(np.concatenate([members, extra]))
    return rng.permutation(np.concatenate(parts))


def make_batches(x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig):
    """A keras PyDataset yielding (images, one-hot, sample weights) with the config's augmentation."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(config.seed + 1)
            self.onehot = np.eye(n_classes, dtype=np.float32)[y]
            weights = balanced_class_weights(y, n_classes) if config.class_weights else np.ones(n_classes)
            self.sample_weight = weights[y].astype(np.float32)
            self.order = epoch_order(y, self.rng, config.oversample)

        def __len__(self) -> int:
            return math.ceil(len(self.order) / config.batch_size)

        def __getitem__(self, index: int):
            idx = self.order[index * config.batch_size : (index + 1) * config.batch_size]
            batch = x[idx]
            if config.rotation_degrees:
                angles = self.rng.uniform(-config.rotation_degrees, config.rotation_degrees, len(idx))
                batch = np.stack([rotate(image, angle) for image, angle in zip(batch, angles)])
            return batch, self.onehot[idx], self.sample_weight[idx]

        def on_epoch_end(self) -> None:
            self.order = epoch_order(y, self.rng, config.oversample)

    return Batches()


# --------------------------------------------------------------------------- fit


def validation_callback(x_val: np.ndarray, y_val: np.ndarray, labels: tuple[str, ...], malignant: tuple[str, ...], sink: list):
    """Per epoch: validation recall per class and malignant-vs-rest AUC, logged as one line."""
    import keras

    malignant_idx = [labels.index(m) for m in malignant]

    class ValidationReport(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            entry = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
            if len(x_val):
                probs = self.model.predict(x_val, batch_size=64, verbose=0)
                pred = probs.argmax(1)
                recalls = {}
                for i, label in enumerate(labels):
                    mask = y_val == i
                    recalls[label] = float((pred[mask] == i).mean()) if mask.any() else None
                auc = roc_auc(np.isin(y_val, malignant_idx), probs[:, malignant_idx].sum(1))
                entry["val_recall"] = recalls
                entry["val_malignant_auc"] = auc
                entry.setdefault("val_accuracy", float((pred == y_val).mean()))
            sink.append(entry)
            # Only the figures this fit has: a fit without validation_data has no Keras val_loss.
            names = (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "| val loss"), ("val_accuracy", "val acc"))
            parts = [f"epoch {epoch + 1}:"] + [f"{name} {entry[key]:.4f}" for key, name in names if key in entry]
            recall_text = " ".join(f"{label}={value:.2f}" for label, value in entry.get("val_recall", {}).items() if value is not None)
            if recall_text:
                parts.append(f"| val recall {recall_text}")
            if entry.get("val_malignant_auc") is not None:
                parts.append(f"| val malignant AUC {entry['val_malignant_auc']:.3f}")
            log.info("%s", " ".join(parts))

    return ValidationReport()


def train(config: TrainConfig, out_dir: str | Path, data: RunData | None = None, command: str = "") -> tuple[object, RunData]:
    """Train ``config`` and write the run directory; returns (Keras model, run data)."""
    from convert.models.paper_cnn import build_paper_cnn, compile_model, describe

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_tensorflow(config.threads, config.seed)
    if data is None:
        data = prepare_run_data(config, synthetic_dir=out_dir / "synthetic-images")
    x_train, y_train, _ = data.part("train")
    x_val, y_val, _ = data.part("val")
    n_classes = len(data.labels)
    log.info(
        "config %s: %d train / %d val / %d test images (%d / %d / %d patients), labels %s",
        config.name, len(data.split.train), len(data.split.val), len(data.split.test),
        len(data.split.patients(data.records, "train")), len(data.split.patients(data.records, "val")),
        len(data.split.patients(data.records, "test")), list(data.labels),
    )
    model = build_paper_cnn(n_classes, config.image_size, head=config.head, seed=config.seed)
    compile_model(model, config.loss, config.learning_rate, config.focal_gamma, config.focal_alpha)
    log.info("model: %s", describe(model))
    epochs_log: list[dict] = []
    started = time.perf_counter()
    history = model.fit(
        make_batches(x_train, y_train, n_classes, config),
        validation_data=(x_val, np.eye(n_classes, dtype=np.float32)[y_val]) if len(x_val) else None,
        epochs=config.epochs,
        verbose=2,
        callbacks=[validation_callback(x_val, y_val, data.labels, data.malignant_labels(), epochs_log)],
    )
    seconds = time.perf_counter() - started
    log.info("trained %d epochs in %.0f s", config.epochs, seconds)
    model.save(out_dir / "model.keras")
    (out_dir / "config.json").write_text(json.dumps({**config.to_dict(), "command": command}, indent=2) + "\n")
    (out_dir / "split.json").write_text(json.dumps(data.split_document(), indent=1) + "\n")
    (out_dir / "history.json").write_text(
        json.dumps(
            {
                "config": config.name,
                "training_seconds": round(seconds, 1),
                "architecture": describe(model),
                "keras_history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
                "epochs": epochs_log,
            },
            indent=1,
        )
        + "\n"
    )
    return model, data
