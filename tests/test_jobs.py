"""``classify --jobs N``: worker processes, the same rows in the same order as one process, errors and exit codes kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_birads.cli import cli

REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mixed_folder(folder: Path, dicoms: list[Path], pngs: list[Path]) -> Path:
    """Real DICOMs and PNGs (links, nothing copied) and bad files between them, in a known sorted order."""
    folder.mkdir()
    for i, source in enumerate(dicoms + pngs):
        (folder / f"{i:02d}-{source.parent.name}-{source.name}").symlink_to(source)
    (folder / "03-garbage.png").write_bytes(b"not an image at all")
    (folder / "05-truncated.dcm").write_bytes(dicoms[0].read_bytes()[:5000])
    (folder / "07-dangling.png").symlink_to(folder / "missing.png")
    (folder / "09-empty.jpg").write_bytes(b"")
    return folder


def rows(stdout: str) -> list[dict]:
    records = [json.loads(line) for line in stdout.splitlines()]
    for record in records:
        record.pop("latency_ms")
    return records


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cbis_dicoms) -> Path:
    examples = sorted((REPO / "examples").glob("*.png"))
    return mixed_folder(tmp_path_factory.mktemp("jobs") / "in", cbis_dicoms, examples)


@pytest.fixture(scope="module")
def one_process(folder) -> object:
    return CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "1", str(folder)])


def test_two_jobs_print_the_one_process_rows_in_input_order(folder, one_process):
    assert one_process.exit_code == 1, one_process.output  # the bad files fail
    two = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "2", str(folder)])
    assert two.exit_code == 1, two.output
    assert rows(two.stdout) == rows(one_process.stdout)
    assert len(rows(two.stdout)) == 14
    assert [r["file"] for r in rows(two.stdout)] == [str(folder / name) for name in sorted(os.listdir(folder)) if name != "missing.png"]
    assert sum(r["error"] is not None for r in rows(two.stdout)) == 4
    assert two.stderr == one_process.stderr  # one error line per bad file, then the summary
    assert two.stderr.count("error: ") == 4


def test_csv_and_table_are_the_same_with_jobs(folder):
    for fmt in ("csv", "table"):
        one = CliRunner().invoke(cli, ["classify", "--format", fmt, "--jobs", "1", str(folder)])
        three = CliRunner().invoke(cli, ["classify", "--format", fmt, "--jobs", "3", str(folder)])
        latency = re.compile(r"\d+\.\d+ ?ms|,\d+\.\d+,(?=[^,]*$)")
        strip = (lambda text: [re.sub(r",[0-9.]+,([^,]*)$", r",,\1", line) for line in text.splitlines()]) if fmt == "csv" else (
            lambda text: [latency.sub("", line) for line in text.splitlines()])
        assert (three.exit_code, strip(three.stdout)) == (one.exit_code, strip(one.stdout)), fmt


def test_all_good_files_exit_0_with_jobs(cbis_dicoms):
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "2", *map(str, cbis_dicoms[:3])])
    assert result.exit_code == 0, result.output
    assert [r["file"] for r in rows(result.stdout)] == list(map(str, cbis_dicoms[:3]))


def test_default_is_one_job_per_core_for_folders_and_one_for_files(tmp_path, example_pngs):
    from edge_birads.parallel import default_jobs, usable_cpus

    cores = len(os.sched_getaffinity(0))
    assert usable_cpus() == cores
    assert default_jobs([str(example_pngs[0])], 1) == 1
    assert default_jobs([str(example_pngs[0]), str(tmp_path)], 4 * cores) == cores
    assert default_jobs([str(tmp_path)], 1000 * cores) == cores
    assert default_jobs([str(tmp_path)], 2) == 1  # a folder of 2 images: one process, no workers to start
    assert default_jobs([str(tmp_path)], 8) == min(cores, 2)


def crash_on_named(path: str):
    """A worker task for the test below: the worker process dies on files named *crash*, as on a decoder crash."""
    from edge_birads import parallel

    if "crash" in Path(path).name:
        os._exit(1)
    return parallel._classify_in_worker(path)


def test_a_file_that_kills_its_worker_is_one_error_row_and_nothing_is_lost(tmp_path, example_pngs):
    from edge_birads.classifier import Classifier
    from edge_birads.parallel import WORKER_DIED, ProcessClassifier, WorkerSettings

    files = []
    for i in range(12):
        name = f"{i:02d}-crash.png" if i in (3, 4, 9) else f"{i:02d}.png"
        (tmp_path / name).symlink_to(example_pngs[i % 2])
        files.append(tmp_path / name)
    classifier = Classifier()
    runner = ProcessClassifier(WorkerSettings(str(classifier.model_path)), jobs=2)
    results = [result for result, _ in runner.run(files, classifier.failure, task=crash_on_named)]
    assert [r.file for r in results] == list(map(str, files))
    assert [r.error for r in results] == [WORKER_DIED if "crash" in f.name else None for f in files]
    expected = {str(f): classifier.classify_file(f).prediction for f in files if "crash" not in f.name}
    assert {r.file: r.prediction for r in results if r.ok} == expected
    assert 3 <= runner.restarts <= 6  # each crash file kills a worker alone once (and once among others, unless the same death)


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(tmp_path, example_pngs):
    from edge_birads.classifier import Classifier
    from edge_birads.parallel import ProcessClassifier, WorkerSettings

    files = []
    for i in range(40):
        (tmp_path / f"{i:02d}.png").symlink_to(example_pngs[i % 2])
        files.append(tmp_path / f"{i:02d}.png")
    classifier = Classifier()
    runner = ProcessClassifier(WorkerSettings(str(classifier.model_path)), jobs=2)
    results = []
    for result, _ in runner.run(files, classifier.failure):
        results.append(result)
        if len(results) == 5:
            victim = next(iter(runner.pool._processes))  # the OOM killer's view of it: one worker pid
            os.kill(victim, signal.SIGKILL)
    errors = [(r.file, r.error) for r in results if not r.ok]
    assert runner.restarts == 1, (runner.restarts, errors)
    assert [r.file for r in results] == list(map(str, files))
    assert errors == []
    assert [r.prediction for r in results] == [classifier.classify_file(f).prediction for f in files]


def start_classify_jobs_2(tmp_path: Path, source: Path, count: int) -> tuple[Path, subprocess.Popen]:
    """`classify --jobs 2` on a folder of ``count`` hard links, in its own process group (as a terminal's job)."""
    images = tmp_path / "in"
    images.mkdir()
    for i in range(count):
        os.link(source, images / f"img-{i:03d}.png")
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "edge_birads", "classify", "--format", "jsonl", "--jobs", "2", str(images)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
    )
    return images, process


