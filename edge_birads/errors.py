"""The one exception type the runtime raises for a bad input file.

Everything that can go wrong with a user's file (unreadable, truncated, not
a mammogram, too large) becomes an :class:`InputError`, so the CLI, the
daemon and the fuzzer can tell "this file is bad" (report it, carry on)
from "this program has a bug" (crash loudly).
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file that cannot be classified, with a one-line reason."""

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        # Newlines in a reason or a file name would break the one-line contract.
        self.reason = " ".join(str(reason).split())
        self.path = None if path is None else str(path)
        super().__init__(self.reason)

    def with_path(self, path: str | Path) -> "InputError":
        """Return the same error naming ``path`` (decoders do not know it)."""
        return InputError(self.reason, path)

    def __str__(self) -> str:
        if self.path is None:
            return self.reason
        return f"{printable_name(self.path)}: {self.reason}"


class ModelError(Exception):
    """The model file or its card is missing, corrupt or inconsistent."""


def printable_name(path: str | Path) -> str:
    """A file name safe for one line of output (newlines and tabs escaped)."""
    text = str(path)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
