"""Recipes behind one cross-validation runner, one registry of rows, one --set parser."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import pytest

from convert.data.split import FoldProtocol, fold_split
from convert.training.recipes import RECIPES, Fitted, KerasRecipe, Recipe, config_for, get_recipe, run_cv, with_settings
from convert.training.rows import ROWS, Row, rows_of

# ---------------------------------------------------------------- a toy recipe, registered here


@dataclass(frozen=True)
class ToyConfig:
    size: int = 16
    epochs: int = 8
    seed: int = 0
    threads: int = 1


class ToyRecipe(KerasRecipe):
    """A tiny Keras model (mean brightness -> 3 classes): the smallest thing that goes through the whole runner."""

    name = "toy"
    config_key = "toy_config"
    config_type = ToyConfig

    def __init__(self) -> None:
        self.fits: list[tuple[list[int], list[int]]] = []

    def spec(self, cfg):
        from edge_birads.preprocess import PreprocessSpec

        return PreprocessSpec(height=cfg.size, width=cfg.size)

    def build(self, cfg, seed):
        import keras

        inputs = keras.Input((cfg.size, cfg.size, 1))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed))(x * 8.0)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(0.1), loss="sparse_categorical_crossentropy")
        return model

    def fit(self, cfg, pool, train_idx, val_idx, seed, log, prefix):
        from convert.training.paper_cv import fold_images, fold_labels

        self.fits.append((train_idx.tolist(), val_idx.tolist()))
        model = self.build(cfg, seed)
        history = model.fit(fold_images(pool, train_idx), fold_labels(pool, train_idx), epochs=cfg.epochs, batch_size=16, verbose=0)
        return Fitted(model, {"loss": [float(v) for v in history.history["loss"]]})


def synthetic_pool(patients: int = 36, size: int = 16):
    """Two sources, two views per patient, malignant images brighter: test_paper_cv's pool."""
    from test_paper_cv import synthetic_pool as paper_pool

    return paper_pool(patients, size)


@pytest.fixture
def toy(monkeypatch):
    pytest.importorskip("tensorflow")
    recipe = ToyRecipe()
    monkeypatch.setitem(RECIPES, "toy", recipe)
    return recipe


