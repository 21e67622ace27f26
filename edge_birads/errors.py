"""The one exception type the runtime raises for a bad input file.

Everything that can go wrong with a user's file (unreadable, truncated, not
a mammogram, too large) becomes an :class:`InputError`, so the CLI, the
daemon and the fuzzer can tell "this file is bad" (report it, carry on)
from "this program has a bug" (crash loudly).
"""

from __future__ import annotations

import os
from pathlib import Path


class InputError(Exception):
    """A file that cannot be classified, with a one-line reason."""

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        # Newlines in a reason or a file name would break the one-line contract.
        self.reason = printable_name(" ".join(str(reason).split()))
        self.path = None if path is None else str(path)
        super().__init__(self.reason)

    def with_path(self, path: str | Path) -> "InputError":
        """Return the same error naming ``path`` (decoders do not know it)."""
        return InputError(self.reason, path)

    def __str__(self) -> str:
        if self.path is None:
            return self.reason
        return f"{printable_name(self.path)}: {self.reason}"


class InputTimeout(InputError):
    """Decoding and preprocessing one file took longer than the per-file limit."""


class ModelError(Exception):
    """The model file or its card is missing, corrupt or inconsistent."""


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable_name(path: str | Path) -> str:
    """A file name safe for one line of UTF-8 output.

    Backslash, newline, CR and tab get their usual escapes; other control
    characters (terminal escapes included) and the Unicode line separators
    become \\xNN / \\uNNNN; bytes that are not UTF-8 (kept by Python as
    lone surrogates) become \\xNN, since printing a lone surrogate fails.
    """
    out = []
    for char in os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path):
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
