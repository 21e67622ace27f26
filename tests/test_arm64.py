"""The comparison behind the arm64 check (deploy/raspberrypi/compare_outputs.py).

The check itself (debootstrap roots, qemu) runs from .ci/run, not here; these
tests make sure its verdict means something: identical outputs pass, any
difference in what the model said fails with a diff naming file and field, and
only latency and the inputs' directory are allowed to differ.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edge_birads.output import jsonl_line
from edge_birads.results import RESULT_FIELDS, Prediction, Result, Rule

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "raspberrypi" / "compare_outputs.py"
SHA = "d5a1cd9cc4d5c8fb32b099b3bfb8bfd207cd1d6ad2afaeac7bdbfc4a7e46eed3"


@pytest.fixture(scope="module")
def compare_outputs():
    spec = importlib.util.spec_from_file_location("compare_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_output(prefix: str, latency: float, malignant: float = 0.25) -> str:
    """What `classify --format jsonl` prints for two images and one bad file, read from ``prefix``."""
    rest = round((1.0 - malignant) / 2, 6)
    probabilities = {"BI-RADS 1": rest, "BI-RADS 2-3": rest, "BI-RADS 4-5": malignant}
    rule = Rule("default", SHA, 0.33)
    results = [
        Result(f"{prefix}/examples/a.png", rule, latency, Prediction(malignant >= 0.33, "BI-RADS 1", malignant, probabilities)),
        Result(f"{prefix}/dicom/b.dcm", rule, latency * 2, Prediction(True, "BI-RADS 4-5", 0.7, {"BI-RADS 1": 0.1, "BI-RADS 2-3": 0.2, "BI-RADS 4-5": 0.7})),
        Result(f"{prefix}/not-an-image.png", rule, None, error="cannot decode image (not a PNG/JPEG/TIFF/PGM/BMP file)"),
    ]
    return "".join(jsonl_line(result) + "\n" for result in results)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_result_field_but_file_and_latency_is_compared(compare_outputs):
    assert set(compare_outputs.COMPARED_FIELDS) == set(RESULT_FIELDS) - {"file", "latency_ms"}


def test_identical_outputs_pass_despite_latency_and_directory(compare_outputs, tmp_path, capsys):
    x86 = write(tmp_path, "x86.jsonl", run_output("work/inputs", latency=3.1))
    arm = write(tmp_path, "arm.jsonl", run_output("/opt/edge-birads/inputs", latency=950.0))
    code = compare_outputs.main([str(x86), str(arm), "--expected-prefix", "work/inputs", "--actual-prefix", "/opt/edge-birads/inputs/"])
    assert code == 0
    assert capsys.readouterr().out.startswith("identical: expected vs actual, 3 records (1 with the same error)")


def test_one_probability_differing_fails_with_a_readable_diff(compare_outputs, tmp_path, capsys):
    x86 = write(tmp_path, "x86.jsonl", run_output("in", latency=3.0, malignant=0.25))
    arm = write(tmp_path, "arm.jsonl", run_output("/opt/in", latency=3.0, malignant=0.250001))
    code = compare_outputs.main([str(x86), str(arm), "--expected-prefix", "in", "--actual-prefix", "/opt/in", "--names", "x86_64,arm64"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines() == [
        "DIFFERENT: x86_64 vs arm64, 3 vs 3 records",
        "examples/a.png: suspicion_score",
        "    x86_64 0.25",
        "    arm64  0.250001",
        "examples/a.png: probabilities[BI-RADS 4-5]",
        "    x86_64 0.25",
        "    arm64  0.250001",
    ]


def test_differing_error_missing_file_and_unnormalised_paths_fail(compare_outputs, tmp_path, capsys):
    x86_lines = run_output("in", latency=1.0).splitlines()
    arm_lines = run_output("/opt/in", latency=1.0).splitlines()
    bad = json.loads(arm_lines[2])
    bad["error"] = "another reason"
    x86 = write(tmp_path, "x86.jsonl", "\n".join(x86_lines) + "\n")
    arm = write(tmp_path, "arm.jsonl", arm_lines[0] + "\n" + json.dumps(bad) + "\n")
    assert compare_outputs.main([str(x86), str(arm), "--expected-prefix", "in", "--actual-prefix", "/opt/in"]) == 1
    out = capsys.readouterr().out
    assert "dicom/b.dcm: only in expected" in out
    assert 'not-an-image.png: error\n    expected "cannot decode image' in out
    assert '    actual   "another reason"' in out
    # Without the prefixes no file matches: every record is reported as missing on one side.
    assert compare_outputs.main([str(x86), str(arm)]) == 1
    assert "in/examples/a.png: only in expected" in capsys.readouterr().out


def test_a_referral_flipped_to_a_number_is_a_difference(compare_outputs, tmp_path, capsys):
    x86_line = run_output("in", latency=1.0).splitlines()[0]
    record = json.loads(x86_line)
    record["referral"] = 0  # == False in Python, but not the same output
    x86 = write(tmp_path, "x86.jsonl", x86_line + "\n")
    arm = write(tmp_path, "arm.jsonl", json.dumps(record) + "\n")
    assert compare_outputs.main([str(x86), str(arm)]) == 1
    assert "referral\n    expected false\n    actual   0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, reason",
    [("{not json\n", "not JSON"), ('{"group": "x"}\n', "no 'file' field"), ('{"file": "a"}\n', "missing field(s) referral")],
)
def test_output_that_is_not_classify_jsonl_is_a_usage_error(compare_outputs, tmp_path, capsys, text, reason):
    good = write(tmp_path, "good.jsonl", run_output("in", latency=1.0))
    broken = write(tmp_path, "broken.jsonl", text)
    assert compare_outputs.main([str(good), str(broken)]) == 2
    assert reason in capsys.readouterr().err


def test_an_empty_reference_is_not_identical_to_anything(compare_outputs, tmp_path, capsys):
    empty = write(tmp_path, "empty.jsonl", "")
    assert compare_outputs.main([str(empty), str(empty)]) == 2
    assert "holds no records" in capsys.readouterr().err
