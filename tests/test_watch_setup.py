"""Set-ups that used to wedge the daemon or overwrite its records, each with real daemon processes:
output folders inside the inbox, two daemons sharing results, a deleted lock file, a file that cannot
be moved, an inbox named through a symlink, study sub-folders, the status after exit 74, and stderr
lines outside the log format."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from watch_support import Daemon, png_bytes, sha256, wait_for, write_atomically

from edge_birads.errors import printable_name

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} edge-birads\[\d+\] (info|warning|error): ")


def only_log_lines(text: str) -> list[str]:
    """The lines of a daemon's stderr that are not in the log format (start markers of watch_support aside)."""
    return [line for line in text.splitlines() if not LOG_LINE.match(line) and not line.startswith("--- start")]


@pytest.mark.parametrize(
    ("option", "inside"),
    [("--results", "results"), ("--done", "done"), ("--failed", "failed"), ("--state", "state")],
)
def test_an_output_folder_inside_the_inbox_is_refused_at_start(tmp_path: Path, option: str, inside: str) -> None:
    daemon = Daemon(tmp_path)
    (daemon.inbox / "a.png").write_bytes(png_bytes(1))
    command = daemon.command()
    if option == "--results":
        command[command.index("--results") + 1] = str(daemon.inbox / inside)
    else:
        command += [option, str(daemon.inbox / "sub" / inside)]
    run = daemon.run_foreground(command)
    assert run.returncode == 1, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert " error: the " in line and f"folder {daemon.inbox / 'sub' / inside if option != '--results' else daemon.inbox / inside} must not be inside the inbox {daemon.inbox}" in line
    assert sorted(p.name for p in daemon.inbox.iterdir()) == ["a.png"], "nothing created, nothing moved"


def test_the_inbox_inside_an_output_folder_or_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    link = tmp_path / "link-to-inbox"
    link.symlink_to(daemon.inbox)
    command = daemon.command()
    command[command.index("--results") + 1] = str(link / "results")  # inside the inbox, named through a link
    run = daemon.run_foreground(command)
    assert run.returncode == 1 and "must not be inside the inbox" in run.stderr
    command = daemon.command() + ["--done", str(tmp_path)]  # the inbox is inside done
    run = daemon.run_foreground(command)
    assert run.returncode == 1 and f"the inbox {daemon.inbox} must not be inside the done folder" in run.stderr


def test_two_daemons_cannot_share_a_results_folder(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "one").start()
    first.wait_started()
    second = Daemon(tmp_path / "two")
    second.results = first.results
    run = second.run_foreground()
    assert run.returncode == 1, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert f"another edge-birads watch (pid {first.proc.pid}) already uses the results folder {first.results}" in line
    assert first.stop() == 0


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(tmp_path: Path) -> None:
    first = Daemon(tmp_path).start()
    first.wait_started()
    (first.inbox / ".edge-birads-watch.lock").unlink()  # a sender cleaning up dotfiles
    second = Daemon(tmp_path)
    second.results = tmp_path / "other-results"
    run = second.run_foreground()
    assert run.returncode == 1 and f"is already watching {first.inbox}" in run.stderr, run.stderr
    assert first.stop() == 0


