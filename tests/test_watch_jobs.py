"""`edge-birads watch --jobs N`: worker processes classify the bytes the daemon read; the daemon's guarantees hold.

Real images: the two sample mammograms (and variants of them, one pixel changed so that each is its own
content), the real CBIS-DDSM DICOMs, a copy (a duplicate), a truncated PNG and a text file (bad inputs).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import cv2
import pytest
from watch_support import Daemon, check_exactly_once, wait_for

from edge_birads.watch.config import ConfigError, build_config

SAMPLES = Path(__file__).resolve().parent.parent / "edge_birads" / "samples"
VOLATILE = ("processed_at", "latency_ms")  # the only fields allowed to differ between runs


def variants(count: int) -> dict[str, bytes]:
    """Real mammograms, each with one pixel changed: distinct contents, real pictures."""
    images = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(SAMPLES.glob("*.png"))]
    out = {}
    for i in range(count):
        image = images[i % 2].copy()
        image[i // 2, 0] = (int(image[i // 2, 0]) + 1) % 256
        ok, encoded = cv2.imencode(".png", image)
        assert ok
        out[f"m-{i:02d}.png"] = encoded.tobytes()
    return out


def inbox_contents(cbis_dicoms: list[Path], count: int = 10) -> tuple[dict[str, bytes], set[str]]:
    inputs = variants(count)
    for i, path in enumerate(cbis_dicoms[:4]):
        inputs[f"d-{i}.dcm"] = path.read_bytes()
    inputs["m-02-copy.png"] = inputs["m-02.png"]  # the same content under another name, in the same batch: a duplicate
    inputs["m-cut.png"] = inputs["m-04.png"][:2000]  # a truncated PNG
    inputs["notes.png"] = b"not an image\n"
    return inputs, {"m-cut.png", "notes.png"}


def worker_pids(pid: int) -> list[int]:
    """The daemon's worker processes (multiprocessing spawn children; not its resource tracker)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    workers = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.append(child)
    return workers


def comparable(records: list[dict]) -> dict[str, dict]:
    return {record["file"]: {key: value for key, value in record.items() if key not in VOLATILE} for record in records}


def run_daemon(root: Path, inputs: dict[str, bytes], jobs: int) -> Daemon:
    daemon = Daemon(root, poll=True, extra=("--jobs", str(jobs)))
    for name, data in inputs.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.start()
    daemon.wait_all(len(inputs))
    if jobs > 1:
        assert len(worker_pids(daemon.proc.pid)) == jobs, "the model runs in the worker processes"
    assert daemon.stop() == 0
    return daemon


def test_two_jobs_file_exactly_what_one_job_files(tmp_path: Path, cbis_dicoms) -> None:
    inputs, bad = inbox_contents(cbis_dicoms)
    one = run_daemon(tmp_path / "one", inputs, jobs=1)
    two = run_daemon(tmp_path / "two", inputs, jobs=2)
    for daemon in (one, two):
        check_exactly_once(daemon, inputs, bad=bad)
    assert comparable(two.result_records()) == comparable(one.result_records())
    assert comparable(two.failure_records()) == comparable(one.failure_records())
    failures = comparable(two.failure_records())
    assert set(failures) == bad and "truncated PNG" in failures["m-cut.png"]["error"]
    results = comparable(two.result_records())
    pair = sorted((results[name]["duplicate_of"] or "") for name in ("m-02.png", "m-02-copy.png"))
    assert pair in (["", "m-02.png"], ["", "m-02-copy.png"]), "one model run for the two names, the other a duplicate"
    for name in bad:
        assert f"{name}: {failures[name]['error']}" in two.log_text()
    assert two.status()["counts"] == one.status()["counts"]


def test_a_worker_killed_mid_run_loses_and_repeats_no_image(tmp_path: Path, cbis_dicoms) -> None:
    inputs = {f"a-{i}.dcm": path.read_bytes() for i, path in enumerate(cbis_dicoms)}  # ~0.3 s each: a wide window
    inputs.update(variants(12))
    daemon = Daemon(tmp_path, poll=True, extra=("--jobs", "2"))
    for name, data in inputs.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.start()
    workers = wait_for(lambda: len(worker_pids(daemon.proc.pid)) == 2 and worker_pids(daemon.proc.pid), what="two workers", daemon=daemon)
    wait_for(lambda: daemon.outcome_count() >= 1, what="a first record", daemon=daemon)
    assert daemon.outcome_count() < len(inputs), "killed mid-run"
    os.kill(workers[0], signal.SIGKILL)  # the kernel's OOM killer, say
    daemon.wait_all(len(inputs))
    assert daemon.stop() == 0
    check_exactly_once(daemon, inputs, bad=set())
    assert "a worker process died" in daemon.log_text()
    assert daemon.status()["counts"]["classified"] == len(inputs)


