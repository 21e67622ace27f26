"""The classify command as a user meets it: outputs, exact error lines, exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edge_birads.card import load_card
from edge_birads.classifier import default_model_path
from edge_birads.cli import cli
from edge_birads.results import RESULT_FIELDS

CARD = load_card(default_model_path())


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def check_record(record: dict) -> None:
    assert list(record) == list(RESULT_FIELDS)
    assert record["error"] is None
    assert set(record["probabilities"]) == set(CARD.labels)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert record["suspicion_score"] == record["probabilities"][CARD.malignant_label]
    assert record["referral"] == (record["suspicion_score"] >= CARD.referral_threshold)
    others = {label: p for label, p in record["probabilities"].items() if label != CARD.malignant_label}
    assert record["group"] == (CARD.malignant_label if record["referral"] else max(others, key=others.get))
    assert (record["referral_threshold"], record["model"], record["model_sha256"]) == (CARD.referral_threshold, "default", CARD.sha256)
    assert record["latency_ms"] > 0


def test_jsonl_on_the_example_pngs(example_pngs):
    result = run("classify", "--format", "jsonl", *map(str, example_pngs))
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["file"] for r in records] == [str(p) for p in example_pngs]
    for record in records:
        check_record(record)
    assert "not a diagnostic device" in result.stderr


def test_jsonl_on_the_real_cbis_dicoms(cbis_dicoms):
    result = run("classify", "--format", "jsonl", *map(str, cbis_dicoms))
    assert result.exit_code == 0, result.stderr
    records = jsonl(result.stdout)
    assert len(records) == 8
    for record in records:
        check_record(record)


def test_patient_identifiers_never_reach_the_output(cbis_dicoms):
    import pydicom

    patient_id = str(pydicom.dcmread(cbis_dicoms[0], stop_before_pixels=True).PatientID)
    for fmt in ("table", "jsonl", "csv"):
        result = run("classify", "--format", fmt, str(cbis_dicoms[0]))
        assert patient_id not in result.stdout + result.stderr


def test_folder_input_and_recursion(example_pngs, tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(example_pngs[0], tmp_path / "top.png")
    shutil.copy(example_pngs[1], nested / "deep.png")
    (tmp_path / "notes.txt").write_text("ignored: not an image name")
    (tmp_path / ".hidden.png").write_text("ignored: hidden")
    flat = jsonl(run("classify", "--format", "jsonl", str(tmp_path)).stdout)
    assert [r["file"] for r in flat] == [str(tmp_path / "top.png")]
    deep = jsonl(run("classify", "--format", "jsonl", "-r", str(tmp_path)).stdout)
    assert [r["file"] for r in deep] == [str(tmp_path / "top.png"), str(nested / "deep.png")]  # a folder's files before its sub-folders


def test_a_corrupt_file_gets_one_error_line_and_the_rest_still_print(example_pngs, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(example_pngs[0].read_bytes()[:500])
    result = run("classify", "--format", "jsonl", str(example_pngs[0]), str(bad), str(example_pngs[1]))
    assert result.exit_code == 1
    records = jsonl(result.stdout)
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["group"] is None and records[1]["probabilities"] is None and records[1]["referral"] is None
    assert (records[1]["referral_threshold"], records[1]["model_sha256"]) == (CARD.referral_threshold, CARD.sha256)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {bad}: truncated PNG (the file ends before its IEND chunk)"]
    assert "Traceback" not in result.output


def test_missing_file_exit_code_and_message(tmp_path):
    missing = tmp_path / "nope.png"
    result = run("classify", str(missing))
    assert result.exit_code == 1
    assert f"error: {missing}: no such file" in result.stderr.splitlines()


def test_empty_folder_is_an_error(tmp_path):
    result = run("classify", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == f"Error: no image files found in {tmp_path}\n"


SUMMARY = (
    f"suspicion score = P({CARD.malignant_label}); refer for review when >= {CARD.referral_threshold:.3f} "
    f"(model default, sha256 {CARD.sha256[:12]}...). Research use only, not a diagnostic device: a clinician decides."
)
HEADER = "DECISION          GROUP        SUSPICION SCORE  P(BI-RADS 1)  P(BI-RADS 2-3)  FILE"


def test_table_format(example_pngs, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("text")
    result = run("classify", str(example_pngs[0]), str(bad))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        HEADER,
        f"routine           BI-RADS 2-3            0.000         0.000           1.000  {example_pngs[0]}",
        f"ERROR             -                          -             -               -  {bad}: not a readable image (unknown format, or truncated or corrupt)",
        f"1 of 2 files classified; {SUMMARY}",
    ]


def test_a_referred_image_is_never_shown_in_a_lower_group(cbis_dicoms):
    """CBIS 1-133 is most likely BI-RADS 2-3 (0.891) but its suspicion score 0.109 is over the threshold 0.094."""
    (dicom,) = [path for path in cbis_dicoms if path.name == "1-133.dcm"]
    result = run("classify", str(dicom))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        HEADER,
        f"REFER for review  BI-RADS 4-5            0.109         0.000           0.891  {dicom}",
        f"1 of 1 files classified; {SUMMARY}",
    ]
    record = jsonl(run("classify", "--format", "jsonl", str(dicom)).stdout)[0]
    assert (record["referral"], record["group"], record["suspicion_score"]) == (True, "BI-RADS 4-5", 0.109375)


def test_a_routine_image_is_never_shown_as_suspicious(cbis_dicoms, tmp_path):
    """The same rule the other way: with a card threshold of 0.95, CBIS 1-281 (P(BI-RADS 4-5) 0.906) is routine, group 2-3."""
    model = tmp_path / "strict.tflite"
    shutil.copyfile(default_model_path(), model)
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    card["name"], card["referral"]["threshold"] = "strict", 0.95
    model.with_suffix(".json").write_text(json.dumps(card))
    (dicom,) = [path for path in cbis_dicoms if path.name == "1-281.dcm"]
    result = run("classify", "--model", str(model), str(dicom))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        f"routine           BI-RADS 2-3            0.906         0.000           0.094  {dicom}",
        f"1 of 1 files classified; suspicion score = P(BI-RADS 4-5); refer for review when >= 0.950 (model strict, sha256 {CARD.sha256[:12]}...). "
        "Research use only, not a diagnostic device: a clinician decides.",
    ]


def test_csv_has_one_column_per_group_and_the_jsonl_values(example_pngs, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("text")
    as_csv = run("classify", "--format", "csv", str(example_pngs[1]), str(bad))
    records = jsonl(run("classify", "--format", "jsonl", str(example_pngs[1]), str(bad)).stdout)
    assert as_csv.stdout.splitlines()[0] == (
        "file,referral,group,suspicion_score,P(BI-RADS 1),P(BI-RADS 2-3),P(BI-RADS 4-5),referral_threshold,model,model_sha256,latency_ms,error"
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    for row, record in zip(rows, records, strict=True):
        assert not any(cell.startswith("{") for cell in row.values()), "no JSON in a cell"
        expected = {key: value for key, value in record.items() if key not in ("probabilities", "latency_ms")}
        expected.update({f"P({label})": p for label, p in (record["probabilities"] or dict.fromkeys(CARD.labels, "")).items()})
        as_text = {key: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for key, v in expected.items()}
        assert {key: row[key] for key in as_text} == as_text
    assert rows[0]["referral"] == "true" and rows[0]["P(BI-RADS 4-5)"] == "0.667969"


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def csv_columns_to_jsonl_fields(columns: list[str], records: list[dict]) -> dict[str, tuple[str, str | None]]:
    """Which jsonl field each CSV column holds: a top-level field of the same name, or one entry of an
    object-valued field (probabilities) whose key the column names, however punctuated ("p_BI-RADS 4-5",
    "probabilities.BI-RADS 4-5", ...). Every jsonl field must land in exactly one column: nothing is lost."""
    objects: dict[str, set[str]] = {}
    for record in records:
        for field, value in record.items():
            if isinstance(value, dict):
                objects.setdefault(field, set()).update(value)
    mapping: dict[str, tuple[str, str | None]] = {}
    for column in columns:
        if column in records[0]:
            mapping[column] = (column, None)
            continue
        candidates = [(field, entry) for field, entries in objects.items() for entry in entries if _key(entry) in _key(column)]
        longest = max((len(_key(entry)) for _, entry in candidates), default=0)
        best = [(field, entry) for field, entry in candidates if len(_key(entry)) == longest]
        assert len(best) == 1, f"CSV column {column!r} matches no single jsonl field ({candidates})"
        mapping[column] = best[0]
    leaves = [(field, None) for field in records[0] if field not in objects or field in mapping]
    leaves += [(field, entry) for field, entries in objects.items() if field not in mapping for entry in entries]
    held = list(mapping.values())
    assert sorted(held, key=str) == sorted(leaves, key=str), f"jsonl fields and CSV columns differ: {leaves} vs {held}"
    return mapping


def cell_agrees(cell: str, value) -> bool:
    """A CSV cell against its jsonl value: null is empty, booleans true/false, numbers to 1e-6, objects as JSON."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        return cell != "" and float(cell) == pytest.approx(value, abs=1e-6)
    if isinstance(value, dict):
        return cell != "" and json.loads(cell) == pytest.approx(value, abs=1e-6)
    return cell == value


