"""Old name of :mod:`lightly_grpo.index.tiled` (the compiled CPU search backend).

Every attribute is read from and written to :mod:`lightly_grpo.index.tiled`, so settings
assigned through the old name (``tiled_search.DEFAULT_SYMMETRIC_MEMORY_BYTES = 0``) reach the
code that reads them.

Examples:
    >>> from lightly_grpo.index import tiled
    >>> from lightly_grpo.tiled_search import tiled_knn_chunks
    >>> tiled_knn_chunks is tiled.tiled_knn_chunks
    True
"""

from __future__ import annotations

import sys
import types
from typing import Any

from lightly_grpo.index import tiled as _tiled


class _Alias(types.ModuleType):
    """A module whose public attributes live in :mod:`lightly_grpo.index.tiled`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_tiled, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__"):  # The import system's own bookkeeping stays here.
            super().__setattr__(name, value)
        else:
            setattr(_tiled, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_tiled, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(_tiled)) | set(self.__dict__))


sys.modules[__name__].__class__ = _Alias


def __getattr__(name: str) -> Any:
    """Module-level lookup (PEP 562), which type checkers understand as "any attribute"."""
    return getattr(_tiled, name)
