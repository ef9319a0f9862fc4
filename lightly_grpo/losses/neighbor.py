"""GRPORMNeighborLoss: unlabeled GRPO-RM as a drop-in replacement for lightly's ``NTXentLoss``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import Tensor, nn

from lightly_grpo.losses.grpo import (
    DEFAULT_CLIP_EPS,
    GRPORMLoss,
    check_estimator,
    estimator_weights,
    sample_draws,
)
from lightly_grpo.losses.policy import DEFAULT_TEMPERATURE
from lightly_grpo.output_sets.neighbors import DEFAULT_NUM_NEIGHBORS, in_batch_candidates
from lightly_grpo.rewards import (
    DEFAULT_NEIGHBOR_WEIGHT,
    DEFAULT_UNIFORMITY_WEIGHT,
    RewardInputs,
    neighbor_reward,
)
from lightly_grpo.validation import check_finite

__all__ = ["GRPORMNeighborLoss"]


class GRPORMNeighborLoss(nn.Module):
    """GRPO-RM on two views, called like ``NTXentLoss`` as ``criterion(out0, out1)``.

    Every one of the 2B views is a query whose group is the other 2B - 1 views of the batch. The
    other view of the same image is the correct output (reward 1); a candidate that would be
    among the query's ``num_neighbors`` nearest neighbours in a memory bank of recent embeddings
    is a *neighbour* (reward ``neighbor_weight``, spared the penalty); every other candidate gets
    ``-uniformity * pi_old``. Advantages are group-relative and wrong outputs never get a
    positive one. Without dataset indices the neighbours are judged against the bank: a
    candidate counts when its similarity to the query reaches the query's k-th largest
    similarity to the bank (the bank is lightly's ``MemoryBankModule``; until it holds
    ``num_neighbors`` entries nobody is a neighbour).

    Args:
        temperature: Policy temperature tau (logits = cosine / tau).
        neighbor_weight: Reward of a neighbour (0 turns neighbours off).
        uniformity: Weight of the -pi_old penalty on the other candidates.
        num_neighbors: k of the neighbour test.
        memory_bank_size: Entries of the bank (>= num_neighbors, or 0 for no neighbours).
        clip_eps: PPO clip range (acts only with old logits from earlier inner steps).
        gather_distributed: Fill the bank with the embeddings of every DDP rank.
        estimator: How each view's group of 2B - 1 candidates is weighted: ``"uniform"`` (each
            once), ``"sampled"`` (``num_draws`` draws with replacement from pi_old) or
            ``"expected"`` (pi_old itself); see ``docs/method.md`` §7.1.
        num_draws: The draws per view of ``"sampled"`` (>= 2); None otherwise.
        normalize_std: Divide advantages by the group's standard deviation (False: Dr. GRPO).

    Examples:
        >>> criterion = GRPORMNeighborLoss(memory_bank_size=512)
        >>> out0, out1 = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32)
        >>> loss = criterion(out0, out1)
        >>> loss.backward()
    """

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        neighbor_weight: float = DEFAULT_NEIGHBOR_WEIGHT,
        uniformity: float = DEFAULT_UNIFORMITY_WEIGHT,
        num_neighbors: int = DEFAULT_NUM_NEIGHBORS,
        memory_bank_size: int = 4096,
        clip_eps: float = DEFAULT_CLIP_EPS,
        gather_distributed: bool = False,
        estimator: str = "uniform",
        num_draws: int | None = None,
        normalize_std: bool = True,
    ) -> None:
        super().__init__()
        check_estimator(estimator)
        if (estimator == "sampled") != (num_draws is not None):
            raise ValueError(
                "num_draws (draws per view, >= 2) is needed by estimator='sampled' and only by "
                f"it, got estimator={estimator!r}, num_draws={num_draws!r}"
            )
        if num_draws is not None and (
            isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2
        ):
            raise ValueError(f"num_draws must be an integer >= 2, got {num_draws!r}")
        if not 0 < temperature < float("inf") or temperature < 1e-4:
            raise ValueError(f"temperature must be a finite number >= 1e-4, got {temperature}")
        if not 0 <= neighbor_weight < float("inf"):
            raise ValueError(f"neighbor_weight must be finite and >= 0, got {neighbor_weight}")
        if num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
        if memory_bank_size != 0 and memory_bank_size < num_neighbors:
            raise ValueError(
                f"memory_bank_size must be 0 or >= num_neighbors ({num_neighbors}), "
                f"got {memory_bank_size}"
            )
        self.temperature = float(temperature)
        self.neighbor_weight = float(neighbor_weight)
        self.num_neighbors = num_neighbors
        self.memory_bank_size = memory_bank_size
        self.reward = neighbor_reward(1.0, neighbor_weight, uniformity)
        self.grpo = GRPORMLoss(clip_eps=clip_eps, normalize_std=normalize_std)
        self.estimator = estimator
        self.num_draws = num_draws
        self.gather_distributed = gather_distributed
        self.memory_bank: MemoryBankModule | None = None  # built on the first call (needs D)
        self.filled = 0

    def config(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "neighbor_weight": self.neighbor_weight,
            "reward": self.reward.config(),
            "num_neighbors": self.num_neighbors,
            "memory_bank_size": self.memory_bank_size,
            "clip_eps": self.grpo.clip_eps,
            "estimator": self.estimator,
            "num_draws": self.num_draws,
            "normalize_std": self.grpo.normalize_std,
        }

    @torch.no_grad()
    def neighbor_mask(self, queries: Tensor, similarities: Tensor, columns: Tensor) -> Tensor:
        """Which candidates (R, R - 1) are among each query's k nearest neighbours in the bank."""
        if self.memory_bank is None or self.filled < self.num_neighbors:
            return torch.zeros_like(similarities, dtype=torch.bool)
        bank = self.memory_bank.bank[: self.filled].to(queries)
        kth = (queries @ bank.t()).topk(self.num_neighbors, dim=1).values[:, -1:]
        return similarities >= kth

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        """The loss of a batch of two views, each (B, D)."""
        if out0.ndim != 2 or out0.shape != out1.shape:
            raise ValueError(
                "out0 and out1 must be (batch, dim) views of the same images, got "
                f"{tuple(out0.shape)} and {tuple(out1.shape)}"
            )
        if not (out0.is_floating_point() and out1.is_floating_point()):
            raise ValueError(f"embeddings must be floating point, got {out0.dtype}, {out1.dtype}")
        check_finite({"out0": out0, "out1": out1})
        if self.memory_bank is not None and out0.shape[1] != self.memory_bank.bank.shape[1]:
            raise ValueError(
                f"embeddings have dimension {out0.shape[1]}, but the memory bank holds "
                f"{self.memory_bank.bank.shape[1]}-d embeddings of earlier batches"
            )
        batch = out0.shape[0]
        z = F.normalize(torch.cat([out0, out1]).float(), dim=1)
        columns = in_batch_candidates(2 * batch, z.device)  # raises for a batch of one view
        similarities = (z @ z.t()).gather(1, columns)
        images = torch.arange(batch, device=z.device).repeat(2)
        correct = images[columns] == images.unsqueeze(1)
        neighbor = self.neighbor_mask(z.detach(), similarities.detach(), columns) & ~correct
        if self.neighbor_weight == 0:
            neighbor = torch.zeros_like(neighbor)
        logits = similarities / self.temperature
        rewards = self.reward(
            RewardInputs(
                correct=correct,
                old_logits=logits.detach(),
                similarities=similarities.detach(),
                extras={"neighbor": neighbor},
                positive=neighbor,
            )
        )
        old = logits.detach()
        draws = sample_draws(old, self.num_draws) if self.num_draws is not None else None
        weights = estimator_weights(self.estimator, old, draws)
        loss = self.grpo(logits, rewards, correct=correct | neighbor, weights=weights)
        if self.training and self.memory_bank_size > 0:
            self._update_bank(z[:batch].detach())
        return loss

    @torch.no_grad()
    def _update_bank(self, embeddings: Tensor) -> None:
        if self.memory_bank is None:
            self.memory_bank = MemoryBankModule(
                size=(self.memory_bank_size, embeddings.shape[1]),
                gather_distributed=self.gather_distributed,
                feature_dim_first=False,
            ).to(embeddings.device)
        self.memory_bank(embeddings, update=True)
        self.filled = min(self.memory_bank_size, self.filled + len(embeddings))
