"""Named classes that plain-dict configs (and so checkpoints and config files) can refer to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Maps names to classes; builds an instance from ``{"type": name, **kwargs}``.

    Args:
        kind: What is registered, for error messages ("reward", "output set").

    Examples:
        >>> shapes = Registry[object]("shape")
        >>> @shapes.register("square")
        ... class Square:
        ...     def __init__(self, side: float = 1.0) -> None:
        ...         self.side = side
        >>> shapes.build({"type": "square", "side": 2.0}).side
        2.0
        >>> Square.type_name
        'square'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: registers the class under ``name`` and sets its ``type_name``."""

        def decorate(cls: C) -> C:
            self._classes[name] = cls
            cls.type_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def build(self, config: dict[str, Any]) -> T:
        """An instance from ``{"type": name, **constructor_arguments}``; ValueError otherwise."""
        if not isinstance(config, dict) or "type" not in config:
            raise ValueError(f"a {self.kind} config is a dict with a 'type' key, got {config!r}")
        name = config["type"]
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} type {name!r}; known: {self.names()}")
        kwargs = {k: v for k, v in config.items() if k != "type"}
        return self._classes[name](**kwargs)
