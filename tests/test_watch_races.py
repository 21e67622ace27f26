"""What the daemon files is exactly what it classified: re-sends during the record write, and kills
at fixed points of the claim -> classify -> record -> file sequence, each hit every time by a real
daemon process whose fsync pauses or kills it at a chosen file (tests/watch_support.HOOKED_RUNNER)."""

from __future__ import annotations

import json
import signal

import pytest
from watch_support import Daemon, check_exactly_once, png_bytes, sha256, wait_for, write_atomically

WINDOW_TIMEOUT = 30.0  # both files are done in a few seconds; on the landed code one never gets a result


def files_by_content(folder) -> dict[str, str]:
    """sha256 -> name of every input file in ``folder`` (records excluded)."""
    return {sha256(p.read_bytes()): p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".json")}


def resend_during_fsync(tmp_path, fsync_of: str, first: bytes, second: bytes) -> Daemon:
    """x.png (``first``) is processed; while the file matching ``fsync_of`` is fsynced, the sender re-sends
    x.png (``second``) by rename; the stopped daemon is returned once both have a record."""
    daemon = Daemon(tmp_path, pause_on_fsync=fsync_of)
    (daemon.inbox / "x.png").write_bytes(first)
    daemon.start()
    wait_for(lambda: (daemon.control / "paused").exists(), what=f"the pause in the fsync of {fsync_of}", daemon=daemon)
    write_atomically(daemon.inbox, "x.png", second)
    (daemon.control / "go").touch()
    wait_for(lambda: daemon.outcome_count() >= 2 and not daemon.inbox_names(), timeout=WINDOW_TIMEOUT, what="two records", daemon=daemon)
    assert daemon.stop() == 0
    return daemon


def test_a_file_resent_while_its_result_is_written_is_filed_and_classified_separately(tmp_path) -> None:
    """x.png (A) is classified; while its result is being fsynced, the sender re-sends x.png (B) by
    rename. A must be in done/ under A's result, and B classified on its own; nothing moved unread."""
    first, second = png_bytes(1), png_bytes(2)
    daemon = resend_during_fsync(tmp_path, r"-x\.png\.json$", first, second)
    results = {record["sha256"]: record for record in daemon.result_records()}
    assert set(results) == {sha256(first), sha256(second)} and all(r["file"] == "x.png" for r in results.values())
    done = files_by_content(daemon.done)
    assert set(done) == {sha256(first), sha256(second)}, "each content filed in done/ has its own result"
    assert done[sha256(first)] == "x.png" and done[sha256(second)] == f"x.{sha256(second)[:12]}.png", "the suffix stays last"
    assert all(r["duplicate_of"] is None for r in results.values())


