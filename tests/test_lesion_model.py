"""The lesion FCN's whole-image wrapper, its int8 export, and the head calibration."""

from __future__ import annotations

import numpy as np
import pytest

from convert.training.train_lesion import fit_head, head_probs

tf = pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) is not installed")


@pytest.fixture(scope="module")
def tiny():
    import keras

    from convert.models.lesion_model import build_fcn, build_whole_image_model

    keras.utils.set_random_seed(0)
    fcn = build_fcn(width=4)
    model = build_whole_image_model(fcn, 128, 64, smooth=2, batch_size=1)
    return fcn, model


def test_whole_image_model_is_fcn_maps_soft_max_pooled(tiny):
    fcn, model = tiny
    image = np.random.default_rng(0).random((1, 128, 64, 1), dtype=np.float32)
    maps = np.asarray(fcn(image))[0]
    assert maps.shape == (8, 4, 2)  # stride 16
    smooth = (maps[:-1, :-1] + maps[1:, :-1] + maps[:-1, 1:] + maps[1:, 1:]) / 4.0
    pooled = smooth.reshape(-1, 2).max(axis=0)
    expected = np.exp([0.0, pooled[0], pooled[1]])
    expected /= expected.sum()  # identity head: logits [0, benign, malignant]
    assert np.allclose(np.asarray(model(image))[0], expected, atol=1e-5)


def test_int8_export_runs_with_int8_io_and_plain_ops(tiny):
    from convert.evaluation.export import TfliteModel, op_versions, parity, tflite_214_problems, to_tflite_int8

    _, model = tiny
    rng = np.random.default_rng(1)
    images = rng.random((12, 128, 64, 1), dtype=np.float32)
    flatbuffer = to_tflite_int8(model, images[:8])
    int8 = TfliteModel(flatbuffer)
    assert int8.input_spec.shape == [1, 128, 64, 1] and int8.input_spec.dtype == "int8"
    assert int8.output_spec.shape == [1, 3] and int8.output_spec.dtype == "int8"
    ops = set(op_versions(flatbuffer))
    assert ops <= {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    int8_probs = int8.predict(images[8:], renormalised=False)
    float_probs = np.stack([np.asarray(model(image[None]))[0] for image in images[8:]])
    assert np.allclose(int8_probs.sum(axis=1), 1.0, atol=0.02)
    assert parity(float_probs, int8_probs).max_abs_prob_diff < 0.05
    assert tflite_214_problems(op_versions(flatbuffer)) == []  # loadable by tflite-runtime 2.14 too


def test_fit_head_learns_which_score_means_which_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    scores = rng.normal(size=(300, 2))
    scores[labels == 1, 0] += 3.0  # benign score high on benign images
    scores[labels == 2, 1] += 3.0  # malignant score high on malignant images
    kernel, bias = fit_head(scores, labels)
    predicted = head_probs(scores, kernel, bias).argmax(axis=1)
    assert (predicted == labels).mean() > 0.8
    assert kernel[1, 2] > 0 > kernel[1, 0] and kernel[0, 1] > 0


def test_fit_head_keeps_identity_with_one_class():
    kernel, bias = fit_head(np.zeros((5, 2)), np.full(5, 2))
    assert kernel.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] and bias.tolist() == [0.0, 0.0, 0.0]


def synthetic_lesion_pool():
    """24 patients x 2 views of synthetic breasts; benign and malignant images hold a blob of known place."""
    from convert.data.lesion_data import AnnotatedImage, Lesion, PreparedPool
    from edge_birads.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)
    images, items, lesions = [], [], []
    for p in range(24):
        for view in range(2):
            label = (0, 1, 2)[(p + view) % 3]
            image = np.clip(rng.normal(100, 12, (128, 128)), 0, 255).astype(np.uint8)
            image[:, 100:] = 5  # background beside the "breast"
            found = ()
            if label:
                row, col = (int(v) for v in rng.integers(24, 80, 2))
                yy, xx = np.mgrid[:128, :128]
                blob = (yy - row) ** 2 + (xx - col) ** 2 <= 8**2
                image[blob] = 230 if label == 2 else 160
                found = (Lesion(float(row), float(col), 8.0, 8.0, label == 2),)
            images.append(image)
            items.append(AnnotatedImage(path=None, patient_id=f"p{p}", source="mini-mias", label=label))
            lesions.append(found)
    return PreparedPool(PreprocessSpec(height=128, width=128), np.stack(images), items, lesions)


def synthetic_config(epochs: int = 5):
    from convert.data.lesion_data import PatchConfig
    from convert.training.train_lesion import TrainConfig

    patch = PatchConfig(size=48, per_lesion_mias=24, normal_per_mias_normal=16, normal_per_mias_lesion=6, margin_px=8.0)
    return TrainConfig(height=128, width=128, fcn_width=8, epochs=epochs, batch_size=16, learning_rate=3e-3, patch=patch, mine_from=3,
                       validation_fraction=0.25, folds=3)


def test_training_learns_synthetic_lesions():
    """A few epochs on synthetic breasts: images with a bright blob must outscore images without one."""
    from convert.training.train_lesion import auc, image_scores, rest_logodds, train_and_calibrate

    pool, cfg = synthetic_lesion_pool(), synthetic_config()
    items = pool.items
    run = train_and_calibrate(pool, np.arange(len(items)), cfg, log=lambda message: None)
    everything = np.arange(len(items))
    scores = rest_logodds(image_scores(run["fcn"], pool, everything, cfg.smooth))
    labels = np.array([item.label for item in items])
    assert auc(scores, labels == 2) > 0.8
    assert 0.0 <= run["threshold"] <= 1.0 and run["history"][-1]["mined"] > 0


def test_a_cv_fold_writes_its_predictions_and_log_and_resumes(tmp_path):
    from convert.training.train_lesion import collect_cv, cv_fold, fold_split, patient_folds, run_log

    pool, cfg = synthetic_lesion_pool(), synthetic_config(epochs=1)
    folds = patient_folds(pool, cfg.folds, cfg.seed)
    with run_log(tmp_path) as log:
        cv_fold(cfg, pool, folds, 2, tmp_path, log)
        cv_fold(cfg, pool, folds, 2, tmp_path, log)
    saved = np.load(tmp_path / "fold2.npz")
    assert saved["test_idx"].tolist() == fold_split(pool, cfg, 2)[2].tolist()
    assert saved["probs"].shape == (saved["test_idx"].size, 3)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert lines[0].startswith("fold 2: train+val") and lines[-1].startswith("fold 2: done already")
    assert any(line.startswith('{"fold": 2, "best_epoch": 1') for line in lines)
    assert collect_cv(pool, tmp_path, cfg)["folds_done"] == 1
