"""Hostile and broken inputs (issue 8): one error line each, the rest classified, bounded memory, no hangs.

The corpus (tests/hostile_corpus.py) is generated here, then `edge-birads
classify` runs over it in a real subprocess, so what is checked is what a user
sees on the terminal: C libraries writing to stderr would show up here too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_birads.card import load_card
from edge_birads.classifier import default_model_path
from edge_birads.cli import cli
from edge_birads.deadline import can_enforce, time_limit
from edge_birads.decode import decode_bytes, read_file
from edge_birads.errors import InputError, InputTimeout, printable_name
from edge_birads.preprocess import PreprocessSpec, prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_corpus as corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Interpreter start-up chatter that is not about any file (LiteRT announces its XNNPACK delegate).
STARTUP_NOISE = re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate")
# The corpus run must stay far below what any bomb in it would need once decoded (400 MB to 3.6 GB).
PEAK_RSS_LIMIT_MB = 400


# Runs the CLI as `python -m edge_birads` would, and writes the process's own peak RSS (VmHWM, which a new
# program starts afresh at exec; ru_maxrss would include the memory of the pytest process that forked it).
CHILD = """
import atexit, sys
def report():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(report_to, 'w').write(line.split()[1])
report_to = sys.argv[1]
sys.argv = ['edge-birads'] + sys.argv[2:]
atexit.register(report)
from edge_birads.cli import main
main()
"""


def run_cli_subprocess(*args: str, timeout: float = 300) -> tuple[int, str, str, int | None]:
    """Run the CLI in a fresh process; return (exit code, stdout, stderr, peak RSS in MB or None).

    The locale is a strict UTF-8 one, so printing a name that is not valid
    UTF-8 would crash the child. The timeout turns a hang into a failure.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), LC_ALL="C.UTF-8", PYTHONUTF8="0")
    env.pop("PYTHONIOENCODING", None)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "vmhwm"
        done = subprocess.run([sys.executable, "-c", CHILD, str(report), *args], capture_output=True, env=env, timeout=timeout, check=False)
        peak = int(report.read_text()) // 1024 if report.exists() else None
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8"), peak


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    cases = corpus.build_corpus(folder)
    code, stdout, stderr, peak_mb = run_cli_subprocess("classify", "--format", "jsonl", str(folder))
    return {"folder": folder, "cases": [c for c in cases if not c.skip], "code": code, "stdout": stdout, "stderr": stderr, "peak_mb": peak_mb}


def test_the_run_finishes_with_exit_code_1_and_no_traceback(hostile):
    assert hostile["code"] == 1, hostile["stderr"]
    assert "Traceback" not in hostile["stderr"] + hostile["stdout"]


def test_every_bad_file_gets_exactly_one_error_line_with_its_reason(hostile):
    lines = hostile["stderr"].split("\n")
    problems = []
    for case in hostile["cases"]:
        name = printable_name(hostile["folder"] / case.name)
        mine = [line for line in lines if line.startswith(f"error: {name}: ")]
        if case.ok:
            if mine:
                problems.append(f"{case.name!r} is valid but got {mine}")
            continue
        if len(mine) != 1:
            problems.append(f"{case.name!r}: expected one error line, got {mine}")
        elif not re.search(case.reason, mine[0][len(f"error: {name}: ") :]):
            problems.append(f"{case.name!r}: reason {mine[0]!r} does not match {case.reason!r}")
    assert not problems, "\n".join(problems)


def test_stderr_holds_nothing_but_the_error_lines_and_the_summary(hostile):
    """Decoder libraries (libpng, libtiff, pydicom warnings) must not add lines of their own."""
    lines = hostile["stderr"].rstrip("\n").split("\n")
    bad = sum(not case.ok for case in hostile["cases"])
    errors = [line for line in lines if line.startswith("error: ")]
    others = [line for line in lines if not line.startswith("error: ") and not STARTUP_NOISE.match(line)]
    assert len(errors) == bad
    assert len(others) == 1 and others[0].startswith(f"{len(hostile['cases']) - bad} of {len(hostile['cases'])} files classified")