def test_a_toy_recipe_runs_through_the_cross_validation_runner(toy, tmp_path):
    pool, protocol, cfg = synthetic_pool(), FoldProtocol(folds=3, validation_fraction=0.25), ToyConfig()
    assert isinstance(get_recipe("toy"), Recipe)
    metrics = run_cv("toy", cfg, tmp_path, protocol, pool=pool)

    # the folds are the protocol's: the recipe was fitted on each fold's training patients, validation held apart
    splits = [fold_split(pool, protocol, fold) for fold in range(3)]
    assert toy.fits == [(train.tolist(), val.tolist()) for train, val, _ in splits]
    tested = []
    for fold, (train, val, test) in enumerate(splits):
        for suffix in ("", "_int8"):
            saved = np.load(tmp_path / f"fold{fold}{suffix}.npz")
            assert saved["test_idx"].tolist() == test.tolist() and saved["val_idx"].tolist() == val.tolist()
            assert saved["probs"].shape == (test.size, 3)
        tested += test.tolist()
        # int8 scoring: the saved int8 outputs are what the fold's int8 TFLite gives, image by image
        from convert.evaluation.export import TfliteModel
        from convert.training.paper_cv import fold_images

        flatbuffer = (tmp_path / f"fold{fold}_int8.tflite").read_bytes()
        assert flatbuffer[4:8] == b"TFL3"
        runner = TfliteModel(flatbuffer)
        assert runner.input_spec.dtype == "int8"
        int8 = np.load(tmp_path / f"fold{fold}_int8.npz")
        np.testing.assert_allclose(int8["probs"], runner.predict(fold_images(pool, test)), atol=1e-9)
        assert np.abs(int8["probs"] - np.load(tmp_path / f"fold{fold}.npz")["probs"]).max() < 0.15
        history = json.loads((tmp_path / f"fold{fold}_history.json").read_text())
        assert len(history["loss"]) == cfg.epochs and history["training_seconds"] >= 0
    assert sorted(tested) == list(range(len(pool.items)))  # every image scored once, by the fold that never saw its patient

    # metrics files: int8 (returned), float, parity; the toy learnt the brightness signal
    text = lambda result: json.dumps(result, indent=1)  # noqa: E731  (as collect_cv writes them; NaN figures compare as text)
    assert text(metrics) == (tmp_path / "metrics_int8.json").read_text()
    assert metrics["folds_done"] == 3 and set(metrics["pooled_out_of_fold"]) == {"mini-mias", "cbis-ddsm-mass"}
    assert metrics["pooled_out_of_fold"]["cbis-ddsm-mass"]["auc_malignant_vs_rest"] > 0.75  # chance: 0.5
    assert json.loads((tmp_path / "metrics.json").read_text())["folds_done"] == 3
    assert sorted(json.loads((tmp_path / "parity_int8.json").read_text())) == ["0", "1", "2"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"recipe": "toy", "toy_config": asdict(cfg), "folds": asdict(protocol)}

    # the saved metrics re-derive from the saved predictions
    from convert.training.train_lesion import collect_cv

    saved = {name: (tmp_path / name).read_text() for name in ("metrics.json", "metrics_int8.json")}
    for name in saved:
        (tmp_path / name).unlink()
    assert text(collect_cv(pool, tmp_path, protocol, suffix="_int8")) == text(metrics)
    collect_cv(pool, tmp_path, protocol)
    assert {name: (tmp_path / name).read_text() for name in saved} == saved

    # resumable: a second run trains nothing and says so
    assert text(run_cv("toy", cfg, tmp_path, protocol, pool=pool)) == text(metrics)
    assert len(toy.fits) == 3
    assert (tmp_path / "log.jsonl").read_text().count("done already") == 3


def test_only_the_folds_asked_for_run(toy, tmp_path):
    pool, protocol = synthetic_pool(), FoldProtocol(folds=3, validation_fraction=0.25)
    metrics = run_cv("toy", ToyConfig(epochs=1), tmp_path, protocol, only_folds=[1], pool=pool)
    assert metrics["folds_done"] == 1 and sorted(p.name for p in tmp_path.glob("fold*_int8.npz")) == ["fold1_int8.npz"]


# ---------------------------------------------------------------- the registry


def test_every_row_names_a_registered_recipe_and_its_configuration_builds():
    for name, row in ROWS.items():
        if row.members:
            assert all(member in ROWS and not ROWS[member].members for member in row.members), name
            continue
        recipe = get_recipe(row.recipe)
        cfg = config_for(name)
        assert isinstance(cfg, recipe.config_type), name
        for key, value in row.overrides.items():
            assert getattr(cfg, key) == value, (name, key)
        assert recipe.spec(cfg).height > 0
    assert set(RECIPES) >= {"paper-cnn", "lesion-fcn", "pretrained"}


def test_rows_of_the_ablation_table_in_its_order():
    assert list(rows_of("ablation")) == [
        "paper-focal", "paper-ce", "paper-weighted", "paper-oversample", "paper-aug", "paper-gap",
        "fcn-512x512-balanced", "fcn-512x256-normal3-mined", "fcn-512x256-normal3-mined-w32", "ensemble-paper-focal+fcn",
    ]
    # a preset and its ablation row are one configuration (the bundled card's recipe "paper" is the row paper-focal)
    assert config_for("paper") == config_for("paper-focal") and config_for("gap") == config_for("paper-gap")
    from convert.training.pretrained import ROWS as PRETRAINED_ROWS

    assert list(rows_of("pretrained")) == list(PRETRAINED_ROWS)


