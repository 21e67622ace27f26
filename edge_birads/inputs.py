"""Expanding the paths a user gives into the files to classify."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edge_birads.decode import is_candidate_image


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
    if not recursive:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            yield folder
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            candidate = Path(entry.path)
            if entry.is_file() and is_candidate_image(candidate):
                yield candidate
        return
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            candidate = Path(root) / name
            if not name.startswith(".") and is_candidate_image(candidate):
                yield candidate