def test_a_complete_file_sent_over_a_truncated_one_being_quarantined_is_classified(tmp_path) -> None:
    """The quarantine path's window: a truncated x.png is being set aside when the complete x.png
    replaces it. failed/ must hold the truncated bytes under its reason, and the complete image a result."""
    complete = png_bytes(3, size=128)
    truncated = complete[: len(complete) // 2]
    daemon = resend_during_fsync(tmp_path, r"-x\.png\.reason\.json$", truncated, complete)
    (failure,) = daemon.failure_records()
    assert failure["sha256"] == sha256(truncated) and "truncated PNG" in failure["error"]
    assert (daemon.failed / "x.png").read_bytes() == truncated, "failed/ holds exactly the bytes the reason is about"
    (result,) = daemon.result_records()
    assert result["sha256"] == sha256(complete) and result["error"] is None
    assert (daemon.done / "x.png").read_bytes() == complete


def test_a_file_changed_in_place_while_being_classified_goes_back_to_the_inbox(tmp_path) -> None:
    """A writer that breaks the hand-over rule: it still holds x.png open after the stable interval and
    writes more while the daemon classifies it. Nothing is recorded for the half; the file goes back to the
    inbox and is classified once complete, so the bytes in done/ are the bytes of the result."""
    half, rest = png_bytes(4, size=128)[:2000], png_bytes(4, size=128)[2000:]
    daemon = Daemon(tmp_path, stable=0.3, pause_in_classify=r"^x\.png$", extra=("--no-close-write",))
    with open(daemon.inbox / "x.png", "wb") as writer:
        writer.write(half)
        writer.flush()
        daemon.start()
        wait_for(lambda: (daemon.control / "paused").exists(), what="the pause in classify", daemon=daemon)
        assert not (daemon.inbox / "x.png").exists(), "claimed out of the inbox before it is read"
        writer.write(rest)  # through the descriptor it still holds: into the daemon's working folder
        writer.flush()
        (daemon.control / "go").touch()
        wait_for(lambda: "x.png: changed while being classified" in daemon.log_text(), what="the change noticed", daemon=daemon)
    daemon.wait_all(1)
    assert daemon.stop() == 0
    check_exactly_once(daemon, {"x.png": half + rest}, bad=set())
    assert daemon.status()["counts"]["requeued"] == 1


# The fsync to die at, whether the input is bad, where it is in the inbox, and whether the claim marker
# (not fsynced) is lost too, as a power cut can do: each a different point of the sequence for one file.
# (The claim itself, a rename with nothing written before it, has no fsync to die at: the SIGKILL test in
# test_watch_crash.py lands there among its random moments.)
KILL_POINTS = [
    pytest.param(r"-x\.png\.json$", False, "x.png", False, id="claimed-result-not-yet-written"),  # in STATE/work, classified
    pytest.param(r"/results$", False, "x.png", False, id="result-durable-not-yet-filed"),  # result in place, input not filed
    pytest.param(r"/failed$", True, "x.png", False, id="reason-durable-not-yet-filed"),  # reason in place, input not filed
    pytest.param(r"-x\.png\.json$", False, "study/x.png", True, id="claimed-in-a-study-folder-marker-lost"),
]


@pytest.mark.parametrize(("kill_on", "bad", "name", "lose_marker"), KILL_POINTS)
def test_a_kill_at_each_point_is_resumed_from_the_working_folder_once(tmp_path, kill_on: str, bad: bool, name: str, lose_marker: bool) -> None:
    data = b"not an image at all\n" if bad else png_bytes(21)
    daemon = Daemon(tmp_path, kill_on_fsync=kill_on)
    (daemon.inbox / name).parent.mkdir(parents=True, exist_ok=True)
    (daemon.inbox / name).write_bytes(data)
    (daemon.inbox / "y.png").write_bytes(png_bytes(22))  # waits behind it
    daemon.start()
    assert daemon.proc.wait(timeout=120) == -signal.SIGKILL
    marker = daemon.results / ".edge-birads" / "claim.json"
    work = daemon.results / ".edge-birads" / "work"
    assert (work / name).read_bytes() == data and not (daemon.inbox / name).exists(), "claimed, with its relative path"
    assert [claim["name"] for claim in json.loads(marker.read_text())["claims"]] == [name]
    if lose_marker:
        marker.unlink()
    restarted = Daemon(tmp_path)  # the plain daemon, same folders
    restarted.start()
    restarted.wait_all(2, keep=frozenset({"study"}))
    wait_for(lambda: not (daemon.inbox / "study").exists(), what="the study folder removed", daemon=restarted)
    assert restarted.stop() == 0
    if name == "x.png":
        check_exactly_once(restarted, {"x.png": data, "y.png": png_bytes(22)}, bad={"x.png"} if bad else set())
    else:
        (result,) = [r for r in restarted.result_records() if r["file"] == name]
        assert result["sha256"] == sha256(data) and (restarted.done / name).read_bytes() == data
        assert len(restarted.result_records()) == 2 and not restarted.failure_records()
        assert not list(restarted.results.rglob(".eb-tmp-*")), "the torn temporary in the study folder is swept"
    assert not list(work.iterdir()) and not marker.exists()
    assert f"previous run stopped while {'processing' if lose_marker else 'classifying'} {name}" in restarted.log_text()