def test_paper_presets_are_the_old_configs():
    """The hold-out presets (python -m convert build --config NAME) as convert.training.train.CONFIGS had them."""
    from convert.training.train import TrainConfig, get_config

    old = {
        "paper": TrainConfig(name="paper"),
        "paper-ce": TrainConfig(name="paper-ce", loss="crossentropy"),
        "paper-aug": TrainConfig(name="paper-aug", rotation_degrees=20.0, clahe_clip_limit=2.0),
        "paper-weighted": TrainConfig(name="paper-weighted", class_weights=True),
        "paper-oversample": TrainConfig(name="paper-oversample", oversample=True, rotation_degrees=20.0),
        "gap": TrainConfig(name="gap", head="gap", class_weights=True, rotation_degrees=20.0, crop_to_breast=True),
        "ci": TrainConfig(name="ci", image_size=64, epochs=2, subset=160, batch_size=16),
    }
    assert {name: get_config(name) for name in old} == old
    with pytest.raises(ValueError, match="unknown config 'mnv2-512'"):
        get_config("mnv2-512")  # a row of another recipe


def test_settings_are_parsed_as_the_field_types():
    from convert.training.train import TrainConfig
    from convert.training.train_lesion import TrainConfig as LesionConfig

    cfg = with_settings(LesionConfig(), ["height=256", "dropout=0.5", "class_balance=false", "clahe_clip_limit=2", "patch.size=48"])
    assert (cfg.height, cfg.dropout, cfg.class_balance, cfg.clahe_clip_limit, cfg.patch.size) == (256, 0.5, False, 2.0, 48)
    assert isinstance(cfg.height, int) and isinstance(cfg.clahe_clip_limit, float)
    assert with_settings(cfg, ["clahe_clip_limit=none"]).clahe_clip_limit is None
    paper = with_settings(TrainConfig(), ["subset=40", "loss=crossentropy", "crop_to_breast=1"])
    assert (paper.subset, paper.loss, paper.crop_to_breast) == (40, "crossentropy", True) and isinstance(paper.subset, int)
    for bad, message in (("nosuch=1", "unknown setting 'nosuch'"), ("epochs=many", "epochs=many: not a valid int"),
                         ("class_weights=maybe", "class_weights=maybe: not a valid bool"), ("epochs", "expected KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            with_settings(TrainConfig(), [bad])


def test_an_unknown_row_or_an_ensemble_has_no_configuration():
    with pytest.raises(ValueError, match="unknown configuration 'nope'"):
        config_for("nope")
    with pytest.raises(ValueError, match="combines other rows"):
        config_for("ensemble-paper-focal+fcn")
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_sources_come_from_the_pool(monkeypatch):
    """A third source is reported beside the others without naming it anywhere (pool_metrics, collect_cv, breasts)."""
    from convert.data.lesion_data import AnnotatedImage
    from convert.training.train_lesion import pool_metrics

    pool = synthetic_pool(12)
    extra = [AnnotatedImage(path=None, patient_id=f"q{p}", source="new-source", label=p % 3) for p in range(12)]
    pool.items.extend(extra)
    pool.images = np.concatenate([pool.images, np.zeros((12, 16, 16), np.uint8)])
    assert pool.sources == ("cbis-ddsm-mass", "mini-mias", "new-source")
    probs = np.tile([0.2, 0.3, 0.5], (len(pool.items), 1))
    metrics = pool_metrics(pool, np.arange(len(pool.items)), probs, probs[:, 2] >= 0.5)
    assert list(metrics) == ["cbis-ddsm-mass", "mini-mias", "new-source"] and metrics["new-source"]["n_images"] == 12


def test_a_new_row_is_one_registry_line(monkeypatch):
    monkeypatch.setitem(RECIPES, "toy", ToyRecipe())
    monkeypatch.setitem(ROWS, "toy-small", Row("toy", {"size": 8}, "a toy row"))
    assert config_for("toy-small", ["epochs=3"]) == ToyConfig(size=8, epochs=3)


def test_archived_rows_re_derive_through_the_ablation_collect(shared_data, tmp_path):
    """``python -m convert ablation collect`` on a copy of each archived row (docs/results) writes the archived metrics again."""
    from convert.experiments.lesion_ablation import collect
    from convert.training.pretrained import RESULTS

    rows = [p for p in sorted(RESULTS.iterdir()) if (p / "metrics_int8.json").exists()]
    assert rows and all(row.name in ROWS for row in rows)
    for row in rows:
        copy = tmp_path / row.name
        shutil.copytree(row, copy)
        for metrics in copy.glob("metrics*.json"):
            metrics.unlink()
        collect(row.name, copy)
        for name in ("metrics_int8.json", "metrics.json"):
            if (row / name).exists():
                assert json.loads((copy / name).read_text()) == json.loads((row / name).read_text()), (row.name, name)
        if (row / "parity_int8.json").exists():
            assert json.loads((copy / "parity_int8.json").read_text()) == json.loads((row / "parity_int8.json").read_text()), row.name


def test_the_lesion_fcn_recipe_gives_what_its_own_cross_validation_gave(tmp_path):
    """Same fold, seeds and data: the runner's FCN (whole-image Keras model) scores the test patients as ``cv_fold`` did."""
    pytest.importorskip("tensorflow")
    from test_lesion_model import synthetic_config, synthetic_lesion_pool

    from convert.training.train_lesion import cv_fold, patient_folds, run_log

    pool, cfg = synthetic_lesion_pool(), synthetic_config(epochs=1)
    protocol = FoldProtocol(folds=cfg.folds, seed=cfg.seed, validation_fraction=cfg.validation_fraction)
    run_cv("lesion-fcn", cfg, tmp_path / "runner", protocol, only_folds=[2], pool=pool)
    (tmp_path / "own").mkdir()
    with run_log(tmp_path / "own") as log:
        cv_fold(cfg, pool, patient_folds(pool, cfg.folds, cfg.seed), 2, tmp_path / "own", log)
    new, own = np.load(tmp_path / "runner" / "fold2.npz"), np.load(tmp_path / "own" / "fold2.npz")
    assert new["test_idx"].tolist() == own["test_idx"].tolist()
    np.testing.assert_allclose(new["probs"], own["probs"], atol=1e-4)
    assert float(new["threshold"]) == pytest.approx(float(own["threshold"]), abs=1e-4)
    history = json.loads((tmp_path / "runner" / "fold2_history.json").read_text())
    assert history["best_epoch"] == int(own["best_epoch"]) and len(history["history"]) == 1
    assert (tmp_path / "runner" / "fold2.weights.h5").exists() and (tmp_path / "runner" / "fold2_int8.tflite").read_bytes()[4:8] == b"TFL3"


def test_a_data_source_is_one_loader_and_the_pool_cache_follows_the_loaders(tmp_path, monkeypatch):
    """A second loader adds its images to the pool (and its name to the per-source figures); a cache of the old pool is not reused."""
    import cv2

    from convert.data import lesion_data
    from convert.data.lesion_data import AnnotatedImage, load_pool
    from edge_birads.preprocess import PreprocessSpec

    items = []
    for k, source in enumerate(("first", "first", "second")):
        path = tmp_path / f"{k}.png"
        cv2.imwrite(str(path), np.full((64, 48), 40 * (k + 1), np.uint8))
        items.append(AnnotatedImage(path=path, patient_id=f"p{k}", source=source, label=k % 3))
    spec, cache = PreprocessSpec(height=32, width=32), tmp_path / "cache"
    monkeypatch.setattr(lesion_data, "LOADERS", (lambda root: items[:2],))
    assert len(load_pool(spec, cache).items) == 2
    monkeypatch.setattr(lesion_data, "LOADERS", (lambda root: items[:2], lambda root: items[2:]))
    pool = load_pool(spec, cache)
    assert pool.sources == ("first", "second") and pool.images.shape == (3, 32, 32)
    assert pool.images[2].mean() == pytest.approx(120, abs=1)  # the new source's own pixels, not a stale cache's
    assert load_pool(spec, cache).images.tolist() == pool.images.tolist()  # and cached again
