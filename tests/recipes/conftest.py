from __future__ import annotations

from tests.data.conftest import fashion_mnist

__all__ = ["fashion_mnist"]
