"""The paper CNN's cross-validation on the lesion FCN's folds, on a small synthetic pool."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("tensorflow")


def synthetic_pool(patients: int = 30, size: int = 32):
    """Two sources, two views per patient; malignant images are brighter (a signal one epoch can find)."""
    from convert.data.lesion_data import AnnotatedImage, PreparedPool
    from edge_birads.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)
    images, items = [], []
    for p in range(patients):
        source = "mini-mias" if p % 2 else "cbis-ddsm-mass"
        label = (p // 2) % 3 if source == "mini-mias" else 1 + (p // 2) % 2
        for _ in range(2):
            images.append(np.clip(rng.normal(60 + 60 * label, 20, (size, size)), 0, 255).astype(np.uint8))
            items.append(AnnotatedImage(path=None, patient_id=f"p{p}", source=source, label=label))
    return PreparedPool(PreprocessSpec(height=size, width=size), np.stack(images), items, [()] * len(items))


def test_a_fold_is_scored_float_and_int8_on_the_lesion_folds(tmp_path, caplog):
    from convert.training.paper_cv import run_fold
    from convert.training.train import get_config
    from convert.training.train_lesion import TrainConfig, collect_cv, fold_split

    pool = synthetic_pool()
    folds = TrainConfig(folds=3, validation_fraction=0.25)
    cfg = get_config("paper", image_size=32, epochs=3, batch_size=8)
    messages: list[str] = []
    caplog.set_level(logging.INFO, logger="convert.training.train")
    run_fold(cfg, pool, folds, 1, tmp_path, messages.append)

    train_idx, val_idx, test_idx = fold_split(pool, folds, 1)
    patients = lambda idx: {pool.items[i].patient_id for i in idx}  # noqa: E731
    assert not patients(test_idx) & (patients(train_idx) | patients(val_idx))
    for suffix in ("", "_int8"):
        saved = np.load(tmp_path / f"fold1{suffix}.npz")
        assert saved["test_idx"].tolist() == test_idx.tolist()
        assert saved["val_idx"].tolist() == val_idx.tolist()
        probs = saved["probs"]
        assert probs.shape == (test_idx.size, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
        # the threshold keeps >= 90% sensitivity on the validation images it was chosen on
        val_malignant = np.array([pool.items[i].label == 2 for i in val_idx])
        assert (saved["val_probs"][val_malignant, 2] >= float(saved["threshold"])).mean() >= 0.9
    float_probs, int8_probs = np.load(tmp_path / "fold1.npz")["probs"], np.load(tmp_path / "fold1_int8.npz")["probs"]
    assert np.abs(float_probs - int8_probs).max() < 0.15
    assert (tmp_path / "fold1_int8.tflite").read_bytes()[4:8] == b"TFL3"
    epochs = json.loads((tmp_path / "fold1_history.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all("val_malignant_auc" in e and e["loss"] > 0 for e in epochs)
    assert any('"model": "int8"' in m for m in messages)
    # Progress, one line per epoch, with only the figures this fit has (no Keras validation loss: no "nan").
    progress = [r.getMessage() for r in caplog.records if r.name == "convert.training.train"]
    assert [m.split(":")[0] for m in progress] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all(" nan" not in m and " val acc " in m and "val malignant AUC" in m for m in progress)
    assert all(0.0 <= e["val_accuracy"] <= 1.0 and "val_loss" not in e for e in epochs)

    from convert.training.paper_cv import write_parity

    parity = write_parity(tmp_path, 3)
    assert list(parity) == ["1"] and parity["1"]["n_images"] == test_idx.size
    assert parity["1"]["max_abs_prob_diff"] == pytest.approx(np.abs(float_probs - int8_probs).max())
    metrics = collect_cv(pool, tmp_path, folds, suffix="_int8")
    assert metrics["folds_done"] == 1
    assert set(metrics["pooled_out_of_fold"]) == {"mini-mias", "cbis-ddsm-mass"}
