"""The pretraining methods by name: the one list a new recipe is added to."""

from __future__ import annotations

from lightly_grpo.pretrain.base import PretrainMethod
from lightly_grpo.pretrain.dino import DINOMethod
from lightly_grpo.pretrain.simclr import SimCLRMethod

# One instance per recipe; a new recipe adds its line here (and its import above).
_METHODS: tuple[PretrainMethod, ...] = (SimCLRMethod(), DINOMethod())

#: Every known method by its ``name``.
PRETRAIN_METHODS: dict[str, PretrainMethod] = {method.name: method for method in _METHODS}


def get_pretrain_method(name: str) -> PretrainMethod:
    """The registered pretraining method called ``name``.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.

    Examples:
        >>> get_pretrain_method("simclr").name
        'simclr'
    """
    try:
        return PRETRAIN_METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown pretraining method {name!r}; known: {', '.join(sorted(PRETRAIN_METHODS))}"
        ) from None


__all__ = ["PRETRAIN_METHODS", "get_pretrain_method"]
