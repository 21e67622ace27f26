"""Crash-safe file operations for the watch daemon.

A result is only "written" once it survives a power cut: the bytes go to a
temporary file that is fsynced, renamed over the final name (atomic on POSIX)
and the folder itself is fsynced so the rename is on disk too. Readers of the
results folder therefore see either no file or a complete one, never half a
JSON document. Temporary names start with ``.eb-tmp-`` so that consumers
(which skip dotfiles) never pick them up and a restart can sweep leftovers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".eb-tmp-"
# Longest input name used verbatim in derived names; longer ones are shortened
# so "<name>.<hash>.<n>.reason.json" stays under the usual 255-byte limit.
MAX_BASE_BYTES = 180


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or unlink inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, record: dict, durable: bool = True) -> None:
    """Replace ``path`` with ``record`` as JSON so readers never see a partial file.

    ``durable=False`` skips the fsyncs: still atomic for readers, but may be
    lost in a power cut (fine for a heartbeat, not for a result).
    """
    data = (json.dumps(record, ensure_ascii=True, indent=1, sort_keys=False) + "\n").encode("ascii")
    write_bytes_atomic(path, (data,), durable=durable)


def write_bytes_atomic(path: Path, chunks, durable: bool = True, tmp: Path | None = None) -> None:
    """Write ``chunks`` (bytes) to a temporary file, fsync, rename over ``path``, fsync the folder.

    ``tmp`` (default ``.eb-tmp-<pid>-<name>`` beside ``path``) must be in the same folder; a writer whose
    temporaries must survive another process's sweep of ``.eb-tmp-*`` names its own.
    """
    tmp = tmp or path.parent / f"{TMP_PREFIX}{os.getpid()}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for data in chunks:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or not one of ours."""
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def move_no_replace(source: Path, target: Path, durable: bool = False) -> None:
    """Rename ``source`` to ``target`` (same filesystem), never replacing a file.

    The caller picks a ``target`` that does not exist; rename would silently
    replace it, and replacing a file in done/ would lose an input. The daemon
    moves an input only after its record is durable, so it does not need the
    move itself to be durable: a move lost in a power cut leaves the input in
    the inbox, where the record is found again on restart.
    """
    if os.path.lexists(target):
        raise FileExistsError(f"refusing to replace {target}")
    os.rename(source, target)
    if durable:
        fsync_dir(target.parent)
        if source.parent != target.parent:
            fsync_dir(source.parent)


def safe_base(name: str, sha256: str | None) -> str:
    """``name`` itself, or a shortened form when it is too long for derived names."""
    encoded = os.fsencode(name)
    if len(encoded) <= MAX_BASE_BYTES:
        return name
    tag = (sha256 or "unhashed")[:8]
    return os.fsdecode(encoded[: MAX_BASE_BYTES - 10]) + "~" + tag


def slot_names(name: str, sha256: str | None) -> Iterator[str]:
    """Candidate names for records of one input, in a fixed order.

    The first is the input's own name; when it is taken (another file of the
    same name was seen before), the content hash is appended, then a counter.
    Because the order is fixed, a restarted daemon finds its own earlier
    record by walking the same sequence.
    """
    base = safe_base(name, sha256)
    yield base
    tag = (sha256 or "unhashed")[:12]
    yield f"{base}.{tag}"
    counter = 1
    while True:
        yield f"{base}.{tag}.{counter}"
        counter += 1


def free_name(folder: Path, name: str, sha256: str | None) -> Path:
    """The first slot name not present in ``folder``."""
    for slot in slot_names(name, sha256):
        candidate = folder / slot
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable: slot_names is infinite")


def sweep_temporaries(folder: Path) -> int:
    """Remove temporary files a killed process left behind; return how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            _unlink_quietly(Path(entry.path))
            removed += 1
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