def test_valid_files_in_the_same_run_are_classified(hostile):
    records = {record["file"]: record for record in map(json.loads, hostile["stdout"].splitlines())}
    labels = load_card(default_model_path()).labels
    assert len(records) == len(hostile["cases"])  # one JSON line per file, newline in a name or not
    for case in hostile["cases"]:
        record = records[printable_name(hostile["folder"] / case.name)]
        if case.ok:
            assert record["error"] is None and record["group"] in labels, case.name
            assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        else:
            assert record["group"] is None and record["probabilities"] is None and re.search(case.reason, record["error"]), case.name


def test_memory_stays_bounded_across_the_bombs(hostile):
    if hostile["peak_mb"] is None:
        pytest.skip("no /proc/self/status (not Linux): peak RSS not measured")
    assert hostile["peak_mb"] < PEAK_RSS_LIMIT_MB, f"peak RSS {hostile['peak_mb']} MB"


def test_patient_identifiers_never_reach_any_output(hostile):
    dicoms = sorted(str(p) for p in hostile["folder"].glob("*dicom*")) + sorted(str(p) for p in hostile["folder"].glob("*.dcm"))
    seen = hostile["stdout"] + hostile["stderr"]
    for fmt in ("table", "csv"):
        result = CliRunner().invoke(cli, ["classify", "--format", fmt, *dicoms])
        seen += result.stdout + result.stderr
    for secret in (corpus.PATIENT_NAME, corpus.PATIENT_ID, corpus.PATIENT_BIRTH_DATE, "Hostilia", "Zqxwyv", "HOSTILE-"):
        assert secret not in seen


def test_table_output_keeps_one_line_per_file(hostile):
    result = CliRunner().invoke(cli, ["classify", str(hostile["folder"])])
    assert result.exit_code == 1
    lines = result.stdout.rstrip("\n").split("\n")
    assert len(lines) == 1 + len(hostile["cases"]) + 1  # header, one row per file, summary


def test_unreadable_file(tmp_path):
    if corpus.running_as_root():
        pytest.skip("running as root: chmod 000 does not stop root reading (see the simulated test below)")
    target = tmp_path / "locked.png"
    target.write_bytes(corpus.encode(".png", corpus.breast_image()))
    target.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        read_file(target)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    """Where chmod cannot stop us (root), the kernel's EACCES for one file is simulated at open()."""
    import builtins

    from edge_birads import decode

    locked, fine = tmp_path / "a-locked.png", tmp_path / "b-fine.png"
    for path in (locked, fine):
        path.write_bytes(corpus.encode(".png", corpus.breast_image()))

    def guarded_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(decode, "open", guarded_open, raising=False)
    # --jobs 1: the patch lives in this process (a folder's default is one worker process per core).
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "1", str(tmp_path)])
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {locked}: permission denied"]
    assert json.loads(result.stdout.splitlines()[1])["error"] is None


# --- Valid but awkward encodings decode to the same picture ----------------------------------------------------


def test_1bit_palette_rgba_and_gray_alpha_decode_to_the_gray_image():
    image = corpus.breast_image()
    np.testing.assert_array_equal(decode_bytes(corpus.palette_png(image)), image)
    np.testing.assert_array_equal(decode_bytes(corpus.encode(".png", np.dstack([image] * 3 + [np.full_like(image, 9)]))), image)
    gray_alpha = np.dstack([image, np.full_like(image, 255)]).reshape(image.shape[0], -1)
    np.testing.assert_array_equal(decode_bytes(corpus.png_bytes(image.shape[1], image.shape[0], 8, 4, gray_alpha)), image)
    # 1-bit must come out as 0/255, not 0/1 (which would be a black image to the model).
    np.testing.assert_array_equal(decode_bytes(corpus.one_bit_png(image)), np.where(image > 0, 255, 0))


def test_monochrome1_is_really_inverted():
    """Stored inverted with MONOCHROME1, the same breast must reach the model exactly as its MONOCHROME2 twin."""
    image = corpus.breast_image(depth=16)
    spec = PreprocessSpec()
    mono2 = decode_bytes(corpus.dicom_bytes(image))
    mono1 = decode_bytes(corpus.dicom_bytes(4095 - image, photometric="MONOCHROME1"))
    np.testing.assert_allclose(prepare(mono1, spec), prepare(mono2, spec), atol=1e-6)
    inside, outside = (160, 40), (160, 250)  # in the half-ellipse, in the black background
    assert mono1[inside] > mono1[outside] + 1000  # tissue is bright after inversion, as in MONOCHROME2