def immutable(path: Path) -> bool:
    """Make ``path`` impossible to rename, even for root; False where this file system cannot."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0


def test_a_file_that_cannot_be_moved_is_counted_then_skipped_and_the_rest_go_on(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, extra=("--max-attempts", "2"))
    stuck = daemon.inbox / "stuck.png"
    stuck.write_bytes(png_bytes(31))
    if os.geteuid() == 0:
        if not immutable(stuck):
            pytest.skip("cannot make a file immutable here (no chattr, or the filesystem lacks +i)")
        undo = ["chattr", "-i", str(stuck)]
    else:
        daemon.inbox.chmod(0o555)  # not root: the inbox itself refuses renames (the lock file exists first)
        undo = None
    try:
        if undo is None:
            pytest.skip("needs root to make one file unmovable while the inbox stays writable")
        daemon.start()
        write_atomically(daemon.inbox, "after.png", png_bytes(32))
        wait_for(lambda: "stuck.png: cannot be taken out of the inbox" in daemon.log_text() and "skipped" in daemon.log_text(),
                 what="the skip", daemon=daemon)
        daemon.wait_all(1, keep=frozenset({"stuck.png"}))
        write_atomically(daemon.inbox, "later.png", png_bytes(33))  # still processing
        daemon.wait_all(2, keep=frozenset({"stuck.png"}))
        status = daemon.status()
        assert status["state"] == "running" and status["counts"]["skipped"] == 1
        assert daemon.stop() == 0
        log = daemon.log_text()
        assert "stuck.png: cannot be taken out of the inbox (Operation not permitted); attempt 1 of 2, will retry" in log
        assert log.count("after 2 attempts; skipped and left there") == 1
        daemon.start()  # the count is kept across restarts: skipped at once, not retried for ever
        write_atomically(daemon.inbox, "third.png", png_bytes(34))
        daemon.wait_all(3, keep=frozenset({"stuck.png"}))
        assert daemon.stop() == 0
        assert daemon.log_text().count("attempt 1 of 2") == 1
    finally:
        subprocess.run(undo, check=False)
    assert sorted(r["file"] for r in daemon.result_records()) == ["after.png", "later.png", "third.png"]
    assert stuck.read_bytes() == png_bytes(31), "left where it was"


def test_an_inbox_named_through_a_symlink_sees_events_at_once(tmp_path: Path) -> None:
    real = tmp_path / "real-inbox"
    real.mkdir()
    link = tmp_path / "inbox-link"
    link.symlink_to(real)
    # Stable interval and rescan both far longer than the wait: only an inotify event can start the work.
    daemon = Daemon(tmp_path, stable=60, inbox=link, extra=("--scan-interval", "60"))
    daemon.start()
    daemon.wait_started()
    write_atomically(link, "a.png", png_bytes(41))
    wait_for(lambda: daemon.outcome_count() >= 1, timeout=20, what="the result of a file renamed in", daemon=daemon)
    assert daemon.stop() == 0


def test_study_sub_folders_are_processed_with_their_relative_paths_and_removed_when_empty(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    daemon.start()
    daemon.wait_started()
    study = daemon.inbox / "1.2.840.113619.2.55"  # a study UID: dots, but no image suffix
    (study / "series").mkdir(parents=True)
    inputs = {
        "1.2.840.113619.2.55/a.png": png_bytes(51),
        "1.2.840.113619.2.55/series/b.png": png_bytes(52),
        "1.2.840.113619.2.55/bad.png": b"not an image",
    }
    for name, data in inputs.items():
        write_atomically(daemon.inbox, name, data)
    (study / "series" / "c.png.part").write_bytes(b"in flight")  # copies in flight are left alone, in study folders too
    daemon.wait_all(3, keep=frozenset({"1.2.840.113619.2.55"}))
    (study / "series" / "c.png.part").rename(study / "series" / "c.png")  # the writer renames it: now complete
    inputs["1.2.840.113619.2.55/series/c.png"] = b"in flight"
    wait_for(lambda: not study.exists(), what="the settled study folder removed", daemon=daemon)
    assert daemon.stop() == 0
    results = {r["file"]: r for r in daemon.result_records()}
    failures = {r["file"]: r for r in daemon.failure_records()}
    assert sorted(results) == ["1.2.840.113619.2.55/a.png", "1.2.840.113619.2.55/series/b.png"]
    assert sorted(failures) == ["1.2.840.113619.2.55/bad.png", "1.2.840.113619.2.55/series/c.png"]
    assert (daemon.results / "1.2.840.113619.2.55" / "series" / "b.png.json").is_file()
    for name, data in inputs.items():
        folder = daemon.failed if name in failures else daemon.done
        assert (folder / name).read_bytes() == data, name
    assert sorted(p.name for p in daemon.inbox.iterdir()) == [".edge-birads-watch.lock"]
    assert "1.2.840.113619.2.55/: study folder empty, removed from the inbox" in daemon.log_text()


def test_status_is_not_running_after_exit_74(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    daemon.wait_started()
    shutil.rmtree(daemon.done)  # an output folder taken away under the daemon
    daemon.done.write_text("not a folder any more")
    write_atomically(daemon.inbox, "a.png", png_bytes(61))
    assert daemon.proc.wait(timeout=120) == 74
    status = daemon.status()
    assert status["state"] == "exited" and status["exit_code"] == 74 and "done" in status["error"]
    assert (daemon.inbox / "a.png").read_bytes() == png_bytes(61), "the claimed input went back to the inbox"
    assert "the input is back in the inbox; exiting 74" in daemon.log_text()


def float_tiff(value: float) -> bytes:
    image = np.full((64, 64), value, np.float64)
    image[0, 0] = -value
    ok, encoded = cv2.imencode(".tif", image)
    assert ok
    return encoded.tobytes()


ESC_NAME = "esc-\x1b[31m-red.png"


def test_nothing_reaches_stderr_outside_the_log_format(tmp_path: Path) -> None:
    """Float TIFFs with huge values (numpy overflow warnings), a name with an ESC byte, a library
    logging an error from a thread (as watchdog's inotify emitter does on stop in some versions)."""
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import logging, sys, threading\n"
        "import edge_birads.watch.daemon as watch\n"
        "original = watch.WatchDaemon.shutdown\n"
        "def shutdown(self):\n"
        "    t = threading.Thread(target=lambda: logging.getLogger('watchdog.observers.inotify').error("
        "'InotifyEmitter.queue_events() called when the thread is inactive'))\n"
        "    t.start(); t.join()\n"
        "    original(self)\n"
        "watch.WatchDaemon.shutdown = shutdown\n"
        "from edge_birads.cli import main\n"
        "sys.argv[0] = 'edge-birads'\n"
        "main()\n"
    )
    daemon = Daemon(tmp_path)
    (daemon.inbox / "huge64.tif").write_bytes(float_tiff(1e300))
    (daemon.inbox / "huge32.tif").write_bytes(float_tiff(3e38))
    (daemon.inbox / ESC_NAME).write_bytes(png_bytes(71))
    proc = subprocess.Popen([sys.executable, str(runner), *daemon.command()[3:]], env=daemon.env(), stderr=subprocess.PIPE)
    wait_for(lambda: daemon.outcome_count() >= 3, what="three records")
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    text = err.decode("utf-8")
    assert not only_log_lines(text), text
    assert "\x1b" not in text
    assert f"-> {printable_name(ESC_NAME)}.json" in text
    assert "error: watchdog.observers.inotify: InotifyEmitter.queue_events() called when the thread is inactive" in text
    failures = {r["file"]: r["error"] for r in daemon.failure_records()}
    assert failures == {
        "huge64.tif": "image contains NaN or infinite values",
        "huge32.tif": "image values span more than a 32-bit float can hold",
    }


