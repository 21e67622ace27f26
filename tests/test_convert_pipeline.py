"""End to end on a tiny configuration: train -> int8 + float32 TFLite -> parity -> card.

Uses the shared pools when present (a small patient subset at 64x64), else
generated synthetic images; a second build always uses synthetic images so
the fallback CI depends on is exercised too. About 30 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra (tensorflow) is not installed")

from convert import cli, export  # noqa: E402
from convert import data as D  # noqa: E402
from edge_birads.card import decision_rule, load_card  # noqa: E402
from edge_birads.errors import ModelError  # noqa: E402
from edge_birads.preprocess import PreprocessSpec  # noqa: E402

# Every top-level field of the card layout the runtime and README rely on (card_example.json).
CARD_FIELDS = {
    "schema_version", "name", "description", "labels", "malignant_label", "input", "output", "preprocessing",
    "referral", "training", "metrics", "parity", "sha256", "versions", "intended_use",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    out = root / "models" / "tiny"
    code = cli.main(["build", "--config", "ci", "--out", str(out), "--work", str(root / "work")])
    return code, out.with_suffix(".tflite"), root / "work"


def test_build_writes_a_card_the_runtime_accepts(built) -> None:
    code, model_path, work = built
    assert code == 0
    card = load_card(model_path)  # the runtime's parser and sha256 check
    assert card.labels == ("BI-RADS 1", "BI-RADS 2-3", "BI-RADS 4-5")
    assert card.malignant_label == "BI-RADS 4-5"
    assert card.preprocessing.height == card.preprocessing.width == 64
    data = json.loads(model_path.with_suffix(".json").read_text())
    assert CARD_FIELDS <= set(data)
    assert data["input"]["dtype"] == "int8" and data["output"]["dtype"] == "int8"
    assert data["input"]["shape"] == [1, 64, 64, 1] and data["output"]["shape"] == [1, 3]
    assert 0.0 <= data["referral"]["threshold"] <= 1.0
    assert data["referral"]["validation_sensitivity"] >= 0.9
    assert data["referral"]["decision_rule"] == decision_rule("BI-RADS 4-5", card.referral_threshold)
    pooled = data["metrics"]["test"]["pooled"]
    assert set(pooled["per_class"]) == set(card.labels)
    assert pooled["n_images"] == data["training"]["split"]["test"]["images"] > 0
    assert sum(m["support"] for m in pooled["per_class"].values()) == pooled["n_images"]
    for source in data["training"]["split"]["test"]["per_source"]:
        assert source in data["metrics"]["test"]
    assert data["intended_use"].startswith("Research use only")
    assert data["parity"]["n_images"] == data["training"]["split"]["val"]["images"] + pooled["n_images"]
    for name in ("model.keras", "history.json", "split.json", "config.json", "report.md"):
        assert (work / name).is_file(), name
    history = json.loads((work / "history.json").read_text())
    assert len(history["epochs"]) == 2 and "val_malignant_auc" in history["epochs"][0]


def test_split_in_the_run_keeps_patients_on_one_side(built) -> None:
    _, _, work = built
    images = json.loads((work / "split.json").read_text())["images"]
    part_of: dict[str, set] = {}
    for image in images:
        part_of.setdefault(image["patient_id"], set()).add(image["part"])
    assert all(len(parts) == 1 for parts in part_of.values())


def test_int8_graph_is_static_and_loadable_by_tflite_runtime_2_14(built) -> None:
    _, model_path, work = built
    versions = export.op_versions(model_path.read_bytes())
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(versions)
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(versions)  # batch fixed to 1 at export
    assert export.tflite_214_problems(versions) == []
    float_path = work / "tiny_float32.tflite"
    assert export.tflite_214_problems(export.op_versions(float_path.read_bytes())) == []


def test_int8_and_float32_tflite_follow_the_keras_model(built) -> None:
    _, model_path, work = built
    from convert.models import load_model
    from convert.train import load_run_data

    model = load_model(str(work / "model.keras"))
    data = load_run_data(work)
    x, _, _ = data.part("test")
    reference = export.keras_predict(model, x)
    float_probs = export.TfliteModel(work / "tiny_float32.tflite").predict(x)
    assert np.abs(float_probs - reference).max() < 1e-4
    int8 = export.TfliteModel(model_path)
    assert int8.input_spec.dtype == "int8" and int8.output_spec.dtype == "int8"
    result = export.parity(reference, int8.predict(x))
    assert result.max_abs_prob_diff < 0.1 and result.decisive_agreement >= 0.95


def test_convert_command_fails_on_poor_parity_and_evaluate_rewrites_the_card(built, tmp_path: Path) -> None:
    _, _, work = built
    strict = tmp_path / "strict.tflite"
    assert cli.main(["convert", "--run", str(work), "--out", str(strict), "--max-diff", "0"]) == 1
    good = tmp_path / "again.tflite"
    assert cli.main(["convert", "--run", str(work), "--out", str(good)]) == 0
    assert (work / "again_float32.tflite").is_file() and not (tmp_path / "again_float32.tflite").exists()
    assert cli.main(["evaluate", "--run", str(work), "--model", str(good), "--no-keras"]) == 0
    assert load_card(good).sha256 == export_sha(good)


def export_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_flipped_byte_is_refused(built, tmp_path: Path) -> None:
    _, model_path, _ = built
    copy = tmp_path / "copy.tflite"
    shutil.copy(model_path, copy)
    shutil.copy(model_path.with_suffix(".json"), copy.with_suffix(".json"))
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="sha256"):
        load_card(copy)


def test_synthetic_fallback_builds_an_honestly_labelled_model(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["build", "--config", "ci", "--data", "synthetic", "--epochs", "1", "--out", str(out), "--work", str(tmp_path / "w")]
    assert cli.main(args) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["data"]["synthetic"] is True
    assert "SYNTHETIC" in card["description"]
    assert set(card["metrics"]["test"]) == {"pooled", "synthetic"}


def test_report_on_a_paper_style_class_folder_tree(built, tmp_path: Path) -> None:
    from convert.data import make_synthetic

    _, model_path, _ = built
    tree = tmp_path / "tree"
    folders = {"BI-RADS 1": "1", "BI-RADS 2-3": "3", "BI-RADS 4-5": "5"}
    for record in make_synthetic(tmp_path / "gen", n_patients=6, size=64, seed=5):
        target = tree / folders[record.label] / Path(record.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.path, target)
    (tree / "5" / "corrupt.png").write_bytes(b"not an image")
    out = tmp_path / "report"
    assert cli.main(["report", "--model", str(model_path), "--data", f"paper:{tree}", "--out", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    assert result["pooled"]["n_images"] == 12  # the corrupt file is skipped, not fatal
    assert result["pooled"]["per_class"]["BI-RADS 4-5"]["support"] == 4
    for name in ("report.md", "confusion_matrix.png", "roc.png"):
        assert (out / name).stat().st_size > 0


def test_report_on_the_run_test_patients_plots_training_curves(built, tmp_path: Path) -> None:
    _, model_path, work = built
    data_spec = json.loads((work / "config.json").read_text())["data"]
    if data_spec == "auto":
        from convert.data import data_root

        data_spec = "mias,cbis" if (data_root() / "mini-mias" / "labels.csv").is_file() else "synthetic"
    if data_spec == "synthetic":
        pytest.skip("shared data absent: the run used synthetic images regenerated per call")
    out = tmp_path / "report"
    assert cli.main(["report", "--model", str(model_path), "--data", data_spec, "--run", str(work), "--out", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    card = json.loads(model_path.with_suffix(".json").read_text())
    assert result["pooled"]["n_images"] == card["metrics"]["test"]["pooled"]["n_images"]
    assert result["pooled"]["malignant_vs_rest"]["auc"] == pytest.approx(card["metrics"]["test"]["pooled"]["malignant_vs_rest"]["auc"])
    assert (out / "training_curves.png").stat().st_size > 0


@pytest.mark.skipif(
    not (D.data_root() / "mini-mias" / "labels.csv").is_file() or not (D.data_root() / "cbis-ddsm-mass" / "labels.csv").is_file(),
    reason=f"shared data not found under {D.data_root()} (set EDGE_BIRADS_DATA)",
)
def test_cross_validation_by_patient_on_the_ablation_folds(tmp_path: Path, capsys) -> None:
    """One fold of a tiny recipe on the real pools: the same women as the ablation's fold 0, int8-scored per source."""
    from convert.lesion_data import load_pool
    from convert.train_lesion import DEFAULT_CACHE, TrainConfig, fold_split

    args = ["cv", "--config", "ci", "--epochs", "1", "--folds", "5", "--only", "0", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("fold 0: train ") and "\n1 fold(s), int8 models" in printed
    assert "- mini-mias: " in printed and "- cbis-ddsm-mass: " in printed
    metrics = json.loads((tmp_path / "metrics_int8.json").read_text())
    assert metrics["folds_done"] == 1
    pool = load_pool(PreprocessSpec(height=64, width=64), DEFAULT_CACHE)
    saved = np.load(tmp_path / "fold0_int8.npz")
    assert saved["test_idx"].tolist() == fold_split(pool, TrainConfig(), 0)[2].tolist()
    assert metrics["pooled_out_of_fold"]["mini-mias"]["n_images"] == sum(pool.items[i].source == "mini-mias" for i in saved["test_idx"])