# --- Limits and the time limit -----------------------------------------------------------------------------------


def test_limits_are_set_by_options_and_environment(tmp_path):
    image = tmp_path / "ok.png"
    image.write_bytes(corpus.encode(".png", corpus.breast_image()))
    result = CliRunner().invoke(cli, ["classify", "--max-pixels", "1000", str(image)])
    assert result.exit_code == 1
    assert f"error: {image}: image is 256x320 pixels, over the limit of 1000 pixels" in result.stderr.splitlines()
    result = CliRunner(env={"EDGE_BIRADS_MAX_FILE_MB": "0.001"}).invoke(cli, ["classify", str(image)])
    assert result.exit_code == 1
    assert f"error: {image}: file is {image.stat().st_size / 1024:.1f} KiB ({image.stat().st_size} bytes), over the limit of 1.0 KiB (1048 bytes)" in result.stderr.splitlines()
    assert CliRunner().invoke(cli, ["classify", str(image)]).exit_code == 0


@pytest.mark.skipif(not can_enforce(), reason="the time limit needs SIGALRM in the main thread (POSIX)")
def test_a_busy_loop_is_stopped_by_the_time_limit():
    with pytest.raises(InputTimeout, match="per-file time limit of 0.05 s"):
        with time_limit(0.05):
            while True:
                pass


@pytest.mark.skipif(not can_enforce(), reason="the time limit needs SIGALRM in the main thread (POSIX)")
def test_a_swallowed_timeout_still_fails_the_file():
    """Library code with a broad except (pydicom trying decoder after decoder) cannot hide the timeout."""
    with pytest.raises(InputTimeout):
        with time_limit(0.05):
            try:
                while True:
                    pass
            except Exception:
                pass


@pytest.mark.skipif(not can_enforce(), reason="the time limit needs SIGALRM in the main thread (POSIX)")
def test_a_slow_file_fails_with_the_time_limit_and_the_next_one_is_classified(tmp_path):
    """The limit (0.1 s) sits far from both files: the slow one takes about 0.5 s (48 megapixels of 16-bit
    PNG to inflate and resize, a 100 KB file), the fine one about 1 ms. So the fine file must be classified:
    a timer left running from the slow file, or a limit applied to the whole run, fails it."""
    slow = tmp_path / "a-slow.png"
    slow.write_bytes(corpus.encode(".png", np.zeros((8000, 6000), np.uint16)))
    fine = tmp_path / "b-fine.png"
    fine.write_bytes(corpus.encode(".png", corpus.breast_image()))
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--time-limit", "0.1", str(slow), str(fine)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {slow}: took longer than the per-file time limit of 0.1 s"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[1]["file"] == str(fine) and records[1]["error"] is None
    assert records[1]["group"] in load_card(default_model_path()).labels


def test_printable_name_keeps_every_name_on_one_printable_line():
    assert printable_name("a\nb\rc\td\\e") == "a\\nb\\rc\\td\\\\e"
    assert printable_name(os.fsdecode(b"x\xff.png")) == "x\\xff.png"
    assert printable_name("esc\x1b[2J\u2028.png") == "esc\\x1b[2J\\u2028.png"
    assert printable_name("mamografía 乳房.png") == "mamografía 乳房.png"
    for name in ("a\nb", os.fsdecode(b"\xff"), "\x85\x0b\x0c\u2028\u2029"):
        printed = printable_name(name)
        assert len(printed.splitlines()) == 1
        printed.encode("utf-8")  # strict: no lone surrogates left


def test_recursion_does_not_follow_a_folder_symlink_loop(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "scan.png").write_bytes(corpus.encode(".png", corpus.breast_image()))
    os.symlink("..", tmp_path / "a" / "up")  # a/up/a/up/... forever if followed
    os.symlink(".", tmp_path / "here.png")  # a folder link named like an image: reported, not entered
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "-r", str(tmp_path)])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["file"], r["error"]) for r in records] == [
        (str(tmp_path / "here.png"), "is a directory, not an image file"),
        (str(tmp_path / "a" / "scan.png"), None),
    ]
