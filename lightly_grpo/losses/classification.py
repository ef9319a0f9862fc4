"""Drop-in GRPO-RM loss for labeled data, called like a pytorch-metric-learning proxy loss."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets.class_prototypes import ClassPrototypes


class GRPORMClassificationLoss(GRPORMPolicyLoss):
    """GRPO-RM with learnable class prototypes as the output set.

    The policy is ``softmax(<normalize(z), k_c> / temperature)`` over the classes; the correct
    output is the true class. Like pytorch-metric-learning's proxy losses (ProxyAnchor, ArcFace),
    the loss owns its proxies, so give its parameters to the optimizer (usually with a larger
    learning rate). With ``beta > 0`` pass ``ref_logits`` (the reference policy over all classes);
    the loss raises rather than silently dropping the KL.

    Args:
        num_classes: Number of classes.
        embedding_size: Dimension of the embeddings.
        **kwargs: Settings of :class:`~lightly_grpo.losses.policy.GRPORMPolicyLoss`
            (``temperature``, ``reward``, ``clip_eps``, ``beta``, ``group_size``, ``validate``,
            ``compile_math``); with ``group_size=G`` the G classes of a query are drawn without
            replacement from pi_old, always keeping the true class.

    Examples:
        >>> import torch
        >>> criterion = GRPORMClassificationLoss(num_classes=10, embedding_size=128)
        >>> embeddings = torch.randn(32, 128, requires_grad=True)
        >>> labels = torch.randint(0, 10, (32,))
        >>> loss = criterion(embeddings, labels)
        >>> loss.backward()
    """

    def __init__(self, num_classes: int, embedding_size: int, **kwargs: Any) -> None:
        super().__init__(ClassPrototypes(num_classes, embedding_size), **kwargs)
        # Checkpoints written before the output-set interface stored "prototypes.weight".
        self._register_load_state_dict_pre_hook(_rename_prototypes)

    @property
    def prototypes(self) -> ClassPrototypes:
        """The class prototypes (the output set)."""
        assert isinstance(self.output_set, ClassPrototypes)
        return self.output_set

    @property
    def num_classes(self) -> int:
        return self.prototypes.num_classes

    def config(self) -> dict[str, Any]:
        config = super().config()
        output_set = config.pop("output_set")
        return {
            "num_classes": output_set["num_classes"],
            "embedding_size": output_set["embedding_size"],
            **config,
        }

    def init_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        """Initialises each prototype to the normalised class mean of ``embeddings``."""
        self.prototypes.init_from_embeddings(embeddings, labels)

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
        group_index: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            embeddings: Embeddings of shape (B, embedding_size) (normalised inside).
            labels: Integer class labels of shape (B,).
            old_logits: Old-policy logits over all classes (B, num_classes), e.g. from
                ``logits(...)`` at the first of several inner steps; None for one step.
            ref_logits: Reference-policy logits over all classes, needed when beta > 0.
            group_index: A sampled group to reuse across inner steps (see the base class).
        """
        return super().forward(embeddings, labels, old_logits, ref_logits, group_index)


def _rename_prototypes(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    old = f"{prefix}prototypes.weight"
    if old in state_dict:
        state_dict[f"{prefix}output_set.weight"] = state_dict.pop(old)
    ref = f"{prefix}output_set.reference_keys"
    if ref not in state_dict and f"{prefix}output_set.weight" in state_dict:
        state_dict[ref] = state_dict[f"{prefix}output_set.weight"].detach().clone()