def test_ctrl_c_with_jobs_exits_130_with_what_was_done(example_pngs, tmp_path):
    images, process = start_classify_jobs_2(tmp_path, example_pngs[0], 300)
    first = process.stdout.readline()
    assert first.startswith('{"file": ')
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group, workers included
    rest, stderr = process.stdout.read(), process.stderr.read()  # not communicate(): it skips readline's buffer
    process.wait(timeout=60)
    assert process.returncode == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    done = re.fullmatch(r"interrupted: (\d+) of 300 files done \((\d+) classified, 0 failed, their results above are complete\); (\d+) not read\.", lines[0])
    assert done, lines[0]
    n = int(done.group(1))
    assert 1 <= n < 300
    records = (first + rest).splitlines()
    assert len(records) == n
    assert [json.loads(r)["file"] for r in records] == [str(images / f"img-{i:03d}.png") for i in range(n)]


def test_ctrl_c_while_the_workers_start_is_one_line_and_130(example_pngs, tmp_path):
    """Ctrl-C reaches the whole process group: workers still importing must not print tracebacks."""
    import psutil

    images, process = start_classify_jobs_2(tmp_path, example_pngs[0], 20)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(workers := [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]) < 2:  # both exist
        assert time.monotonic() < deadline and process.poll() is None, "the workers never started"
        time.sleep(0.005)
    for worker in workers:  # from exec on, before Python installs any handler: the race, made deterministic
        blocked = int(Path(f"/proc/{worker.pid}/status").read_text().split("SigBlk:")[1].split()[0], 16)
        assert blocked & 1 << (signal.SIGINT - 1), f"worker {worker.pid} started with Ctrl-C live"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("interrupted: "), stderr
    assert len(stdout.splitlines()) == int(re.match(r"interrupted: (\d+) of 20", stderr).group(1))


POOL_MODULES = """
import sys
from edge_birads.cli import main
sys.argv = ["edge-birads", "classify", "--format", "jsonl", sys.argv[1]]
try:
    main()
except SystemExit as done:
    assert done.code in (0, None), done.code
print(" ".join(sorted(name for name in ("concurrent.futures.process", "multiprocessing") if name in sys.modules)), file=sys.stderr)
"""


def test_one_file_never_imports_the_pools_modules(cbis_dicoms):
    """A one-file classify runs in its own process: the pool's modules (part of its cold start) are not imported."""
    done = subprocess.run([sys.executable, "-c", POOL_MODULES, str(cbis_dicoms[0])], capture_output=True, text=True, env=env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == ""
