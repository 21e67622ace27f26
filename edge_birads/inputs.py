"""Expanding the paths a user gives into the files to classify."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edge_birads.decode import is_candidate_image
from edge_birads.errors import printable_name


def iter_input_files(paths: list[str], recursive: bool = False) -> Iterator[Path]:
    """Yield files in a stable order: explicit files as given, folders sorted.

    A file named explicitly is always tried (whatever its suffix: DICOMs often
    have none). Inside folders only candidate image names are taken, hidden
    files are skipped, and symbolic links to folders are not followed, so a
    link loop cannot make the walk endless. A path that does not exist is
    yielded as is, so it gets its own error line.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from _walk_folder(path, recursive)
        else:
            yield path


def _walk_folder(folder: Path, recursive: bool) -> Iterator[Path]:
    """Files of one folder, then (with ``recursive``) its sub-folders, names sorted.

    Anything named like an image that is not a regular file (a symlink loop,
    a dangling link, a pipe, or a folder called ``scan.png`` when not
    descending) is yielded too, so it gets its own error line instead of
    vanishing silently.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        yield folder  # unreadable folder: read_file reports why
        return
    subfolders = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        candidate = Path(entry.path)
        try:
            is_real_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_real_folder = False
        if recursive and is_real_folder:
            subfolders.append(candidate)
        elif is_candidate_image(candidate) and (candidate.suffix or _is_file(entry)):
            yield candidate
    for sub in subfolders:
        yield from _walk_folder(sub, recursive)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def no_images_message(paths: list[str] | tuple[str, ...], recursive: bool) -> str:
    """Why nothing was found, and the fix when it is only a missing -r."""
    message = "no image files found in " + ", ".join(map(printable_name, paths))
    folders = [raw for raw in paths if Path(raw).is_dir()]
    if not recursive and folders and next(iter_input_files(folders, recursive=True), None) is not None:
        message += " (there are images in sub-folders: add -r to read them)"
    return message
