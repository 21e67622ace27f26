"""Model integrity (issue 8): a damaged model or a card that does not fit it is refused in one line, exit 1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_birads.classifier import default_model_path
from edge_birads.cli import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def image(tmp_path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hostile_corpus as corpus

    path = tmp_path / "scan.png"
    path.write_bytes(corpus.encode(".png", corpus.breast_image()))
    return path


def copy_model(folder: Path, edit_card=None, edit_model=None) -> Path:
    """A copy of the bundled model and card in ``folder``, optionally edited."""
    model = folder / "model.tflite"
    data = bytearray(default_model_path().read_bytes())
    if edit_model:
        edit_model(data)
    model.write_bytes(bytes(data))
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    if edit_card:
        edit_card(card)
    (folder / "model.json").write_text(json.dumps(card))
    return model


def refused(model: Path, image: Path, *options: str) -> str:
    """Run classify in a real process; check the refusal is one line on stderr, nothing on stdout, exit 1."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "edge_birads", "classify", *options, "--model", str(model), str(image)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO: Created TensorFlow Lite")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def test_the_bundled_model_loads(image):
    assert CliRunner().invoke(cli, ["classify", str(image)]).exit_code == 0


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_one_flipped_byte_anywhere_in_the_model_is_refused(tmp_path, image, where):
    def flip(data: bytearray) -> None:
        data[int(len(data) * where)] ^= 0x20

    line = refused(copy_model(tmp_path, edit_model=flip), image)
    assert "has sha256" in line and "refusing to load it" in line


def test_a_card_for_another_model_is_refused(tmp_path, image):
    def other(card: dict) -> None:
        card["sha256"] = hashlib.sha256(b"another model").hexdigest()

    assert "does not belong to this card" in refused(copy_model(tmp_path, edit_card=other), image)


def test_a_card_with_the_wrong_labels_is_refused(tmp_path, image):
    def two_labels(card: dict) -> None:
        card["labels"] = card["labels"][:1] + [card["malignant_label"]]

    assert "are not 2 probabilities" in refused(copy_model(tmp_path, edit_card=two_labels), image)


def test_a_card_with_the_wrong_input_size_is_refused(tmp_path, image):
    def bigger(card: dict) -> None:
        card["preprocessing"]["height"] = card["preprocessing"]["width"] = 256

    model = copy_model(tmp_path, edit_card=bigger)
    assert "does not match its card" in refused(model, image)
    # The interpreter is created after the first image is decoded: neither a CSV header nor the record of a first
    # file that could not be read is printed ahead of the refusal.
    assert "does not match its card" in refused(model, image, "--format", "csv")
    bad = image.with_name("damaged.png")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for fmt in ("table", "jsonl", "csv"):
        assert "does not match its card" in refused(model, image, "--format", fmt, str(bad))
    assert "does not match its card" in refused(model, bad, "--format", "jsonl")  # no file decodes: still refused


def test_a_card_that_is_not_json_is_refused(tmp_path, image):
    model = copy_model(tmp_path)
    (tmp_path / "model.json").write_text('{"labels": ["a", "b"')
    assert "is not valid JSON" in refused(model, image)


def test_a_model_that_is_not_tflite_but_matches_its_card_is_refused(tmp_path, image):
    """The sha256 only proves the pair belongs together; a garbage 'model' must still fail cleanly."""
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not a flatbuffer at all" * 10)
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (tmp_path / "model.json").write_text(json.dumps(card))
    assert "cannot load model" in refused(model, image)
