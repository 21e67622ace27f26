"""Helpers for the watch-daemon tests: real folders, real files, a real daemon process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
LIVENESS_TIMEOUT = 120.0  # generous: only there so a hung daemon fails the test instead of hanging it


def png_bytes(seed: int, size: int = 64) -> bytes:
    """A small synthetic grayscale PNG, unique per seed (noise does not compress)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(folder: Path, name: str, data: bytes) -> None:
    """How DICOM receivers hand files over: write NAME.part, then rename."""
    part = folder / (name + ".part")
    part.write_bytes(data)
    os.rename(part, folder / name)


def wait_for(predicate, timeout: float = LIVENESS_TIMEOUT, what: str = "condition", daemon: Daemon | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {daemon.proc.returncode} while waiting for {what}:\n{daemon.log_text()[-3000:]}"
            )
        time.sleep(0.1)
    tail = daemon.log_text()[-3000:] if daemon is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


# The daemon's own code, run with os.fsync wrapped: it can pause (until the test says go) or SIGKILL
# itself at the fsync of a chosen file, so a test hits one crash or race window every time.
HOOKED_RUNNER = """
import os, re, signal, sys, time
from pathlib import Path

control = Path(os.environ["EB_TEST_CONTROL"])
pause_on = os.environ.get("EB_TEST_PAUSE_ON_FSYNC")
kill_on = os.environ.get("EB_TEST_KILL_ON_FSYNC")
real_fsync = os.fsync

def fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if kill_on and re.search(kill_on, path) and not (control / "killed").exists():
        (control / "killed").write_text(path)
        os.kill(os.getpid(), signal.SIGKILL)
    if pause_on and re.search(pause_on, path) and not (control / "paused").exists():
        (control / "paused").write_text(path)
        while not (control / "go").exists():
            time.sleep(0.01)
    return real_fsync(fd)

os.fsync = fsync
pause_in_classify = os.environ.get("EB_TEST_PAUSE_IN_CLASSIFY")
if pause_in_classify:
    import edge_birads.classifier as classifier

    original = classifier.Classifier.classify_bytes

    def classify_bytes(self, data, name):
        if re.search(pause_in_classify, str(name)) and not (control / "paused").exists():
            (control / "paused").write_text(str(name))
            while not (control / "go").exists():
                time.sleep(0.01)
        return original(self, data, name)

    classifier.Classifier.classify_bytes = classify_bytes
from edge_birads.cli import main
sys.argv[0] = "edge-birads"
main()
"""


