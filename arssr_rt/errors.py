"""Typed, one-line errors a user can cause; the CLI turns them into exit codes."""

from __future__ import annotations


def printable(text: object) -> str:
    """``text`` with every newline or other control character (a hostile file name, a NUL quoted
    from a broken file) shown escaped, so a message stays on its one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's exception text for a one-line message: whitespace runs (newlines too) become one
    space, other unprintable characters are escaped (``printable``)."""
    return printable(" ".join(str(exc).split()) or type(exc).__name__)[:limit]


class ArssrError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""

    exit_code = 2


class InputError(ArssrError):
    """The input volume or an argument is invalid; nothing was written."""


class InputTooLargeError(InputError):
    """The header's shape is over the voxel limit (checked before the data is read)."""


class OutputError(ArssrError):
    """The output cannot be written safely (exists, missing folder, size limit)."""


class ModelError(ArssrError):
    """A model bundle is missing, corrupt or does not match its declared contract."""


class BackendError(ArssrError):
    """An inference backend cannot run here (missing GPU, library, or engine mismatch)."""


class MissingExtraError(ArssrError):
    """An optional dependency is not installed; the message names the pip command."""

    exit_code = 3