def test_classify_prints_no_numpy_warning_for_huge_float_tiffs(tmp_path: Path) -> None:
    (tmp_path / "huge32.tif").write_bytes(float_tiff(3e38))  # fits float32, but its range does not
    (tmp_path / "huge64.tif").write_bytes(float_tiff(1e300))  # does not fit float32 at all
    run = subprocess.run([sys.executable, "-m", "edge_birads", "classify", str(tmp_path)], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr.splitlines()[:2] == [
        f"error: {tmp_path / 'huge32.tif'}: image values span more than a 32-bit float can hold",
        f"error: {tmp_path / 'huge64.tif'}: image contains NaN or infinite values",
    ]
    assert len(run.stderr.splitlines()) == 2 and "Warning" not in run.stderr, run.stderr


def test_renamed_duplicates_keep_their_image_suffix(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    first, second = png_bytes(81), png_bytes(82)
    write_atomically(daemon.inbox, "mdb003.png", first)
    daemon.wait_all(1)
    write_atomically(daemon.inbox, "mdb003.png", second)  # the same name, other content
    daemon.wait_all(2)
    assert daemon.stop() == 0
    assert (daemon.done / "mdb003.png").read_bytes() == first
    assert (daemon.done / f"mdb003.{sha256(second)[:12]}.png").read_bytes() == second
    assert (daemon.results / f"mdb003.{sha256(second)[:12]}.png.json").is_file()
