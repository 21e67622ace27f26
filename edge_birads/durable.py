"""Crash-safe file operations for the watch daemon.

A result is only "written" once it survives a power cut: the bytes go to a
temporary file that is fsynced, renamed over the final name (atomic on POSIX)
and the folder itself is fsynced so the rename is on disk too. Readers of the
results folder therefore see either no file or a complete one, never half a
JSON document. Temporary names start with ``.eb-tmp-`` so that consumers
(which skip dotfiles) never pick them up and a restart can sweep leftovers.
"""

from __future__ import annotations

import errno
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


def _renameat2():
    """glibc's renameat2, or None (old libc, another OS)."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` atomically, failing with FileExistsError if ``target`` exists.

    ``rename`` silently replaces its target, so "check, then rename" can lose a
    file another process puts at ``target`` in between. Linux's
    ``renameat2(RENAME_NOREPLACE)`` makes the check and the rename one step;
    where it is missing (old kernel or libc, a file system without it) a hard
    link does the same for files, and only folders fall back to check-then-rename.
    """
    if _RENAMEAT2 is not None:
        import ctypes

        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise _os_error(code, source, target)
    if not os.path.isdir(source) or os.path.islink(source):
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(source)
            return
    if os.path.lexists(target):
        raise _os_error(errno.EEXIST, source, target)
    os.rename(source, target)


def _os_error(code: int, source: Path, target: Path) -> OSError:
    exc_type = FileExistsError if code == errno.EEXIST else FileNotFoundError if code == errno.ENOENT else OSError
    if exc_type is OSError and code in (errno.EACCES, errno.EPERM):
        exc_type = PermissionError
    return exc_type(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


def move_no_replace(source: Path, target: Path, durable: bool = False) -> None:
    """Rename ``source`` to ``target`` (same filesystem), never replacing a file.

    Replacing a file in done/ would lose an input, so the move fails instead
    (:func:`rename_no_replace`). The daemon moves an input only after its
    record is durable, so it does not need the move itself to be durable: a
    move lost in a power cut leaves the input where it was, and the record is
    found again on restart.
    """
    rename_no_replace(source, target)
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
    same name was seen before), the content hash is added, then a counter,
    before an image suffix so that the name still opens as an image
    (``mdb003.png`` -> ``mdb003.33cc11ddd686.png``, ``mdb003.33cc11ddd686.1.png``).
    Because the order is fixed, a restarted daemon finds its own earlier
    record by walking the same sequence.
    """
    from edge_birads.decode import IMAGE_SUFFIXES

    base = safe_base(name, sha256)
    yield base
    stem, suffix = os.path.splitext(base)
    if suffix.lower() not in IMAGE_SUFFIXES or not stem:
        stem, suffix = base, ""
    tag = (sha256 or "unhashed")[:12]
    yield f"{stem}.{tag}{suffix}"
    counter = 1
    while True:
        yield f"{stem}.{tag}.{counter}{suffix}"
        counter += 1


def sweep_temporaries(folder: Path, recursive: bool = False) -> int:
    """Remove temporary files a killed process left behind (in sub-folders too if ``recursive``); return how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            _unlink_quietly(Path(entry.path))
            removed += 1
        elif recursive and not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            removed += sweep_temporaries(Path(entry.path), recursive=True)
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
