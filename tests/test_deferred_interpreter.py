"""A deferred interpreter (issue 16): a one-file classify creates it after the image is decoded and the file's bytes
are freed, so the decoder's peak and the interpreter's are not added; the record's latency never includes it."""

from __future__ import annotations

import tracemalloc

import pytest
from click.testing import CliRunner

import edge_birads.classifier as classifier_module
from edge_birads.classifier import Classifier
from edge_birads.cli import cli


def test_the_interpreter_is_created_after_the_dicom_is_decoded_and_its_bytes_are_freed(cbis_dicoms, monkeypatch):
    path = cbis_dicoms[0]
    size = path.stat().st_size
    assert size > 5_000_000  # the check below tells this file's bytes apart from noise
    seen = {}
    real = classifier_module.make_interpreter

    def spying(*args, **kwargs):
        seen["held"] = tracemalloc.get_traced_memory()[0] - seen["before"]
        return real(*args, **kwargs)

    assert Classifier().classify_file(cbis_dicoms[1]).ok  # pydicom's import (~10 MB of Python objects) out of the way
    monkeypatch.setattr(classifier_module, "make_interpreter", spying)
    classifier = Classifier(load_interpreter=False)
    assert not classifier.loaded
    tracemalloc.start()
    try:
        seen["before"] = tracemalloc.get_traced_memory()[0]
        result = classifier.classify_file(path)
    finally:
        tracemalloc.stop()
    assert result.ok and classifier.loaded
    # Python-allocated memory alive when the interpreter is created: the model's small input tensor, not the file
    # (9.7 MB) nor any decoded plane (12 MB each).
    assert seen["held"] < size / 4, seen


def test_a_deferred_interpreter_classifies_as_an_eager_one(example_pngs):
    eager, deferred = Classifier(), Classifier(load_interpreter=False)
    for path in example_pngs:
        a, b = eager.classify_file(path), deferred.classify_file(path)
        assert (a.prediction, a.error) == (b.prediction, b.error)


def test_the_latency_of_the_first_image_leaves_out_the_interpreters_creation(example_pngs, monkeypatch):
    clock = [1000.0]
    real = classifier_module.make_interpreter

    def slow(*args, **kwargs):
        clock[0] += 60.0  # a minute of the fake clock, spent creating the interpreter
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(classifier_module, "make_interpreter", slow)
    result = Classifier(load_interpreter=False).classify_file(example_pngs[0])
    assert result.ok and result.latency_ms == 0.0  # the fake clock moved only inside the interpreter's creation


@pytest.mark.parametrize("args, deferred", [([], True), (["--jobs", "2"], False)])
def test_classify_defers_the_interpreter_when_it_classifies_in_its_own_process(example_pngs, monkeypatch, args, deferred):
    made = []
    real = Classifier.__init__

    def recording(self, *a, **kw):
        made.append(kw.get("load_interpreter", True))
        real(self, *a, **kw)

    monkeypatch.setattr(Classifier, "__init__", recording)
    done = CliRunner().invoke(cli, ["classify", "--format", "jsonl", *args, *map(str, example_pngs)])
    assert done.exit_code == 0, done.output
    assert made[0] is (not deferred)
