"""The daemon's building blocks in-process: settings, record slots, completeness rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_birads.cli import cli
from edge_birads.durable import TMP_PREFIX, sweep_temporaries, write_json_atomic
from edge_birads.watch.config import ConfigError, build_config
from edge_birads.watch.filing import file_into
from edge_birads.watch.inbox import InboxTracker, is_ignored
from edge_birads.watch.log import EventLog
from edge_birads.watch.state import ClaimMarker, ContentIndex, find_record


def test_config_file_values_are_typed_and_command_line_wins(tmp_path: Path) -> None:
    conf = tmp_path / "watch.conf"
    conf.write_text("[watch]\ninbox = /srv/in\nresults = /srv/out\npoll = yes\nstable_seconds = 7.5\nthreads = 2\n")
    config = build_config({"stable_seconds": 1.0, "inbox": None}, conf)
    assert config.inbox == Path("/srv/in") and config.results == Path("/srv/out")
    assert config.poll is True and config.threads == 2 and config.stable_seconds == 1.0
    assert config.done == Path("/srv/done") and config.failed == Path("/srv/failed"), "defaults beside the inbox"
    assert config.state == Path("/srv/out/.edge-birads") and config.scan_interval == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[watch]\ninbox = /a\nresluts = /b\n", "unknown setting 'resluts'"),
        ("[watch]\ninbox = /a\nresults = /b\nthreads = many\n", "threads = 'many' is not a valid int"),
        ("[other]\ninbox = /a\n", "has no [watch] section"),
        ("[watch]\ninbox = /a\n", "no results folder"),
        ("[watch]\ninbox = /a\nresults = /a\n", "must not be the inbox itself"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "watch.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config({}, conf)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("stable_seconds", -1.0, "stable-seconds must be between 0 and 3600, not -1.0"),
        ("stable_seconds", 3601.0, "stable-seconds must be between 0 and 3600, not 3601.0"),
        ("stable_seconds", float("nan"), "stable-seconds must be between 0 and 3600, not nan"),
        ("scan_interval", 0.01, "scan-interval must be between 0.05 and 3600 seconds, not 0.01"),
        ("heartbeat_seconds", 0.0, "heartbeat-seconds must be between 0.1 and 3600, not 0.0"),
        ("heartbeat_seconds", 4000.0, "heartbeat-seconds must be between 0.1 and 3600, not 4000.0"),
        ("threads", 65, "threads must be between 1 and 64, not 65"),
        ("jobs", 0, "jobs must be between 1 and 64, not 0"),
        ("max_attempts", 0, "max-attempts must be between 1 and 1000, not 0"),
        ("max_attempts", 1001, "max-attempts must be between 1 and 1000, not 1001"),
        ("max_pixels", -3, "max-pixels must be at least 1, not -3"),
        ("max_file_mb", 0.0, "max-file-mb must be more than 0, not 0"),
        ("max_file_mb", 1e-7, "max-file-mb must be more than 0, not 0"),  # less than one byte
        ("time_limit", -2.0, "time-limit must be 0 (no limit) or more seconds, not -2"),
        ("time_limit", -0.5, "time-limit must be 0 (no limit) or more seconds, not -0.5"),
    ],
)
def test_each_setting_out_of_range_is_refused_with_its_own_message(setting: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"inbox": "/a", "results": "/b", setting: value})
    assert str(info.value) == message


def test_the_range_bounds_themselves_are_accepted() -> None:
    bounds = {"stable_seconds": 0.0, "scan_interval": 0.05, "heartbeat_seconds": 3600.0, "threads": 64, "jobs": 1, "max_attempts": 1000}
    config = build_config({"inbox": "/a", "results": "/b", **bounds, "max_pixels": 1, "max_file_mb": 1 / 2**20, "time_limit": 0.0})
    assert all(getattr(config, setting) == value for setting, value in bounds.items())
    assert (config.limits.max_pixels, config.limits.max_file_bytes, config.limits.max_seconds) == (1, 1, 0)


def test_watch_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["watch", str(tmp_path)])
    assert result.exit_code == 2
    assert "no results folder: give --results DIR" in result.output
    missing = CliRunner().invoke(
        cli, ["watch", str(tmp_path), "--results", str(tmp_path / "r"), "--config", str(tmp_path / "nope.conf")]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_missing_inbox_is_a_start_up_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["watch", str(tmp_path / "nope"), "--results", str(tmp_path / "r")])
    assert result.exit_code == 1


@pytest.mark.parametrize("name", [".hidden.png", "scan.dcm.part", "scan.DCM.TMP", "x.partial", "y.filepart"])
def test_in_flight_names_are_ignored(name: str) -> None:
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["scan.dcm", "1.2.840.113619.2.55", "image.png", "part.png"])
def test_final_names_are_not_ignored(name: str) -> None:
    assert not is_ignored(name)


def test_a_file_is_ready_after_the_stable_interval_or_when_closed_unchanged(tmp_path: Path) -> None:
    tracker = InboxTracker(tmp_path, stable_seconds=2.0, close_write=True)
    (tmp_path / "a.png").write_bytes(b"1234")
    (tmp_path / "b.png").write_bytes(b"1234")
    tracker.scan(now=100.0)
    assert tracker.ready(now=101.9) == []
    assert tracker.ready(now=102.0) == ["a.png", "b.png"]
    with open(tmp_path / "a.png", "ab") as handle:  # a writer appends: the clock restarts
        handle.write(b"5678")
    tracker.refresh(now=102.5)
    assert tracker.ready(now=104.4) == ["b.png"]
    tracker.closed("a.png", now=104.4)  # IN_CLOSE_WRITE and nothing changed since
    assert tracker.ready(now=104.4) == ["a.png", "b.png"]
    os.unlink(tmp_path / "b.png")
    tracker.refresh(now=105.0)
    assert list(tracker.pending) == ["a.png"]


def test_close_write_can_be_switched_off(tmp_path: Path) -> None:
    tracker = InboxTracker(tmp_path, stable_seconds=2.0, close_write=False)
    (tmp_path / "a.png").write_bytes(b"1234")
    tracker.closed("a.png", now=10.0)
    assert tracker.ready(now=11.0) == [] and tracker.ready(now=12.0) == ["a.png"]


def test_record_slots_are_found_again_by_name_and_content(tmp_path: Path) -> None:
    sha_a, sha_b = "a" * 64, "b" * 64
    first = find_record(tmp_path, "x.png", sha_a, ".json")
    assert first.found is None and first.free == tmp_path / "x.png.json"
    write_json_atomic(first.free, {"file": "x.png", "sha256": sha_a})
    other = find_record(tmp_path, "x.png", sha_b, ".json")  # the same name, other content: next slot
    assert other.found is None and other.free == tmp_path / f"x.{'b' * 12}.png.json"  # the image suffix stays last
    write_json_atomic(other.free, {"file": "x.png", "sha256": sha_b})
    again = find_record(tmp_path, "x.png", sha_a, ".json")
    assert again.found == tmp_path / "x.png.json" and again.record == {"file": "x.png", "sha256": sha_a}, "read once, handed back"
    assert find_record(tmp_path, "x.png", sha_b, ".json").found == other.free
    (tmp_path / "y").write_bytes(b"")
    (tmp_path / "y.bbbbbbbbbbbb").write_bytes(b"")
    (tmp_path / "incoming").write_bytes(b"y")  # an input filed under the first free slot, never over a file
    assert file_into(tmp_path / "incoming", tmp_path, "y", sha_b) == tmp_path / "y.bbbbbbbbbbbb.1"
    assert (tmp_path / "y.bbbbbbbbbbbb.1").read_bytes() == b"y" and (tmp_path / "y").read_bytes() == b""


def test_very_long_names_keep_derived_names_under_255_bytes(tmp_path: Path) -> None:
    name = "é" * 120 + ".dcm"  # 244 bytes in UTF-8
    slot = find_record(tmp_path, name, "c" * 64, ".reason.json").free
    assert len(os.fsencode(slot.name)) < 255
    write_json_atomic(slot, {"file": name, "sha256": "c" * 64})
    assert find_record(tmp_path, name, "c" * 64, ".reason.json").found == slot


def test_atomic_write_leaves_no_temporary_and_sweep_removes_torn_ones(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "r.json", {"file": "r.png", "n": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"file": "r.png", "n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    (tmp_path / f"{TMP_PREFIX}1-r.json").write_text('{"fi')
    assert sweep_temporaries(tmp_path) == 1 and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_content_index_lists_each_name_once(tmp_path: Path) -> None:
    index = ContentIndex(tmp_path)
    record = {"file": "a.png", "model_sha256": "m", "label": "BI-RADS 1"}
    index.add("d" * 64, "a.png", record)
    index.add("d" * 64, "b.png", {"file": "b.png"})
    index.add("d" * 64, "a.png", record)
    entry = index.get("d" * 64)
    assert entry["names"] == ["a.png", "b.png"] and entry["first"] == "a.png" and entry["record"] == record
    assert index.get("e" * 64) is None


def test_claim_marker_counts_deaths_on_the_same_content(tmp_path: Path) -> None:
    first = ClaimMarker(tmp_path)
    first.take("p.png")
    first.classifying("f" * 64)  # a run dies here
    second = ClaimMarker(tmp_path)
    second.take("p.png")  # resumed from the working folder, or claimed again after being put back
    assert second.attempts_before("f" * 64) == 1 and second.attempts_before("e" * 64) == 0
    second.classifying("f" * 64)
    second.uncount()  # this run stops for a reason that is not the file's
    assert ClaimMarker(tmp_path).records["p.png"].attempts == 1
    second.take("q.png")  # another file: its own count
    assert second.attempts_before("f" * 64) == 0
    second.classifying("e" * 64)  # with --jobs, several files are in flight at once
    assert {name: r.attempts for name, r in ClaimMarker(tmp_path).records.items()} == {"p.png": 1, "q.png": 1}
    second.uncount("q.png")  # only q.png's run is taken back (it changed while being classified)
    assert {name: r.attempts for name, r in ClaimMarker(tmp_path).records.items()} == {"p.png": 1, "q.png": 0}
    second.clear()  # q.png filed
    second.take("p.png")
    second.clear()  # p.png filed: nothing in flight
    assert ClaimMarker(tmp_path).records == {} and not (tmp_path / "claim.json").exists()
    assert second.work_path("s/x.png") == tmp_path / "work" / "s" / "x.png"


def test_claim_marker_reads_the_single_record_of_earlier_versions(tmp_path: Path) -> None:
    (tmp_path / "claim.json").write_text(json.dumps({"name": "p.png", "sha256": "f" * 64, "attempts": 2, "pid": 1}))
    marker = ClaimMarker(tmp_path)
    marker.take("p.png")
    assert marker.attempts_before("f" * 64) == 2


def test_log_lines_are_single_lines_with_journald_priorities(tmp_path: Path) -> None:
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    EventLog(journal=True, fd=fd).warning("bad\nname.png: reason")
    EventLog(journal=False, fd=fd).info("ok.png: fine")
    EventLog(journal=True, fd=fd).info("esc-\x1b[31m.png: a raw ESC, a C1 \x9b and a line separator \u2028")
    os.close(fd)
    lines = out.read_text().splitlines()
    assert lines[0] == "<4>bad\\nname.png: reason"
    assert lines[1].endswith("info: ok.png: fine") and len(lines) == 3
    assert lines[2] == "<6>esc-\\x1b[31m.png: a raw ESC, a C1 \\x9b and a line separator \\u2028"


def test_the_move_into_done_never_replaces_an_existing_file(tmp_path: Path) -> None:
    """Not just the name chooser: the move itself refuses a taken name, so an earlier input is never lost."""
    from edge_birads.durable import move_no_replace

    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    (inbox / "scan.png").write_bytes(b"the new image")
    (done / "scan.png").write_bytes(b"an image filed yesterday")
    with pytest.raises(FileExistsError):
        move_no_replace(inbox / "scan.png", done / "scan.png")
    assert (done / "scan.png").read_bytes() == b"an image filed yesterday"
    assert (inbox / "scan.png").read_bytes() == b"the new image"
    os.symlink("nowhere", done / "link.png")  # a dangling link holds its name too
    with pytest.raises(FileExistsError):
        move_no_replace(inbox / "scan.png", done / "link.png")
    move_no_replace(inbox / "scan.png", done / "scan.png.2", durable=True)
    assert (done / "scan.png.2").read_bytes() == b"the new image" and not (inbox / "scan.png").exists()