@pytest.fixture
def steady_clock(monkeypatch):
    """Every perf_counter() call advances 12.5 ms: two runs over the same files report the same latencies."""
    import time

    ticks = iter(range(10**9))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 0.0125)


def test_every_csv_cell_of_good_and_failed_rows_agrees_with_the_jsonl_record(example_pngs, tmp_path, steady_clock):
    corrupt = tmp_path / 'cut, "short".png'  # a name CSV must quote
    corrupt.write_bytes(example_pngs[0].read_bytes()[:500])
    paths = [str(example_pngs[0]), str(corrupt), str(tmp_path / "missing.png"), str(example_pngs[1])]
    as_csv = run("classify", "--format", "csv", *paths)
    as_jsonl = run("classify", "--format", "jsonl", *paths)
    assert as_csv.exit_code == as_jsonl.exit_code == 1
    records = jsonl(as_jsonl.stdout)
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    header, rows = rows[0], rows[1:]
    assert [r["file"] for r in records] == paths and len(rows) == len(records)
    assert [r["error"] is None for r in records] == [True, False, False, True]
    mapping = csv_columns_to_jsonl_fields(header, records)
    for row, record in zip(rows, records):
        assert len(row) == len(header), row
        for column, cell in zip(header, row):
            field, entry = mapping[column]
            value = record[field] if entry is None or record[field] is None else record[field][entry]
            assert cell_agrees(cell, value), f"{record['file']}: CSV {column}={cell!r}, jsonl {field}{'.' + entry if entry else ''}={value!r}"