class Daemon:
    """``python -m edge_birads watch`` on folders under ``root``, as a child process.

    ``pause_on_fsync`` / ``kill_on_fsync`` (regular expressions on the fsynced file's path) and
    ``pause_in_classify`` (on the name being classified) run it under HOOKED_RUNNER; ``control`` is the
    folder where it says ``paused`` and waits for ``go``.
    """

    def __init__(
        self,
        root: Path,
        poll: bool = False,
        stable: float = 0.5,
        extra: tuple[str, ...] = (),
        pause_on_fsync: str | None = None,
        kill_on_fsync: str | None = None,
        pause_in_classify: str | None = None,
        inbox: Path | None = None,
    ) -> None:
        self.root = root
        self.inbox = inbox or root / "inbox"
        self.hooks = {
            "EB_TEST_PAUSE_ON_FSYNC": pause_on_fsync,
            "EB_TEST_KILL_ON_FSYNC": kill_on_fsync,
            "EB_TEST_PAUSE_IN_CLASSIFY": pause_in_classify,
        }
        self.control = root / "control"
        self.results = root / "results"
        self.done = root / "done"
        self.failed = root / "failed"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.poll = poll
        self.stable = stable
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "daemon.log"
        self.starts = 0

    def command(self) -> list[str]:
        if any(self.hooks.values()):
            runner = self.root / "hooked_runner.py"
            runner.write_text(HOOKED_RUNNER)
            self.control.mkdir(exist_ok=True)
            cmd = [sys.executable, str(runner), "watch", str(self.inbox), "--results", str(self.results)]
        else:
            cmd = [sys.executable, "-m", "edge_birads", "watch", str(self.inbox), "--results", str(self.results)]
        cmd += ["--stable-seconds", str(self.stable), "--heartbeat-seconds", "0.5"]
        if self.poll:
            cmd += ["--poll", "--scan-interval", "0.3"]
        return cmd + list(self.extra)

    def env(self) -> dict[str, str]:
        """The environment of a daemon run: this checkout first on the path, not under journald."""
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("JOURNAL_STREAM", None)
        env["EB_TEST_CONTROL"] = str(self.control)
        env.update({key: value for key, value in self.hooks.items() if value})
        return env

    def run_foreground(self, command: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the daemon (or ``command``) to its own exit, for runs expected to stop by themselves."""
        return subprocess.run(command or self.command(), capture_output=True, text=True, timeout=timeout, env=self.env(), check=False)

    def start(self) -> Daemon:
        env = self.env()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=log, stderr=log)
        self.starts += 1
        return self

    def wait_started(self) -> None:
        """Until the daemon has loaded the model and listed the inbox (its first heartbeat)."""
        pid = self.proc.pid
        wait_for(lambda: (self.status() or {}).get("pid") == pid, what="the daemon's first heartbeat", daemon=self)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = LIVENESS_TIMEOUT) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=LIVENESS_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict | None:
        try:
            return json.loads((self.results / ".edge-birads" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    # ------------------------------------------------------------ outcomes

    def result_records(self) -> list[dict]:
        """Results, in study sub-folders too (not the daemon's state, not temporary files)."""
        return [json.loads(p.read_text()) for p in record_files(self.results, ".json")]

    def failure_records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in record_files(self.failed, ".reason.json")]

    def inbox_names(self) -> list[str]:
        """What is waiting in the inbox (not the daemon's own lock dotfile)."""
        if not self.inbox.exists():
            return []
        return sorted(p.name for p in self.inbox.iterdir() if p.name != ".edge-birads-watch.lock")

    def outcome_count(self) -> int:
        count = 0
        for folder, suffix in ((self.results, ".json"), (self.failed, ".reason.json")):
            count += len(record_files(folder, suffix))
        return count

    def wait_all(self, expected: int, keep: frozenset[str] = frozenset()) -> None:
        """Until ``expected`` records exist and nothing but ``keep`` is left in the inbox."""
        wait_for(
            lambda: self.outcome_count() >= expected and set(self.inbox_names()) <= keep,
            what=f"{expected} records",
            daemon=self,
        )


def record_files(folder: Path, suffix: str) -> list[Path]:
    """``*suffix`` files under ``folder`` as a consumer sees them: dot-names (state, temporaries) skipped."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in files if name.endswith(suffix) and not name.startswith(".")]
    return sorted(found)


def check_exactly_once(daemon: Daemon, inputs: dict[str, bytes], bad: set[str], others: frozenset[str] = frozenset()) -> None:
    """Every input has exactly one record (a result, or a failure for the bad ones), none extra,
    its bytes are in done/ or failed/, and each content was classified by the model once."""
    results = daemon.result_records()
    failures = daemon.failure_records()
    by_name: dict[str, list[tuple[str, dict]]] = {}
    for kind, records in (("result", results), ("failure", failures)):
        for record in records:
            if record["file"] not in others:
                by_name.setdefault(record["file"], []).append((kind, record))
    missing = sorted(set(inputs) - set(by_name))
    assert not missing, f"{len(missing)} inputs have no record, e.g. {missing[:5]}"
    extra = sorted(set(by_name) - set(inputs))
    assert not extra, f"records for files never written: {extra[:5]}"
    twice = {name: [kind for kind, _ in recs] for name, recs in by_name.items() if len(recs) != 1}
    assert not twice, f"inputs with more than one record: {dict(list(twice.items())[:5])}"
    for name, data in inputs.items():
        kind, record = by_name[name][0]
        assert record["sha256"] == sha256(data), f"{name}: record is for other content (read half-written?)"
        if name in bad:
            assert kind == "failure" and record["error"], (name, record)
        else:
            assert kind == "result" and record["error"] is None, (name, record)
    # Each content ran through the model once; other names with it say duplicate_of.
    originals: dict[str, list[str]] = {}
    for record in results:
        if record["duplicate_of"] is None:
            originals.setdefault(record["sha256"], []).append(record["file"])
    assert all(len(names) == 1 for names in originals.values()), {k: v for k, v in originals.items() if len(v) > 1}
    for record in results:
        if record["duplicate_of"] is not None:
            assert originals[record["sha256"]] == [record["duplicate_of"]], record
    # The inputs themselves: moved, never deleted, never left behind.
    moved = [p for p in daemon.done.iterdir()] + [
        p for p in daemon.failed.iterdir() if not p.name.endswith(".reason.json") and p.name not in others and not p.is_dir()
    ]
    assert len(moved) == len(inputs), (len(moved), len(inputs))
    moved_hashes = sorted(sha256(p.read_bytes()) for p in moved if p.is_file() and not p.is_symlink())
    expected_hashes = sorted(sha256(data) for data in inputs.values())
    assert moved_hashes == expected_hashes
    leftovers = [str(p) for folder in (daemon.results, daemon.failed) for p in folder.rglob(".eb-tmp-*")]
    assert not leftovers, leftovers
