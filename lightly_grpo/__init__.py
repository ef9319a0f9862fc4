"""lightly-grpo: GRPO-RM post-training for backbones pretrained with lightly."""

from __future__ import annotations

__version__ = "0.1.0"
