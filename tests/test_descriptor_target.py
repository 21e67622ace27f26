"""The auxiliary descriptor target (mass margins and shapes) of the pretrained recipe: its targets, its masked loss,
and that it trains beside the classifier without reaching the fold's model or its int8 file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convert.data.lesion_data import MARGINS, SHAPES, AnnotatedImage, PreparedPool, annotated, descriptor_targets
from convert.data.sources import PATHOLOGY_TO_GROUP, SOURCE_CBIS, SOURCE_MIAS, Record
from convert.training.pretrained import PretrainedConfig
from edge_birads.preprocess import PreprocessSpec

SMALL = PretrainedConfig(height=64, width=64, batch_size=4, epochs=2, frozen_epochs=1, descriptor_weight=0.5)


def cbis(margins: str, shape: str) -> Record:
    return Record("images/1_LEFT_CC.jpg", "P_1", PATHOLOGY_TO_GROUP["malignant"], SOURCE_CBIS, extra={"mass_margins": margins, "mass_shape": shape})


def mias(abnormality: str) -> Record:
    return Record("mdb001.png", "1", PATHOLOGY_TO_GROUP["benign"], SOURCE_MIAS, extra={"abnormality": abnormality})


def test_targets_read_cbis_words_and_what_a_mias_class_says_and_mark_the_rest_unknown():
    items = [
        annotated(cbis("ILL_DEFINED-SPICULATED", "IRREGULAR-ARCHITECTURAL_DISTORTION")),
        annotated(cbis("NA", "LYMPH_NODE")),  # margins not annotated; a shape outside the five: all five absent
        annotated(mias("SPIC")),
        annotated(mias("NORM")),
        annotated(mias("CALC")),
        annotated(mias("ARCH")),
    ]
    targets = descriptor_targets(items)
    assert targets.shape == (6, len(MARGINS) + len(SHAPES)) == (6, 10)
    margins, shapes = targets[:, :5], targets[:, 5:]
    assert margins[0].tolist() == [0, 0, 0, 1, 1] and shapes[0].tolist() == [0, 0, 0, 1, 1]
    assert margins[1].tolist() == [-1] * 5 and shapes[1].tolist() == [0] * 5
    assert margins[2].tolist() == [0, 0, 0, 0, 1] and shapes[2].tolist() == [-1] * 5
    assert targets[3].tolist() == [0] * 10  # a normal image: no mass, so no margin and no shape
    assert targets[4].tolist() == [-1] * 10  # calcifications say nothing about mass descriptors
    assert margins[5].tolist() == [-1] * 5 and shapes[5].tolist() == [0, 0, 0, 0, 1]


def test_the_loss_ignores_unknown_targets_and_averages_the_known_ones():
    pytest.importorskip("tensorflow")
    from convert.training.pretrained import masked_binary_crossentropy

    predicted = np.array([[0.9, 0.2, 0.5], [0.9, 0.2, 0.5], [0.9, 0.2, 0.5]], np.float32)
    truth = np.array([[1, 0, -1], [-1, -1, -1], [1, 0, 1]], np.float32)
    loss = np.asarray(masked_binary_crossentropy(truth, predicted))
    expected_first = -(np.log(0.9) + np.log(0.8)) / 2
    assert loss[0] == pytest.approx(expected_first, rel=1e-4)
    assert loss[1] == 0.0
    assert loss[2] == pytest.approx((-(np.log(0.9) + np.log(0.8) + np.log(0.5))) / 3, rel=1e-4)


def described_pool(n: int = 24, size: int = 64, known: bool = True) -> PreparedPool:
    """Blobs as in the recipe's tests; malignant blobs are 'spiculated', the others 'circumscribed' (or unknown)."""
    rng = np.random.default_rng(0)
    images, items = np.zeros((n, size, size), np.uint8), []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = i % 3
        blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (4 + 6 * (label == 2)) ** 2
        images[i] = np.clip(rng.normal(60, 10, (size, size)) + 120 * blob * (label > 0), 0, 255).astype(np.uint8)
        margins = (("SPICULATED",) if label == 2 else ("CIRCUMSCRIBED",)) if known else None
        items.append(AnnotatedImage(Path(f"synthetic/{i}.png"), f"p{i // 2}", SOURCE_CBIS if i % 2 else SOURCE_MIAS, label,
                                    margins=margins, shapes=() if known else None))
    return PreparedPool(PreprocessSpec(size, size), images, items, [() for _ in range(n)])


@pytest.fixture(scope="module")
def tensorflow_seeded():
    pytest.importorskip("tensorflow")
    from convert.training.train_lesion import setup_tensorflow

    setup_tensorflow(0)


@pytest.mark.parametrize("known", [True, False])
def test_the_descriptor_head_learns_from_known_targets_only(tensorflow_seeded, known):
    from convert.training.pretrained import DESCRIPTORS, build_model, fit

    model = build_model(SMALL, pretrained=False)
    assert [tuple(o.shape) for o in model.outputs] == [(None, 3), (None, 10)]
    before = [w.copy() for w in model.get_layer(DESCRIPTORS).get_weights()]
    pool = described_pool(known=known)
    run = fit(model, pool, np.arange(18), np.arange(18, 24), replace(SMALL, epochs=2), log=lambda _: None)
    after = model.get_layer(DESCRIPTORS).get_weights()
    moved = any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert moved is known  # every target unknown: no gradient reaches the head, Adam leaves it exactly where it was
    losses = [h["descriptor_loss"] for h in run["history"]]
    assert (min(losses) > 0) is known


def test_the_runner_keeps_the_classifier_alone_in_the_fold_model_and_its_int8_file(tensorflow_seeded, tmp_path):
    from convert.data.split import FoldProtocol
    from convert.training.pretrained import fold_model
    from convert.training.recipes import run_cv
    from edge_birads.interpreter import make_interpreter

    cfg = replace(SMALL, epochs=1, frozen_epochs=1, int8_activations="dynamic")
    run_cv("pretrained", cfg, tmp_path, FoldProtocol(folds=3), only_folds=[0], pool=described_pool(n=60))
    interpreter, _ = make_interpreter(tmp_path / "fold0_int8.tflite")
    assert [tuple(d["shape"]) for d in interpreter.get_output_details()] == [(1, 3)]
    model = fold_model(cfg, tmp_path, 0)  # the saved weights hold both heads; the fold's model is the classifier
    assert len(model.outputs) == 1 and tuple(model.output.shape) == (None, 3)
    assert "descriptor_loss" in (tmp_path / "log.jsonl").read_text()
