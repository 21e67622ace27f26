"""Out-of-fold ensembles of ablation rows, on synthetic per-fold outputs (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from convert.data.lesion_data import AnnotatedImage, PreparedPool
from convert.experiments.ensemble_cv import combine, ensemble_cv, logit
from convert.training.train_lesion import TrainConfig, fold_split
from edge_birads.preprocess import PreprocessSpec


def test_combine_standardises_each_member_on_its_validation_outputs():
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    # member a: validation logits -1, 1 (mean 0, sd 1); member b: 0, 4 (mean 2, sd 2)
    a_val, b_val = sigmoid(np.array([-1.0, 1.0])), sigmoid(np.array([0.0, 4.0]))
    a_test, b_test = sigmoid(np.array([2.0])), sigmoid(np.array([0.0]))
    val, test = combine([a_val, b_val], [a_test, b_test])
    # test: a -> (2 - 0) / 1 = 2, b -> (0 - 2) / 2 = -1; mean 0.5
    assert test[0] == pytest.approx(sigmoid(0.5), abs=1e-9)
    np.testing.assert_allclose(val, sigmoid(np.array([-1.0, 1.0])), atol=1e-9)
    # a member on a 10x larger logit scale does not outvote the other: standardising removes scale
    _, scaled = combine([sigmoid(10 * np.array([-0.1, 0.1])), b_val], [sigmoid(np.array([2.0])), b_test])
    assert scaled[0] == pytest.approx(sigmoid(0.5), abs=1e-3)
    assert logit(np.array([0.0, 1.0])).tolist() == pytest.approx([np.log(1e-4 / (1 - 1e-4)), np.log((1 - 1e-4) / 1e-4)])


def synthetic_pool(patients: int = 40) -> PreparedPool:
    items = []
    for p in range(patients):
        source = "mini-mias" if p % 2 else "cbis-ddsm-mass"
        label = (p // 2) % 3 if source == "mini-mias" else 1 + (p // 2) % 2
        items += [AnnotatedImage(path=None, patient_id=f"p{p}", source=source, label=label)] * 2
    return PreparedPool(PreprocessSpec(height=8, width=8), np.zeros((len(items), 8, 8), np.uint8), items, [()] * len(items))


def test_ensemble_of_two_rows_beats_each_when_their_errors_differ(tmp_path):
    """Two members, each seeing the truth plus its own noise: the average is closer to the truth."""
    pool, folds = synthetic_pool(), TrainConfig(folds=3)
    truth = np.array([item.label == 2 for item in pool.items], float)
    rng = np.random.default_rng(0)
    members = {}
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        noisy = 1 / (1 + np.exp(-(2 * truth - 1 + rng.normal(0, 1.5, truth.size))))
        probs = np.c_[(1 - noisy) / 2, (1 - noisy) / 2, noisy]
        for fold in range(3):
            _, val_idx, test_idx = fold_split(pool, folds, fold)
            np.savez(run / f"fold{fold}_int8.npz", test_idx=test_idx, probs=probs[test_idx], threshold=0.5, val_idx=val_idx,
                     val_probs=probs[val_idx])
        members[name] = (run, pool, folds)
    result = ensemble_cv(members, tmp_path / "ab")
    assert result["folds_done"] == 3
    saved = np.load(tmp_path / "ab" / "fold0_int8.npz")
    assert saved["probs"].shape == (saved["test_idx"].size, 1)
    assert "recall_per_class" not in result["pooled_out_of_fold"]["mini-mias"]
    from convert.training.train_lesion import collect_cv

    single = collect_cv(pool, tmp_path / "a", folds, suffix="_int8")["pooled_out_of_fold"]["cbis-ddsm-mass"]["auc_malignant_vs_rest"]
    assert result["pooled_out_of_fold"]["cbis-ddsm-mass"]["auc_malignant_vs_rest"] > single


def test_a_member_with_other_folds_is_refused(tmp_path):
    pool, folds = synthetic_pool(), TrainConfig(folds=3)
    run = tmp_path / "a"
    run.mkdir()
    np.savez(run / "fold0_int8.npz", test_idx=np.arange(4), probs=np.full((4, 3), 1 / 3), threshold=0.5, val_idx=np.arange(4, 8),
             val_probs=np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="other patients than the ablation's fold"):
        ensemble_cv({"a": (run, pool, folds)}, tmp_path / "out")
