"""The card schema (edge_birads.card.SECTIONS), its one writer, and where a card's figures come from."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest

from edge_birads.card import (
    CARD_SCHEMA_VERSION,
    NOT_CROSS_VALIDATED,
    SECTIONS,
    card_path_for,
    load_card,
    new_card,
    validate_card,
    write_card,
)
from edge_birads.card_summary import summarize
from edge_birads.classifier import default_model_path
from edge_birads.errors import ModelError

BUNDLED = default_model_path()


def bundled_card() -> dict:
    return json.loads(card_path_for(BUNDLED).read_text(encoding="utf-8"))


def test_the_bundled_card_is_complete_and_the_runtime_loads_it():
    data = bundled_card()
    assert data["schema_version"] == CARD_SCHEMA_VERSION
    assert validate_card(data, "default.json") == load_card(BUNDLED)  # the runtime's loader, sha256 check included


@pytest.mark.parametrize("section", SECTIONS, ids=lambda section: section.path)
def test_a_card_missing_a_section_is_refused_with_one_line_naming_it(section):
    data = bundled_card()
    *parents, last = section.path.split(".")
    del functools.reduce(dict.__getitem__, parents, data)[last]
    with pytest.raises(ModelError) as caught:
        validate_card(data, "card.json")
    assert str(caught.value) == f"card.json: missing section '{section.path}' ({section.what})"


def test_a_section_without_a_key_it_needs_is_refused():
    data = bundled_card()
    del data["training"]["split"]["method"]
    with pytest.raises(ModelError, match=r"^card.json: section 'training.split' lacks 'method' \(how patients were split"):
        validate_card(data, "card.json")


def sections_of(data: dict) -> dict:
    """The bundled card's sections as a recipe hands them to the writer (what the writer derives left out)."""
    return dict(
        name="copy",
        description=data["description"],
        labels=data["labels"],
        malignant_label=data["malignant_label"],
        preprocessing=data["preprocessing"],
        referral={k: v for k, v in data["referral"].items() if k != "decision_rule"},
        training=data["training"],
        metrics={k: v for k, v in data["metrics"].items() if k != "recipe_cross_validation"},
        cross_validation=data["metrics"]["recipe_cross_validation"],
        initialisation=data["initialisation"],
        versions=data["versions"],
        parity=data["parity"],
        conversion=data["conversion"],
        keras_config=data["keras_config"],
    )


def test_the_writer_reads_the_model_itself_and_what_it_writes_round_trips(tmp_path):
    model = tmp_path / "copy.tflite"
    shutil.copyfile(BUNDLED, model)
    data = bundled_card()
    card = new_card(model, **sections_of(data))
    for derived in ("input", "output", "sha256", "size_bytes", "intended_use"):  # read off the model, not typed
        assert card[derived] == data[derived], derived
    assert card["referral"]["decision_rule"] == data["referral"]["decision_rule"]
    assert {**card, "name": data["name"]} == data  # the writer rebuilds the bundled card
    path = write_card(card, model)
    assert path == tmp_path / "copy.json"
    assert json.loads(path.read_text(encoding="utf-8")) == card
    assert load_card(model).referral_threshold == data["referral"]["threshold"]


def test_the_writer_refuses_an_incomplete_card_and_writes_nothing(tmp_path):
    model = tmp_path / "copy.tflite"
    shutil.copyfile(BUNDLED, model)
    with pytest.raises(ModelError, match=r"missing section 'initialisation' \(where the starting weights came from\)$"):
        new_card(model, **{**sections_of(bundled_card()), "initialisation": {}})
    card = new_card(model, **sections_of(bundled_card()))
    del card["versions"]
    with pytest.raises(ModelError, match=r"missing section 'versions'"):
        write_card(card, model)
    assert not card_path_for(model).exists()


def test_a_recipe_without_cross_validation_says_so_and_info_shows_it(tmp_path):
    model = tmp_path / "copy.tflite"
    shutil.copyfile(BUNDLED, model)
    card = new_card(model, **{**sections_of(bundled_card()), "cross_validation": None})
    assert card["metrics"]["recipe_cross_validation"] == NOT_CROSS_VALIDATED
    write_card(card, model)
    assert "\nCross-validation: not run; the test figures come from one patient-level split only.\n" in summarize(load_card(model))


def synthetic_run_data(n: int = 30):
    """30 noise images of 30 patients at the bundled model's input size, labels in turn, split 10/10/10."""
    from convert.data.sources import GROUP_LABELS, Record
    from convert.data.split import Split
    from convert.training.train import RunData
    from edge_birads.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)
    images = (rng.random((n, 224, 224, 1)) * rng.random((n, 1, 1, 1))).astype(np.float32)
    records = [Record(f"{i}.png", f"p{i}", GROUP_LABELS[i % 3], "synthetic") for i in range(n)]
    third = n // 3
    split = Split(tuple(range(third)), tuple(range(third, 2 * third)), tuple(range(2 * third, n)), 0)
    return RunData(records, images, GROUP_LABELS, split, PreprocessSpec())


