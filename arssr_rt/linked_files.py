"""The one resolver for files that an input names inside itself.

A detached NRRD header's ``data file:`` and a bundle's ``model.json`` ``files`` entries are
written by whoever made the input, so they are data, not a licence to read other files: a
header naming ``/etc/passwd`` or ``../../secret`` would otherwise copy those bytes into an
output image (or a checksum report). Every such name must resolve (symlinks followed) to a
regular file inside the folder of the file that names it.

Volumes may opt in to an outside data file with ``ARSSR_RT_ALLOW_EXTERNAL_DATA=1`` (an
environment variable, so it reaches every command and batch worker alike); bundles never.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

ALLOW_EXTERNAL_ENV = "ARSSR_RT_ALLOW_EXTERNAL_DATA"


def external_data_allowed() -> bool:
    """True when the user opted in to data files outside the header's folder."""
    return os.environ.get(ALLOW_EXTERNAL_ENV, "").strip().lower() in {"1", "true", "yes"}


def resolve_linked(
    referrer: Path | str,
    name: str,
    *,
    what: str,
    allow_external: bool = False,
    error: type[Exception] = InputError,
) -> Path:
    """The real path of the file ``name`` that ``referrer`` refers to, or ``error``.

    ``name`` is taken relative to ``referrer``'s folder; the result must be a regular file
    (no device, FIFO or folder) and, unless ``allow_external``, lie inside that folder after
    every symlink is followed. ``what`` names the field in the message (e.g. "data file").
    """
    referrer = Path(referrer)
    text = str(name)
    if not text.strip() or "\x00" in text:
        raise error(f"{referrer}: {what} {text!r} is not a file name")
    base = referrer.parent.resolve()
    target = (base / text).resolve()  # an absolute name replaces base; .. and symlinks are followed
    if not allow_external and not target.is_relative_to(base):
        hint = (
            f"; copy it next to {referrer.name}, or set {ALLOW_EXTERNAL_ENV}=1 if you trust this file"
            if error is InputError
            else ""
        )
        raise error(f"{referrer}: {what} {text!r} resolves to {target}, outside {base}; refused{hint}")
    if not target.exists():
        raise error(f"{what} {target} is missing (named in {referrer})")
    if not target.is_file():
        raise error(f"{referrer}: {what} {text!r} is not a regular file ({target})")
    return target
