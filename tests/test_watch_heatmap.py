"""`watch` with a heatmap folder: one lesion-map picture per classified image, of the very record it filed,
across crashes, restarts, re-sends and worker processes (a real daemon process, real CBIS-DDSM DICOMs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from watch_support import Daemon, check_exactly_once, png_bytes, sha256, wait_for, write_atomically

from edge_birads.classifier import Classifier
from edge_birads.heatmap import caption_for, render


def square_png() -> bytes:
    """A 400x300 (rows x cols) dark image with one bright square: a non-square geometry to keep."""
    image = np.full((400, 300), 20, np.uint8)
    image[310:370, 10:60] = 250
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def expected_picture(model: Path, path: Path, record: dict) -> np.ndarray:
    """What the picture of ``record`` must be: the map of the image at ``path``, captioned from the record."""
    classifier = Classifier(model)
    _, lesion_map = classifier.explain_file(path)
    return render(lesion_map, caption_for(record, classifier.card))


def pictures(folder: Path) -> dict[str, np.ndarray]:
    if not folder.exists():
        return {}
    return {p.name: cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(folder.iterdir())}


def records_by_file(daemon: Daemon) -> dict[str, dict]:
    return {record["file"]: record for record in daemon.result_records()}


def test_the_daemon_draws_the_filed_result_of_a_real_dicom_and_a_png_and_nothing_for_a_bad_file(map_model, cbis_dicoms, tmp_path):
    import pydicom

    dicom = cbis_dicoms[0]
    maps = tmp_path / "maps"
    conf = tmp_path / "watch.conf"
    conf.write_text(f"[watch]\nmodel = {map_model}\nheatmap = {maps}\n")  # the setting as an IT person writes it
    daemon = Daemon(tmp_path, extra=("--config", str(conf)))
    inputs = {"study/1-130.dcm": dicom.read_bytes(), "square.png": square_png(), "bad.png": b"not a PNG at all"}
    (daemon.inbox / "study").mkdir()
    for name, data in inputs.items():
        write_atomically(daemon.inbox / Path(name).parent, Path(name).name, data)
    daemon.start()
    daemon.wait_all(3)
    assert daemon.stop() == 0
    records = records_by_file(daemon)
    assert sorted(records) == ["square.png", "study/1-130.dcm"] and all(r["error"] is None for r in records.values())
    assert [r["file"] for r in daemon.failure_records()] == ["bad.png"]
    assert sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file()) == [
        "square.png.heatmap.png", "study/1-130.dcm.heatmap.png"
    ], "one picture per classified image, named after its record; none for the bad file"

    ds = pydicom.dcmread(dicom, stop_before_pixels=True)
    for name, source, (rows, cols) in (
        ("study/1-130.dcm", dicom, (int(ds.Rows), int(ds.Columns))),
        ("square.png", None, (400, 300)),
    ):
        picture = cv2.imread(str(maps / f"{name}.heatmap.png"), cv2.IMREAD_COLOR)
        assert picture is not None, name
        scale = min(1.0, 1024 / max(rows, cols))
        image_rows, image_cols = round(rows * scale), round(cols * scale)
        assert picture.shape[1] == image_cols and picture.shape[0] > image_rows, "the original geometry, caption below"
        assert abs(image_rows / image_cols - rows / cols) < 0.01
        if source is None:
            source = tmp_path / "square.png"
            source.write_bytes(inputs["square.png"])
        record = records[name]
        # The picture is exactly the filed record's: its map, its caption (file, decision, score).
        assert np.array_equal(picture, expected_picture(map_model, source, record)), name
        other = dict(record, suspicion_score=record["suspicion_score"] + 0.01)
        assert not np.array_equal(picture, expected_picture(map_model, source, other)), "the caption shows the score"
    assert str(ds.PatientID) not in " ".join(p.name for p in maps.rglob("*")), "no patient identifier in a name"
    assert "heatmaps to" in daemon.log_text() and "Traceback" not in daemon.log_text()


def test_a_model_without_a_lesion_map_is_refused_in_one_line_before_anything_is_made(tmp_path):
    daemon = Daemon(tmp_path, extra=("--heatmap", str(tmp_path / "maps")))
    (daemon.inbox / "a.png").write_bytes(png_bytes(1))
    run = daemon.run_foreground()
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.endswith("error: model default has no lesion map: heatmap (--heatmap) needs a model that outputs one"), line
    assert not (tmp_path / "maps").exists() and not daemon.results.exists()
    assert daemon.inbox_names() == ["a.png"]


@pytest.mark.parametrize(
    ("window", "kill_on"),
    [
        # The record is durable, the picture's temporary file is being written: no picture yet.
        pytest.param("record, no picture", r"/maps/\.eb-tmp-[0-9]+-.*heatmap\.png$", id="after-record"),
        # The same, and a power cut lost the content index entry (not fsynced): the record is found by its slot.
        pytest.param("record, no picture, no index", r"/maps/\.eb-tmp-[0-9]+-.*heatmap\.png$", id="after-record-index-lost"),
        # The picture is renamed into place (its folder's fsync): the input not yet moved to done/.
        pytest.param("picture, not filed", r"/maps$", id="after-picture"),
    ],
)
def test_a_kill_around_the_picture_leaves_exactly_one_after_restart_and_a_resend(map_model, tmp_path, window, kill_on):
    maps = tmp_path / "maps"
    daemon = Daemon(tmp_path, extra=("--model", str(map_model), "--heatmap", str(maps)), kill_on_fsync=kill_on)
    inputs = {"square.png": square_png()}
    write_atomically(daemon.inbox, "square.png", inputs["square.png"])
    daemon.start()
    daemon.proc.wait(timeout=120)
    assert (daemon.control / "killed").exists(), daemon.log_text()
    assert len(daemon.result_records()) == 1, "killed after the record was durable"
    drawn = [p.name for p in maps.iterdir() if not p.name.startswith(".")]
    assert drawn == ([] if window.startswith("record") else ["square.png.heatmap.png"])
    if window.endswith("no index"):
        (daemon.results / ".edge-birads" / "content" / f"{sha256(inputs['square.png'])}.json").unlink()
    before = {p.name: p.stat().st_ino for p in maps.iterdir() if not p.name.startswith(".")}
    daemon.start()
    wait_for(lambda: (daemon.done / "square.png").exists(), what="the resumed file filed", daemon=daemon)
    assert [p.name for p in maps.iterdir()] == ["square.png.heatmap.png"], "its picture, before the input was filed"
    # The same name and content sent again: already reported, no second picture.
    write_atomically(daemon.inbox, "square.png", inputs["square.png"])
    daemon.wait_all(1)
    assert daemon.stop() == 0
    index_lost = window.endswith("no index")
    resumed = "result square.png.json was written by an earlier run" if index_lost else "already reported by an earlier run"
    assert f"square.png: {resumed}" in daemon.log_text().split("--- start 1")[1], "resumed from the record"
    assert daemon.log_text().count("square.png: already reported by an earlier run") == 1 + (not index_lost), "the re-send"
    assert len(daemon.result_records()) == 1, "one record for one image"
    assert sorted(p.read_bytes() == inputs["square.png"] for p in daemon.done.iterdir()) == [True, True], "both sends filed"
    files = [p for p in maps.iterdir()]
    assert [p.name for p in files] == ["square.png.heatmap.png"], "exactly one picture, no temporary left"
    if before:
        assert files[0].stat().st_ino == before["square.png.heatmap.png"], "a picture already there is kept"
    source = tmp_path / "source.png"
    source.write_bytes(inputs["square.png"])
    (record,) = daemon.result_records()
    assert np.array_equal(cv2.imread(str(files[0]), cv2.IMREAD_COLOR), expected_picture(map_model, source, record))


def test_two_jobs_draw_the_same_pictures_as_one(map_model, cbis_dicoms, tmp_path):
    inputs = {"1-130.dcm": cbis_dicoms[0].read_bytes(), "bad.png": b"no image"}
    inputs.update({f"in-{i}.png": png_bytes(100 + i, size=96 + 16 * i) for i in range(5)})
    drawn = {}
    for jobs in (1, 2):
        root = tmp_path / f"jobs{jobs}"
        daemon = Daemon(root, extra=("--model", str(map_model), "--heatmap", str(root / "maps"), "--jobs", str(jobs)))
        for name, data in inputs.items():
            write_atomically(daemon.inbox, name, data)
        daemon.start()
        daemon.wait_all(len(inputs))
        assert daemon.stop() == 0
        check_exactly_once(daemon, inputs, bad={"bad.png"})
        drawn[jobs] = {p.name: p.read_bytes() for p in (root / "maps").iterdir()}
        scores = {json.dumps(r["suspicion_score"]) for r in daemon.result_records()}
        assert len(scores) > 1, "the images differ in score, so a picture drawn for the wrong record would show"
    assert sorted(drawn[1]) == sorted(f"{name}.heatmap.png" for name in inputs if name != "bad.png")
    assert drawn[2] == drawn[1]


def test_the_heatmap_setting_in_the_config_file_and_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from edge_birads.cli import cli
    from edge_birads.watch.config import ConfigError, build_config, output_folders

    conf = tmp_path / "watch.conf"
    conf.write_text("[watch]\ninbox = /srv/in\nresults = /srv/out\nheatmap = /srv/out\n")
    config = build_config({}, conf)
    assert config.heatmap == Path("/srv/out"), "beside the records is allowed"
    assert build_config({"heatmap": "/srv/maps"}, conf).heatmap == Path("/srv/maps"), "the command line wins"
    assert ("heatmap", Path("/srv/maps")) in output_folders(build_config({"heatmap": "/srv/maps"}, conf))
    assert build_config({"inbox": "/a", "results": "/b"}).heatmap is None, "none unless asked"
    refused = (("/srv/in", "inbox"), ("/srv/done/maps", "done"), ("/srv/failed", "failed"), ("/srv/out/.edge-birads", "state"))
    for folder, label in refused:
        with pytest.raises(ConfigError) as info:
            build_config({"heatmap": folder}, conf)
        assert str(info.value) == f"the heatmap folder {folder} must not be the {label} folder or inside it"
    help_text = " ".join(CliRunner().invoke(cli, ["watch", "--help"]).output.split())
    assert "--heatmap DIRECTORY Also write a PNG per classified image into this folder (config: heatmap)" in help_text
