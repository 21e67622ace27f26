"""The watch daemon as a real process on real folders: bursts, slow writers, bad files,
real DICOMs, clean stops, unwritable folders. Every check runs with inotify and with --poll."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from watch_support import Daemon, check_exactly_once, png_bytes, wait_for, write_atomically

from edge_birads.card import load_card
from edge_birads.classifier import default_model_path

CARD = load_card(default_model_path())
MODES = [pytest.param(False, id="inotify"), pytest.param(True, id="poll")]


@pytest.mark.parametrize("poll", MODES)
def test_burst_of_500_files_each_gets_exactly_one_result(tmp_path: Path, poll: bool) -> None:
    daemon = Daemon(tmp_path, poll=poll)
    inputs: dict[str, bytes] = {}
    for i in range(100):  # already waiting when the daemon starts
        inputs[f"early-{i:03d}.png"] = png_bytes(i)
        (daemon.inbox / f"early-{i:03d}.png").write_bytes(inputs[f"early-{i:03d}.png"])
    daemon.start()
    daemon.wait_started()
    for i in range(100, 480):  # then a burst, half written in place, half renamed into place
        name, data = f"burst-{i:03d}.png", png_bytes(i)
        inputs[name] = data
        if i % 2:
            (daemon.inbox / name).write_bytes(data)
        else:
            write_atomically(daemon.inbox, name, data)
    for i in range(20):  # the same content again under other names
        name, data = f"copy-{i:02d}.png", png_bytes(i * 7)
        inputs[name] = data
        (daemon.inbox / name).write_bytes(data)
    assert len(inputs) == 500
    daemon.wait_all(500)
    wait_for(lambda: (daemon.status() or {}).get("queue_length") == 0, what="an empty queue in the status", daemon=daemon)
    assert daemon.stop() == 0
    check_exactly_once(daemon, inputs, bad=set())
    status = daemon.status()
    assert status["state"] == "stopped" and status["queue_length"] == 0
    assert status["counts"]["classified"] == 480 and status["counts"]["duplicates"] == 20
    assert status["last_success"]["file"] in inputs
    duplicates = {r["file"]: r for r in daemon.result_records() if r["duplicate_of"] is not None}
    assert sorted(duplicates) == sorted(f"copy-{i:02d}.png" for i in range(20))
    for record in daemon.result_records():
        assert record["group"] in CARD.labels
        assert abs(sum(record["probabilities"].values()) - 1.0) < 1e-3
        assert record["referral"] == (record["suspicion_score"] >= CARD.referral_threshold)
        assert record["model_sha256"] == CARD.sha256


def slow_write(path: Path, data: bytes, chunks: int, pause: float, reopen: bool) -> None:
    """Write ``data`` in pieces with pauses, like a copy over a slow link."""
    step = -(-len(data) // chunks)
    if reopen:  # a writer that closes and reopens between chunks
        for offset in range(0, len(data), step):
            with open(path, "ab") as handle:
                handle.write(data[offset : offset + step])
            time.sleep(pause)
        return
    with open(path, "wb") as handle:
        for offset in range(0, len(data), step):
            handle.write(data[offset : offset + step])
            handle.flush()
            time.sleep(pause)


@pytest.mark.parametrize("poll", MODES)
def test_files_written_slowly_are_never_read_half_written(tmp_path: Path, poll: bool) -> None:
    # Pauses between chunks (0.25 s) are shorter than the stability interval (1 s).
    daemon = Daemon(tmp_path, poll=poll, stable=1.0)
    daemon.start()
    daemon.wait_started()
    inputs = {f"slow-{i}.png": png_bytes(1000 + i, size=256) for i in range(6)}
    inputs["handover.png"] = png_bytes(2000, size=256)  # written as .part, renamed at the end
    jobs = []
    for i, (name, data) in enumerate(inputs.items()):
        if name == "handover.png":
            part = daemon.inbox / "handover.png.part"
            target = lambda part=part, data=data: (
                slow_write(part, data, 8, 0.25, False),
                os.rename(part, daemon.inbox / "handover.png"),
            )
        else:
            # With inotify, close-after-write marks a file complete, so only --poll can take a writer that reopens.
            reopen = poll and i % 2 == 1
            target = lambda path=daemon.inbox / name, data=data, reopen=reopen: slow_write(path, data, 8, 0.25, reopen)
        jobs.append(threading.Thread(target=target))
    never_renamed = daemon.inbox / "stuck.tmp"
    never_renamed.write_bytes(png_bytes(3000)[:100])
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    daemon.wait_all(len(inputs), keep=frozenset({"stuck.tmp"}))
    assert daemon.stop() == 0
    check_exactly_once(daemon, inputs, bad=set())
    assert never_renamed.read_bytes() == png_bytes(3000)[:100], "a *.tmp file must be left alone"


def truncated_dicom(source: Path) -> bytes:
    data = source.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("poll", MODES)
def test_corrupted_and_non_image_files_are_quarantined_with_reasons(tmp_path: Path, poll: bool, cbis_dicoms) -> None:
    daemon = Daemon(tmp_path, poll=poll)
    good = {f"good-{i}.png": png_bytes(4000 + i) for i in range(3)}
    bad = {
        "truncated.png": png_bytes(5000)[:300],
        "text.png": b"this is not an image\n",
        "empty.png": b"",
        "notes.txt": b"a shopping list, not a mammogram\n",
        "random.dcm": os.urandom(4096),
        "truncated.dcm": truncated_dicom(cbis_dicoms[0]),
    }
    expected_reason = {
        "truncated.png": "truncated",
        "text.png": "not a readable image",
        "empty.png": "empty file",
        "notes.txt": "not a readable image",
        "random.dcm": "DICOM",
        "truncated.dcm": "DICOM",
    }
    for name, data in {**good, **bad}.items():
        (daemon.inbox / name).write_bytes(data)
    (daemon.inbox / "folder.png").mkdir()
    daemon.start()
    daemon.wait_all(len(good) + len(bad) + 1)
    assert daemon.stop() == 0
    failures = {record["file"]: record for record in daemon.failure_records()}
    assert failures.pop("folder.png")["error"] == "is a directory, not an image file"
    assert (daemon.failed / "folder.png").is_dir()
    check_exactly_once(daemon, {**good, **bad}, bad=set(bad), others=frozenset({"folder.png"}))
    for name, data in bad.items():
        record = failures[name]
        assert expected_reason[name] in record["error"], (name, record["error"])
        assert "\n" not in record["error"]
        assert (daemon.failed / name).read_bytes() == data, "the quarantined file is kept as it arrived"
        assert (daemon.failed / (name + ".reason.json")).is_file(), "the reason sits beside the file"
        assert f"{name}: {record['error']}" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


def test_real_dicoms_are_classified_without_patient_identifiers_in_logs_or_records(tmp_path: Path, cbis_dicoms) -> None:
    pydicom = pytest.importorskip("pydicom")
    daemon = Daemon(tmp_path)
    identifiers = set()
    for path in cbis_dicoms:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(dataset.get("PatientName", "")), str(dataset.get("PatientID", ""))} - {""}
        shutil.copy(path, daemon.inbox / f"{path.parent.name}-{path.name}")
    # One more with identifiers we chose, and the same one re-labelled as a CT (not mammography).
    dataset = pydicom.dcmread(cbis_dicoms[0])
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = "Doe^Jane", "PID-8675309", "19610101"
    dataset.save_as(daemon.inbox / "named.dcm")
    dataset.Modality = "CT"
    dataset.save_as(daemon.inbox / "ct.dcm")
    identifiers |= {"Doe^Jane", "Doe", "PID-8675309", "19610101"}
    daemon.start()
    daemon.wait_all(10)
    assert daemon.stop() == 0
    results = {r["file"]: r for r in daemon.result_records()}
    assert len(results) == 9 and all(r["group"] in CARD.labels for r in results.values())
    assert results["named.dcm"]["duplicate_of"] is None  # different bytes from its source: its own run
    (failure,) = daemon.failure_records()
    assert failure["file"] == "ct.dcm" and "not mammography" in failure["error"]
    written = daemon.log_text() + "".join(p.read_text() for p in daemon.results.glob("*.json"))
    written += "".join(p.read_text() for p in daemon.failed.glob("*.json")) + json.dumps(daemon.status())
    for identifier in identifiers:
        assert identifier not in written, identifier


@pytest.mark.parametrize("poll", MODES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_finishes_the_current_image_and_exits_0(tmp_path: Path, poll: bool, signum: int) -> None:
    daemon = Daemon(tmp_path, poll=poll, stable=0.2)
    inputs = {f"img-{i:03d}.png": png_bytes(6000 + i, size=256) for i in range(150)}
    for name, data in inputs.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.start()
    wait_for(lambda: daemon.outcome_count() >= 5, what="the first results", daemon=daemon)
    assert daemon.stop(signum) == 0
    log = daemon.log_text()
    assert f"{signal.Signals(signum).name} received" in log and "stopped:" in log
    assert "Traceback" not in log
    assert daemon.status()["state"] == "stopped"
    # Nothing half-done: each input is either untouched in the inbox or finished with one record.
    finished = {r["file"] for r in daemon.result_records()}
    waiting = set(daemon.inbox_names())
    assert finished.isdisjoint(waiting) and finished | waiting == set(inputs)
    # A restart finishes the rest, and nothing is reported twice.
    daemon.start()
    daemon.wait_all(len(inputs))
    assert daemon.stop() == 0
    check_exactly_once(daemon, inputs, bad=set())


def make_unwritable(folder: Path) -> tuple[list[str], list[str]] | None:
    """Commands that make ``folder`` unwritable (and undo it), even for root; None if impossible here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return [], []
    if shutil.which("chattr") is None:
        return None
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        return None
    return ["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]


def make_writable(folder: Path, undo: list[str]) -> None:
    if undo:
        subprocess.run(undo, check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("poll", MODES)
def test_unwritable_results_folder_is_a_clear_error_at_start(tmp_path: Path, poll: bool) -> None:
    daemon = Daemon(tmp_path, poll=poll)
    daemon.results.mkdir()
    (daemon.inbox / "a.png").write_bytes(png_bytes(1))
    commands = make_unwritable(daemon.results)
    if commands is None:
        pytest.skip("cannot make a folder unwritable for root here (no chattr, or the filesystem lacks +i)")
    try:
        run = daemon.run_foreground()
    finally:
        make_writable(daemon.results, commands[1])
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if " error: " in line]
    assert len(errors) == 1, run.stderr
    assert f"results folder {daemon.results} is not writable:" in errors[0]
    assert "Traceback" not in run.stderr
    assert (daemon.inbox / "a.png").is_file()


def test_results_folder_turning_unwritable_stops_the_daemon_and_keeps_the_input(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    daemon.wait_started()
    commands = make_unwritable(daemon.results)
    if commands is None:
        pytest.skip("cannot make a folder unwritable for root here (no chattr, or the filesystem lacks +i)")
    try:
        data = png_bytes(7)
        write_atomically(daemon.inbox, "late.png", data)
        code = daemon.proc.wait(timeout=120)
    finally:
        make_writable(daemon.results, commands[1])
    assert code == 74
    assert (daemon.inbox / "late.png").read_bytes() == data, "an input the daemon could not record stays in the inbox"
    assert "cannot go on: writing" in daemon.log_text() and "Traceback" not in daemon.log_text()
    daemon.start()  # once the folder is writable again, a restart records it
    daemon.wait_all(1)
    assert daemon.stop() == 0
    check_exactly_once(daemon, {"late.png": data}, bad=set())


BUGGY_RUNNER = """
import sys
import edge_birads.classifier as classifier

original = classifier.Classifier.classify_bytes

def classify_bytes(self, data, name):
    if str(name).endswith("trigger.png"):
        raise ZeroDivisionError("an injected bug")
    return original(self, data, name)

classifier.Classifier.classify_bytes = classify_bytes
from edge_birads.cli import main
sys.argv[0] = "edge-birads"
main()
"""


def test_a_bug_exits_non_zero_keeps_the_file_and_a_repeat_offender_is_set_aside(tmp_path: Path) -> None:
    """A real bug (not an InputError) must not be swallowed: exit 70 with context, file kept;
    after --max-attempts runs died on the same file, it is quarantined so the queue goes on."""
    daemon = Daemon(tmp_path, extra=("--max-attempts", "2"))
    runner = tmp_path / "buggy.py"
    runner.write_text(BUGGY_RUNNER)
    data = png_bytes(11)
    (daemon.inbox / "trigger.png").write_bytes(data)
    (daemon.inbox / "fine.png").write_bytes(png_bytes(12))
    for _ in range(2):
        run = daemon.run_foreground([sys.executable, str(runner), *daemon.command()[3:]])
        assert run.returncode == 70, run.stderr
        assert "internal error while classifying trigger.png: ZeroDivisionError: an injected bug at" in run.stderr
        assert (daemon.inbox / "trigger.png").read_bytes() == data
    daemon.start()
    daemon.wait_all(2)
    assert daemon.stop() == 0
    (failure,) = daemon.failure_records()
    assert failure["file"] == "trigger.png" and "stopped 2 times while classifying" in failure["error"]
    assert [r["file"] for r in daemon.result_records()] == ["fine.png"]


def test_status_file_is_a_heartbeat_while_idle(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    daemon.wait_started()
    first = daemon.status()["updated_at"]
    wait_for(lambda: daemon.status()["updated_at"] != first, what="a second heartbeat", daemon=daemon)
    status = daemon.status()
    assert status["state"] == "running" and status["queue_length"] == 0 and status["last_success"] is None
    assert status["model_sha256"] == CARD.sha256
    assert daemon.stop() == 0


def test_a_second_daemon_on_the_same_inbox_is_refused(tmp_path: Path) -> None:
    first = Daemon(tmp_path).start()
    first.wait_started()
    second = Daemon(tmp_path)
    run = second.run_foreground()
    assert run.returncode == 1
    assert f"another edge-birads watch (pid {first.proc.pid}) is already watching {first.inbox}" in run.stderr
    assert first.stop() == 0