def waiting_in_a_pipe_read(pid: int) -> bool:
    """An idle pool worker blocked reading the task queue: it holds the queue's read lock while it waits."""
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_an_idle_worker_killed_while_holding_the_task_queue_is_replaced(tmp_path: Path) -> None:
    """Both workers idle between batches: one waits in the task queue's pipe read holding its lock, the other waits
    for that lock. SIGKILL the first: the survivor can never take a task or the pool's stop sentinel, so the pool
    has to kill it (it must not ignore SIGTERM); the next files are classified by new workers, none lost."""
    first, second = dict(list(variants(8).items())[:4]), dict(list(variants(8).items())[4:])
    daemon = Daemon(tmp_path, poll=True, extra=("--jobs", "2"))
    for name, data in first.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.start()
    daemon.wait_all(len(first))
    workers = wait_for(lambda: len(worker_pids(daemon.proc.pid)) == 2 and worker_pids(daemon.proc.pid), what="two workers", daemon=daemon)
    holder = wait_for(lambda: [pid for pid in workers if waiting_in_a_pipe_read(pid)], what="an idle worker in the queue's read", daemon=daemon)
    os.kill(holder[0], signal.SIGKILL)
    for name, data in second.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.wait_all(len(first) + len(second))
    assert daemon.stop() == 0
    check_exactly_once(daemon, {**first, **second}, bad=set())
    assert "a worker process died" in daemon.log_text()


def test_the_daemon_killed_mid_batch_resumes_every_claimed_file_once(tmp_path: Path, cbis_dicoms) -> None:
    """SIGKILL of the daemon itself while a batch is in its workers: every claimed file is in the working folder
    with its attempt counted; the restarted daemon (one job) files each exactly once."""
    inputs = {f"a-{i}.dcm": path.read_bytes() for i, path in enumerate(cbis_dicoms[:4])}
    inputs.update(variants(4))
    daemon = Daemon(tmp_path, poll=True, extra=("--jobs", "2"))
    for name, data in inputs.items():
        (daemon.inbox / name).write_bytes(data)
    daemon.start()
    wait_for(lambda: len(worker_pids(daemon.proc.pid)) == 2, what="two workers", daemon=daemon)
    work = daemon.results / ".edge-birads" / "work"
    wait_for(lambda: len(list(work.glob("*"))) >= 4, what="a batch of four claimed", daemon=daemon)
    workers = worker_pids(daemon.proc.pid)
    daemon.kill()
    in_flight = [claim["name"] for claim in json.loads((daemon.results / ".edge-birads" / "claim.json").read_text())["claims"]]
    assert len(in_flight) >= 2, "several files in flight at once, each with its attempt counted"
    for pid in workers:  # the workers notice their parent is gone and exit
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[-1][:3],
                 what="the workers gone")
    restarted = Daemon(tmp_path, poll=True)
    restarted.start()
    restarted.wait_all(len(inputs))
    assert restarted.stop() == 0
    check_exactly_once(restarted, inputs, bad=set())
    for name in in_flight:
        assert f"previous run stopped while classifying {name} (attempt 1 of 3); resuming" in restarted.log_text()


@pytest.mark.parametrize(("text", "message"), [("jobs = 0", "jobs must be between 1 and 64, not 0"), ("jobs = two", "jobs = 'two' is not a valid int")])
def test_jobs_in_the_config_file(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "watch.conf"
    conf.write_text("[watch]\ninbox = /a\nresults = /b\njobs = 3\n")
    assert build_config({}, conf).jobs == 3 and build_config({"jobs": 2}, conf).jobs == 2
    assert build_config({"inbox": "/a", "results": "/b"}).jobs == 1
    conf.write_text(f"[watch]\ninbox = /a\nresults = /b\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        build_config({}, conf)
