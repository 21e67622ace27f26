"""SIGKILL at random moments while files keep arriving: after restarts, every input has
exactly one result or one failure record; none lost, none reported twice."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from watch_support import Daemon, check_exactly_once, png_bytes, write_atomically

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
            time.sleep(0.01)

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
    assert len(inputs) > 300 and bad
    check_exactly_once(daemon, inputs, bad)
    assert "Traceback" not in daemon.log_text()
