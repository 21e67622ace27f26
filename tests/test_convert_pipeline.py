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

from convert import cli  # noqa: E402
from convert.data import sources as D  # noqa: E402
from convert.evaluation import export  # noqa: E402
from edge_birads.card import decision_rule, load_card  # noqa: E402
from edge_birads.errors import ModelError  # noqa: E402
from edge_birads.preprocess import PreprocessSpec  # noqa: E402

# Top-level fields of the card layout the runtime and README rely on (edge_birads.card.SECTIONS; edge_birads/models/default.json is a complete card).
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
    from convert.training.train import TrainConfig, get_config

    config = json.loads((work / "config.json").read_text())
    assert TrainConfig.from_dict(config) == get_config("ci")  # every field of the recipe that ran
    assert config["command"] == f"python -m convert build --config ci --out {model_path.with_suffix('')} --work {work}"
    assert data["training"]["config"] == {key: value for key, value in config.items() if key != "command"}
    summary = (work / "report.md").read_text()
    assert f"Referral threshold {data['referral']['threshold']:.4f} (" in summary
    auc, (low, high) = pooled["malignant_vs_rest"]["auc"], pooled["malignant_vs_rest"]["auc_ci95"]
    assert f"## Test, pooled: {pooled['n_images']} images, accuracy {pooled['accuracy']:.3f}, malignant-vs-rest AUC {auc:.3f} (95% CI {low:.3f}-{high:.3f})" in summary


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
    from convert.models.paper_cnn import load_model
    from convert.training.train import load_run_data

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


def test_convert_refuses_low_top1_agreement_on_its_own(built, tmp_path: Path, caplog) -> None:
    """The agreement half of the gate, wired through the command: any difference allowed, agreement unreachable."""
    _, _, work = built
    out = tmp_path / "agree.tflite"
    args = ["convert", "--run", str(work), "--out", str(out), "--max-diff", "1", "--diff-quantile", "1", "--min-agreement", "1.01"]
    assert cli.main(args) == 1
    assert any(r.getMessage().startswith("poor int8 parity: top-1 agreement ") and "(need >= 1.01)" in r.getMessage() for r in caplog.records)


def test_referral_threshold_is_chosen_on_the_validation_patients_only(built) -> None:
    """The threshold follows the validation images and nothing else: changing only the test images leaves it."""
    from dataclasses import replace

    from convert.evaluation.evaluate import evaluate_model
    from convert.evaluation.metrics import threshold_for_sensitivity
    from convert.training.train import load_run_data

    _, model_path, work = built
    data = load_run_data(work)
    m = data.labels.index(data.malignant_labels()[0])
    x_val, y_val, _ = data.part("val")
    p_val = export.TfliteModel(model_path).predict(x_val)[:, m]
    base = evaluate_model(model_path, data, 0.9)
    assert base["referral"]["threshold"] == threshold_for_sensitivity(y_val == m, p_val, 0.9)

    def altered(part: str) -> np.ndarray:
        images = data.images.copy()
        idx = np.array(getattr(data.split, part))
        images[idx] = 1.0 - images[idx][:, :, ::-1]  # mirrored and inverted: the model's outputs move
        return images

    test_changed = evaluate_model(model_path, replace(data, images=altered("test")), 0.9)
    x_test, y_test, _ = data.part("test")
    moved = export.TfliteModel(model_path).predict(replace(data, images=altered("test")).part("test")[0])[:, m]
    assert np.abs(moved - export.TfliteModel(model_path).predict(x_test)[:, m]).max() > 0.01  # the test scores did change
    assert threshold_for_sensitivity(y_test == m, moved, 0.9) != base["referral"]["threshold"]  # a test-fitted one would move
    assert test_changed["referral"]["threshold"] == base["referral"]["threshold"]
    val_changed = evaluate_model(model_path, replace(data, images=altered("val")), 0.9)
    assert val_changed["referral"]["threshold"] != base["referral"]["threshold"]


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
    from convert.data.sources import make_synthetic

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
    card = load_card(model_path)
    pooled = result["pooled"]
    assert pooled["n_images"] == 12  # the corrupt file is skipped, not fatal
    assert {label: m["support"] for label, m in pooled["per_class"].items()} == {label: 4 for label in card.labels}
    assert np.array(pooled["confusion_matrix"]).sum(axis=1).tolist() == [4, 4, 4]
    assert result["model_sha256"] == card.sha256 and pooled["referral"]["threshold"] == card.referral_threshold
    assert result["figures"] == ["confusion_matrix.png", "roc.png"]
    check_report_markdown((out / "report.md").read_text(), result, model_path, card)
    confusion = check_png(out / "confusion_matrix.png", width=540, height=480)
    assert (confusion[:, :, 0] < 120).mean() > 0.01  # blue cells (BGR: little red, much blue) are drawn
    roc = check_png(out / "roc.png", width=480, height=480)
    red = (roc[:, :, 2] > 200) & (roc[:, :, 1] < 60) & (roc[:, :, 0] < 60)
    assert red.sum() > 10  # the card threshold's operating point


