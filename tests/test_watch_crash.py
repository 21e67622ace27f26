"""SIGKILL at random moments while files keep arriving: after restarts, every input has
exactly one result or one failure record; none lost, none reported twice."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from watch_support import Daemon, check_exactly_once, png_bytes, sha256, wait_for, write_atomically

KILLS = 12


@pytest.mark.parametrize("poll", [pytest.param(False, id="inotify"), pytest.param(True, id="poll")])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, poll: bool) -> None:
    rng = random.Random(5 + poll)  # seeded: the same kill moments on every run
    # Kills can land on the same file repeatedly; this test is about durability, not poison files.
    daemon = Daemon(tmp_path, poll=poll, stable=0.3, extra=("--max-attempts", "1000"))
    inputs: dict[str, bytes] = {}
    bad: set[str] = set()
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            kind = i % 10
            if kind == 7:
                name, data = f"bad-{i:04d}.png", b"not a PNG %d\n" % i * 20
                bad.add(name)
            elif kind == 8:  # an earlier image's content again, under a new name
                name, data = f"copy-{i:04d}.png", png_bytes(10_000 + i - 8)
            else:
                name, data = f"in-{i:04d}.png", png_bytes(10_000 + i)
            inputs[name] = data
            if i % 3:
                (daemon.inbox / name).write_bytes(data)
            else:
                write_atomically(daemon.inbox, name, data)
            i += 1
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        daemon.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.2))
            daemon.kill()
            daemon.start()
    finally:
        stop.set()
        producer.join()
    daemon.wait_all(len(inputs))
    assert daemon.stop() == 0
    assert daemon.starts == KILLS + 1
    assert len(inputs) > 150 and bad  # files kept arriving through all the kills
    check_exactly_once(daemon, inputs, bad)
    assert "Traceback" not in daemon.log_text()


def test_each_crash_window_is_resumed_without_a_second_record(tmp_path: Path) -> None:
    """The on-disk states a kill or power cut can leave between two steps, made by hand:
    (a) result and index written, move to done/ lost; (b) result written, index entry and
    move lost; (c) failure reason written, move to failed/ lost; (d) a half-written temp file."""
    daemon = Daemon(tmp_path)
    inputs = {"a.png": png_bytes(1), "b.png": png_bytes(2), "bad.png": b"not an image"}
    for name, data in inputs.items():
        (daemon.inbox / name).write_bytes(data)
    (daemon.inbox / "dir.png").mkdir()  # cannot be hashed: recognised by inode and mtime instead
    daemon.start()
    daemon.wait_all(4)
    assert daemon.stop() == 0
    index = daemon.results / ".edge-birads" / "content"
    (daemon.done / "a.png").rename(daemon.inbox / "a.png")  # (a)
    (daemon.done / "b.png").rename(daemon.inbox / "b.png")  # (b)
    (index / f"{sha256(inputs['b.png'])}.json").unlink()
    (daemon.failed / "bad.png").rename(daemon.inbox / "bad.png")  # (c)
    (daemon.failed / "dir.png").rename(daemon.inbox / "dir.png")  # (c) for an entry without content
    torn = daemon.results / ".eb-tmp-999-a.png.json"  # (d)
    torn.write_text('{"file": "a.p')
    daemon.start()
    daemon.wait_all(4)
    wait_for(
        lambda: daemon.log_text().count("failure was recorded by an earlier run") == 2, daemon=daemon, what="the failures resumed"
    )
    (daemon.inbox / "dir.png").mkdir()  # a new folder of the same name is a new arrival: its own record
    # Then the same content as b under a new name: the rebuilt index answers it, no model run.
    inputs["c.png"] = inputs["b.png"]
    write_atomically(daemon.inbox, "c.png", inputs["c.png"])
    daemon.wait_all(6)
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "dir.png: failure was recorded by an earlier run" in log
    dir_records = [r for r in daemon.failure_records() if r["file"] == "dir.png"]
    assert len(dir_records) == 2 and len({r["identity"] for r in dir_records}) == 2
    assert sorted(p.name for p in daemon.failed.iterdir() if p.is_dir()) == sorted(r["quarantined_as"] for r in dir_records)
    assert "a.png: already reported by an earlier run" in log
    assert "b.png: result b.png.json was written by an earlier run" in log
    assert "bad.png: failure was recorded by an earlier run" in log
    assert "c.png: same content as b.png" in log
    assert not torn.exists()
    check_exactly_once(daemon, inputs, bad={"bad.png"}, others=frozenset({"dir.png"}))


def test_a_result_filed_just_before_a_stop_is_indexed_again_from_its_record(tmp_path: Path) -> None:
    """(e) The run stopped after a.png was filed but before its claim record was dropped, and its content index
    entry was lost (neither is fsynced): at start the daemon indexes the prediction from a.png's result record,
    so the same content under a new name is answered from it, not run again, and the claim record goes."""
    daemon = Daemon(tmp_path)
    inputs = {"a.png": png_bytes(1)}
    (daemon.inbox / "a.png").write_bytes(inputs["a.png"])
    daemon.start()
    daemon.wait_all(1)
    assert daemon.stop() == 0
    state = daemon.results / ".edge-birads"
    (state / "content" / f"{sha256(inputs['a.png'])}.json").unlink()
    claim = state / "claim.json"
    claim.write_text(json.dumps({"claims": [{"name": "a.png", "sha256": sha256(inputs["a.png"]), "attempts": 1, "pid": 1}]}))
    daemon.start()
    inputs["c.png"] = inputs["a.png"]
    write_atomically(daemon.inbox, "c.png", inputs["c.png"])
    daemon.wait_all(2)
    assert daemon.stop() == 0
    assert "c.png: same content as a.png" in daemon.log_text()
    assert not claim.exists(), "the claim record of the filed file is dropped"
    check_exactly_once(daemon, inputs, bad=set())
