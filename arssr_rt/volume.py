"""The in-memory volume every reader produces and every writer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A validated 3-D scalar image.

    ``data`` is float32 in array order (i, j, k) with any scl_slope/inter applied;
    ``affine`` maps voxel indices to world mm (nibabel/RAS+ convention); ``header`` is the
    source NIfTI header (codes and units are copied from it on write) or None for other
    formats; ``source_dtype`` is the on-disk type the output follows by default.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    source_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    source_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """What messages call it: the file, else ``meta["name"]`` (the Python API's ``tensor (channel 2)``)."""
        return str(self.source_path) if self.source_path is not None else str(self.meta.get("name", "input"))