def check_report_markdown(text: str, result: dict, model_path: Path, card) -> None:
    """report.md says what report.json holds: scope, the card's threshold, the disclaimer, every class's row."""
    from edge_birads import DISCLAIMER

    lines = text.splitlines()
    assert lines[0] == f"# Evaluation of {model_path.name}"
    assert lines[2].startswith(f"Scope: {result['scope']} ({result['data']['images']} images, ")
    assert lines[3].startswith(f"Referral threshold {card.referral_threshold:.4f} from the model card")
    assert DISCLAIMER in lines
    for key in ("pooled", *sorted(k for k, v in result.items() if isinstance(v, dict) and "per_class" in v and k != "pooled")):
        metrics = result[key]
        at = lines.index(f"## {key}: {metrics['n_images']} images")
        mvr = metrics["malignant_vs_rest"]
        low, high = mvr["auc_ci95"]
        assert lines[at + 2] == (
            f"Malignant vs rest: AUC {mvr['auc']:.3f} (95% CI {low:.3f}-{high:.3f}), "
            f"{mvr['positives']} positives / {mvr['negatives']} negatives."
        )
        sens, spec = metrics["referral"]["sensitivity"], metrics["referral"]["specificity"]
        assert lines[at + 3] == f"Referral at the card threshold: sensitivity {sens:.3f}, specificity {spec:.3f}."
        section = lines[at + 4 :]
        section = section[: next((i for i, line in enumerate(section) if line.startswith(("## ", "!["))), len(section))]
        rows = {line.split("|")[1].strip(): line for line in section if line.startswith("| ") and not line.startswith(("| class", "| ---"))}
        assert list(rows) == list(metrics["per_class"]), rows
        for label, m in metrics["per_class"].items():
            cells = [c.strip() for c in rows[label].split("|")[2:-1]]
            shown = ["-" if m[k] is None else f"{m[k]:.3f}" for k in ("precision", "recall", "sensitivity", "specificity", "f1")]
            assert cells == [*shown, str(m["support"])], (label, cells)
    for name in result["figures"]:
        assert f"![{name}]({name})" in lines


def check_png(path: Path, width: int, height: int) -> np.ndarray:
    """A real PNG of the figure's size (figsize x dpi), of a sane weight, with something drawn on it."""
    import cv2

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert 5_000 < len(data) < 500_000, (path, len(data))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (height, width, 3), (path, None if image is None else image.shape)
    assert (image < 128).mean() > 0.005 and (image > 250).mean() > 0.3  # dark ink on a mostly white page
    return image


def test_report_on_the_run_test_patients_plots_training_curves(built, tmp_path: Path) -> None:
    _, model_path, work = built
    data_spec = json.loads((work / "config.json").read_text())["data"]
    if data_spec == "auto":
        from convert.data.sources import data_root

        data_spec = "mias,cbis" if (data_root() / "mini-mias" / "labels.csv").is_file() else "synthetic"
    if data_spec == "synthetic":
        pytest.skip("shared data absent: the run used synthetic images regenerated per call")
    out = tmp_path / "report"
    assert cli.main(["report", "--model", str(model_path), "--data", data_spec, "--run", str(work), "--out", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    card = json.loads(model_path.with_suffix(".json").read_text())
    assert result["pooled"]["n_images"] == card["metrics"]["test"]["pooled"]["n_images"]
    assert result["pooled"]["malignant_vs_rest"]["auc"] == pytest.approx(card["metrics"]["test"]["pooled"]["malignant_vs_rest"]["auc"])
    assert result["figures"] == ["confusion_matrix.png", "roc.png", "training_curves.png"]
    curves = check_png(out / "training_curves.png", width=960, height=384)
    assert (curves[:, :, 0] > 150).sum() > 100  # matplotlib's blue train curve
    check_report_markdown((out / "report.md").read_text(), result, model_path, load_card(model_path))


@pytest.mark.skipif(
    not (D.data_root() / "mini-mias" / "labels.csv").is_file() or not (D.data_root() / "cbis-ddsm-mass" / "labels.csv").is_file(),
    reason=f"shared data not found under {D.data_root()} (set EDGE_BIRADS_DATA)",
)
def test_cross_validation_by_patient_on_the_ablation_folds(tmp_path: Path, capsys) -> None:
    """One fold of a tiny recipe on the real pools: the same women as the ablation's fold 0, int8-scored per source."""
    from convert.data.lesion_data import load_pool
    from convert.training.train_lesion import DEFAULT_CACHE, TrainConfig, fold_split

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