def test_the_cards_metrics_are_computed_by_the_runtimes_own_int8_code(monkeypatch):
    """convert's evaluation runs the bundled model through edge_birads.interpreter, the code Classifier.predict runs:
    the same function objects, the same numbers, and a change to that code changes the card's metrics."""
    pytest.importorskip("tensorflow", reason="convert.evaluation.evaluate needs the [train] extra")
    from convert.evaluation import evaluate, export
    from edge_birads import classifier, interpreter

    assert classifier.run_image is interpreter.run_image
    assert export.batch_probabilities is interpreter.batch_probabilities
    data = synthetic_run_data()
    runtime = classifier.Classifier()
    x_test = data.part("test")[0]
    batch = export.TfliteModel(BUNDLED).predict(x_test)
    assert np.array_equal(batch, np.stack([interpreter.renormalise(runtime.predict(x)) for x in x_test]))

    before = evaluate.evaluate_model(BUNDLED, data)
    calls = []

    def reversed_probabilities(interp, image, tensors, with_map=True):
        calls.append(image.shape)
        probabilities, lesion_map = run_image(interp, image, tensors, with_map)
        return probabilities[::-1].copy(), lesion_map

    run_image = interpreter.run_image
    monkeypatch.setattr(interpreter, "run_image", reversed_probabilities)
    after = evaluate.evaluate_model(BUNDLED, data)
    assert len(calls) == len(data.split.val) + len(data.split.test)  # every image the metrics use went through it
    assert after["test"] != before["test"]


def test_the_lesion_card_counts_its_images_and_patients_from_the_data(tmp_path):
    """lesion_export.build_card goes through the one writer and counts each source's images and patients."""
    pytest.importorskip("tensorflow", reason="convert needs the [train] extra")
    from pathlib import Path

    from convert.data.lesion_data import AnnotatedImage, PreparedPool
    from convert.evaluation.lesion_export import build_card, split_summary
    from edge_birads.preprocess import PreprocessSpec

    sources = ["mini-mias"] * 5 + ["cbis-ddsm-mass"] * 9
    items = [AnnotatedImage(Path(f"{i}.png"), f"p{i // 2}", source, i % 3) for i, source in enumerate(sources)]
    pool = PreparedPool(PreprocessSpec(224, 224), np.zeros((len(items), 4, 4), np.uint8), items, [() for _ in items])
    model = tmp_path / "lesion.tflite"
    shutil.copyfile(BUNDLED, model)
    parts = {"train": np.arange(8), "val": np.arange(8, 11), "test": np.arange(11, 14)}
    card = build_card(
        model, name="lesion", pool=pool, config={"seed": 0, "folds": 5},
        split={"method": "test split", **{part: split_summary(pool, idx) for part, idx in parts.items()}},
        referral={"threshold": 0.2, "method": "test"}, test_metrics={"pooled": {"n_images": 3}},
        cv_metrics=None, parity_result={"n_images": 3}, architecture="test", command="test", best_epoch=1,
    )
    data = card["training"]["data"]
    assert (data["images"], data["patients"]) == (14, 8)  # patient ids are per source: p2 of MIAS is not p2 of CBIS
    assert data["sources"] == {"cbis-ddsm-mass": {"images": 9, "patients": 5}, "mini-mias": {"images": 5, "patients": 3}}
    assert card["metrics"]["recipe_cross_validation"] == NOT_CROSS_VALIDATED
    assert load_card(model, write_card(card, model)).referral_threshold == 0.2


def test_the_runtime_refuses_a_card_that_declares_the_schema_but_lacks_a_section(tmp_path):
    from click.testing import CliRunner

    from edge_birads.cli import cli

    model = tmp_path / "copy.tflite"
    shutil.copyfile(BUNDLED, model)
    data = bundled_card()
    del data["training"]["split"]
    card_path_for(model).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelError, match=r"copy.json: missing section 'training.split' \(how patients were split"):
        load_card(model)
    image = BUNDLED.parent.parent.parent / "examples" / "cbis-P00173-left-cc-benign.png"
    result = CliRunner().invoke(cli, ["classify", "--model", str(model), str(image)])
    assert result.exit_code != 0 and "missing section 'training.split'" in result.output
    card_path_for(model).write_text(json.dumps({**data, "schema_version": 1}), encoding="utf-8")
    assert load_card(model).sha256 == data["sha256"]  # a card of the older layout still loads
