"""What a new user of classify meets on long runs and first mistakes: progress, Ctrl-C, folders without -r."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_birads.classifier import Classifier
from edge_birads.cli import cli

REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def folder_of_copies(folder: Path, source: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        os.link(source, folder / f"img-{i:03d}.png")
    return folder


def test_progress_is_drawn_on_a_terminal_and_stdout_stays_clean(example_pngs, tmp_path):
    images = folder_of_copies(tmp_path / "in", example_pngs[0], 3)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_birads", "classify", "--format", "jsonl", str(images)],
        stdout=subprocess.PIPE, stderr=slave, env=env(),
    )
    os.close(slave)
    terminal = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output on the terminal for 60 s"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    stdout = process.stdout.read().decode()
    assert process.wait() == 0
    text = terminal.decode()
    assert re.search(r"classifying +\[#{30}\] 3/3  \d+\.\d files/s  0:\d\d total", text), text
    assert "3 of 3 files classified" in text
    assert [line[:9] for line in stdout.splitlines()] == ['{"file": '] * 3  # nothing of the bar on stdout


def test_no_progress_when_stderr_is_not_a_terminal(example_pngs, tmp_path):
    images = folder_of_copies(tmp_path / "in", example_pngs[0], 3)
    completed = subprocess.run(
        [sys.executable, "-m", "edge_birads", "classify", "--format", "jsonl", str(images)], capture_output=True, text=True, env=env()
    )
    assert completed.returncode == 0
    assert len(completed.stderr.splitlines()) == 1 and completed.stderr.startswith("3 of 3 files classified;")


def test_ctrl_c_says_what_was_done_and_exits_130(example_pngs, tmp_path):
    images = folder_of_copies(tmp_path / "in", example_pngs[0], 300)
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "edge_birads", "classify", "--format", "jsonl", str(images)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )
    first = process.stdout.readline()
    assert first.startswith('{"file": ')
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    # Read on through the same buffered reader: communicate() reads the pipe itself and would miss lines that
    # readline() has already taken into the reader's buffer.
    rest, stderr = process.stdout.read(), process.stderr.read()
    assert process.wait(timeout=60) == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    done = re.fullmatch(r"interrupted: (\d+) of 300 files done \((\d+) classified, 0 failed, their results above are complete\); (\d+) not read\.", lines[0])
    assert done, lines[0]
    n = int(done.group(1))
    assert 1 <= n < 300 and int(done.group(2)) == n and int(done.group(3)) == 300 - n
    assert len((first + rest).splitlines()) == n  # every file counted as done has its record, none more
    assert "Aborted" not in stderr and "Traceback" not in stderr


def test_ctrl_c_exact_output(example_pngs, tmp_path, monkeypatch):
    real = Classifier.classify_file
    calls = []

    def interrupted_on_the_second(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(Classifier, "classify_file", interrupted_on_the_second)
    images = folder_of_copies(tmp_path / "in", example_pngs[0], 3)
    # --jobs 1: the patch lives in this process (with worker processes, see tests/test_jobs.py).
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "1", str(images)])
    assert result.exit_code == 130
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == "interrupted: 1 of 3 files done (1 classified, 0 failed, their results above are complete); 2 not read.\n"


def test_a_folder_with_images_only_in_sub_folders_says_add_r(example_pngs, tmp_path):
    (tmp_path / "2024" / "jan").mkdir(parents=True)
    shutil.copy(example_pngs[0], tmp_path / "2024" / "jan" / "a.png")
    result = CliRunner().invoke(cli, ["classify", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: no image files found in {tmp_path} (there are images in sub-folders: add -r to read them)\n"
    assert CliRunner().invoke(cli, ["classify", "-r", str(tmp_path)]).exit_code == 0


def test_a_ctrl_c_that_another_thread_takes_still_waits_for_the_record_and_its_count():
    """A worker pool's threads share the process's SIGINT: the kernel hands it to any thread not blocking it, and
    Python raises KeyboardInterrupt in the main thread at its next step, even inside a block the main thread's own
    signal mask guards. The pair (print, count) must still finish first, and the interrupt come after it."""
    import threading

    from edge_birads.cli import interrupts_deferred

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal arrives while the pair is half done
            steps.append("printed")
            steps.append("counted")
    finally:
        stop.set()
        other.join()
    assert steps == ["printed", "counted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is itself again afterwards