def test_the_csv_comparison_notices_a_lost_reason_and_reads_flattened_probabilities():
    """The comparison above, on hand-made rows: the layout the triage-output issue brings is read too."""
    records = [
        {"file": "a.png", "label": "x", "probabilities": {"x": 0.75, "y": 0.25}, "error": None},
        {"file": "b.png", "label": None, "probabilities": None, "error": "truncated PNG"},
    ]
    flat = csv_columns_to_jsonl_fields(["file", "label", "p_x", "p_y", "error"], records)
    assert flat == {"file": ("file", None), "label": ("label", None), "p_x": ("probabilities", "x"), "p_y": ("probabilities", "y"), "error": ("error", None)}
    assert csv_columns_to_jsonl_fields(["file", "label", "probabilities", "error"], records)["probabilities"] == ("probabilities", None)
    with pytest.raises(AssertionError, match="jsonl fields and CSV columns differ"):
        csv_columns_to_jsonl_fields(["file", "label", "p_x", "p_y"], records)  # the error column dropped
    assert not cell_agrees("", "truncated PNG") and cell_agrees("", None) and cell_agrees("0.7500001", 0.75)


def test_usage_errors_exit_2():
    assert run("classify").exit_code == 2
    assert run("classify", "--format", "xml", "x.png").exit_code == 2
    assert run("no-such-command").exit_code == 2


def test_a_model_whose_bytes_do_not_match_its_card_is_refused(tmp_path, example_pngs):
    model = tmp_path / "model.tflite"
    data = bytearray(default_model_path().read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    shutil.copy(default_model_path().with_suffix(".json"), tmp_path / "model.json")
    result = run("classify", "--model", str(model), str(example_pngs[0]))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: model {model} has sha256 ")
    assert "refusing to load it" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_model_without_its_card_is_refused(tmp_path, example_pngs):
    model = tmp_path / "lonely.tflite"
    shutil.copy(default_model_path(), model)
    result = run("classify", "--model", str(model), str(example_pngs[0]))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: model card not found: {tmp_path / 'lonely.json'} (every model needs its card beside it)"


def test_every_command_has_help():
    for name, command in cli.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert command.get_short_help_str() and "Usage:" in result.output


def test_python_dash_m_works():
    completed = subprocess.run([sys.executable, "-m", "edge_birads", "--help"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0
    assert "not a diagnostic device" in completed.stdout
    assert "classify" in completed.stdout


def test_runtime_import_does_not_pull_in_tensorflow():
    code = "import sys, edge_birads.cli, edge_birads.classifier; print([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib')])"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"



def test_stderr_holds_only_the_summary_in_a_real_process(example_pngs):
    """No interpreter chatter (LiteRT's delegate notice) around the one summary line."""
    completed = subprocess.run(
        [sys.executable, "-m", "edge_birads", "classify", "--format", "jsonl", str(example_pngs[0])],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0
    assert completed.stderr.splitlines() == [f"1 of 1 files classified; {SUMMARY}"]


def test_the_bundled_card_states_the_decision_rule_the_runtime_applies():
    from edge_birads.card import decision_rule

    assert CARD.extra["referral"]["decision_rule"] == decision_rule(CARD.malignant_label, CARD.referral_threshold)
    info = run("info")
    assert f"- Decision, one per image: {decision_rule(CARD.malignant_label, CARD.referral_threshold)}." in info.stdout.splitlines()


def test_info_says_reproducing_needs_a_source_checkout():
    lines = run("info").stdout.splitlines()
    command = CARD.extra["metrics"]["recipe_cross_validation"]["command"]
    assert command.startswith("python -m convert")
    assert [line for line in lines if "python -m convert" in line] == [
        "Reproduce (from a source checkout with `pip install -e '.[train]'`: `convert/` is not part of the installed package): "
        f"`{command}`."
    ]
