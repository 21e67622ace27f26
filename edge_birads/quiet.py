"""Catching what C decoders print on stderr, so it can be judged instead of shown.

libjpeg, libpng and libtiff (through OpenCV) and some DICOM codecs write
their complaints straight to file descriptor 2. Shown as they are, they break
the promise of one line per bad file; ignored, they hide the only sign that a
JPEG was damaged (libjpeg decodes a corrupt stream into a partly grey image
and merely prints "Corrupt JPEG data"). So the decoder runs with fd 2
pointed at a temporary file and the caller decides what the text means.

fd 2 is shared by the whole process: another thread printing during a decode
would be captured too. The classify CLI is single-threaded; the watch daemon
should decode on its main thread (it does, for the time limit, anyway).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Yield a list that holds, after the block, the text written to fd 2 during it."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (closed, or a pythonw-like host): decode as is
        yield said
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read(4096).decode("utf-8", "replace"))
