"""Batch unpacking and the one embedding loop every part of the package uses.

lightly's loaders yield ``(images, labels, ...)`` where ``images`` is a tensor or, with a
multi-view transform such as ``SimCLRTransform``, a list of view tensors. Training concatenates
the views (:func:`unpack_batch`); embedding a dataset takes the first view (:func:`embed_loader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lightly_grpo.distributed import gather_shards, rank_shard

EmbedFn = Callable[[Tensor], Tensor]


def unpack_batch(
    batch: Any, require_labels: bool = True, views: str = "concat"
) -> tuple[Tensor, Tensor | None]:
    """Images and labels of a lightly-style batch.

    Args:
        batch: ``(images, labels, ...)``, ``(images,)`` or a bare image tensor; ``images`` may be
            a list of views.
        require_labels: Raise ValueError when the batch carries no labels.
        views: ``"concat"`` stacks all views along the batch (labels repeated to match), as a
            training step wants; ``"first"`` keeps the first view, as embedding a dataset wants.

    Returns:
        ``(images, labels)``; labels is None for an unlabeled batch (when allowed).

    Examples:
        >>> images, labels = unpack_batch(([torch.zeros(2, 1, 4, 4)] * 2, torch.tensor([0, 1])))
        >>> images.shape, labels.tolist()
        (torch.Size([4, 1, 4, 4]), [0, 1, 0, 1])
        >>> unpack_batch(torch.zeros(3, 1, 4, 4), require_labels=False)[1] is None
        True
    """
    if views not in ("concat", "first"):
        raise ValueError(f"views must be 'concat' or 'first', got {views!r}")
    if isinstance(batch, Tensor):
        images, labels = batch, None
    elif isinstance(batch, (tuple, list)) and len(batch) >= 1:
        images = batch[0]
        labels = batch[1] if len(batch) >= 2 else None
    else:
        raise ValueError(
            f"expected a batch (images, labels, ...) or an image tensor, got "
            f"{type(batch).__name__} of length "
            f"{len(batch) if isinstance(batch, (tuple, list)) else 'n/a'}"
        )
    if labels is None and require_labels:
        raise ValueError("this batch has no labels; expected (images, labels, ...)")
    if labels is not None and not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if isinstance(images, (tuple, list)):
        if len(images) == 0:
            raise ValueError("got an empty list of views")
        if views == "first":
            images = images[0]
        else:
            if labels is not None:
                labels = labels.repeat(len(images))
            images = torch.cat(list(images), dim=0)
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a tensor or a list of views, got {type(images).__name__}")
    if images.shape[0] == 0:
        raise ValueError(f"empty batch: images have shape {tuple(images.shape)}")
    return images, labels


def batch_items(batch: Any) -> Tensor:
    """The dataset indices of a ``(views, labels, indices)`` batch, as int64 (B,).

    Examples:
        >>> batch_items(([torch.zeros(2, 1, 4, 4)] * 2, torch.tensor([3, 4]), torch.tensor([7, 9])))
        tensor([7, 9])
    """
    items = batch[2] if isinstance(batch, (tuple, list)) and len(batch) >= 3 else None
    if items is None:
        raise ValueError(
            "this output set needs the dataset index of every image: batches must be "
            "(views, labels, indices); wrap the dataset in lightly_grpo.data.IndexedDataset"
        )
    items = torch.as_tensor(items) if not isinstance(items, Tensor) else items
    if items.dtype.is_floating_point or items.dtype == torch.bool or items.ndim != 1:
        raise ValueError(
            f"batch[2] must hold integer dataset indices of shape (B,), got {items.dtype} "
            f"{tuple(items.shape)} (lightly's LightlyDataset puts file names there: wrap the "
            "dataset in lightly_grpo.data.IndexedDataset)"
        )
    return items.long()


def backbone_features(backbone: nn.Module, head: nn.Module | None, images: Tensor) -> Tensor:
    """``head(flatten(backbone(images)))``: the one forward of a policy and its reference.

    Backbones such as lightly's examples' ``nn.Sequential(*resnet.children()[:-1])`` return
    (B, C, 1, 1); flattening first makes every backbone give (B, features).
    """
    features = backbone(images).flatten(start_dim=1)
    return features if head is None else head(features)


@torch.no_grad()
def embed_loader(
    embed: EmbedFn,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "embedding",
    max_items: int | None = None,
    require_labels: bool = True,
    normalize: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Embeds every batch of ``loader`` into (L2-normalised) float32 CPU embeddings.

    The caller is responsible for eval mode (see :func:`eval_mode`); the first view of a
    multi-view batch is used.

    Args:
        embed: Maps an image batch to (B, D) embeddings.
        loader: Batches in any format :func:`unpack_batch` accepts.
        device: Where to move the images (default: leave them where they are).
        progress: Show a tqdm bar.
        desc: The bar's label.
        max_items: Stop after this many items.
        require_labels: Raise on unlabeled batches; with False, labels are None when absent.
        normalize: L2-normalise each embedding (False keeps what ``embed`` returns, e.g. for a
            linear head that reads unnormalised features).

    Returns:
        ``(embeddings (N, D), labels (N,) int64 or None)``.
    """
    chunks: list[Tensor] = []
    labels: list[Tensor] = []
    seen = 0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, targets = unpack_batch(batch, require_labels=require_labels, views="first")
        if device is not None:
            images = images.to(device)
        embedded = embed(images).float()
        chunks.append((F.normalize(embedded, dim=1) if normalize else embedded).cpu())
        if targets is not None:
            labels.append(targets.cpu())
        seen += len(images)
        if max_items is not None and seen >= max_items:
            break
    if not chunks:
        raise ValueError("the loader yielded no batches")
    embeddings = torch.cat(chunks)
    all_labels = torch.cat(labels).long() if labels else None
    if max_items is not None:
        embeddings = embeddings[:max_items]
        all_labels = None if all_labels is None else all_labels[:max_items]
    return embeddings, all_labels


class eval_mode:  # noqa: N801 - used like torch.no_grad
    """Context manager: puts ``module`` in eval mode and restores every submodule's mode after.

    Restores per-submodule modes (not just the top-level flag), so a frozen BatchNorm inside a
    training model stays frozen.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        for module, mode in self.modes:
            module.training = mode


def class_means(embeddings: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Normalised mean of the L2-normalised embeddings of each class.

    Returns:
        ``(keys (num_classes, D), present (num_classes,) bool)``; absent classes have a zero key.

    Examples:
        >>> embeddings = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> keys, present = class_means(embeddings, torch.tensor([0, 0]), num_classes=2)
        >>> keys[0].tolist(), present.tolist()
        ([0.7071067690849304, 0.7071067690849304], [True, False])
    """
    normed = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(num_classes, normed.shape[1], device=normed.device)
    sums.index_add_(0, labels.to(normed.device), normed)
    present = torch.bincount(labels.to(normed.device), minlength=num_classes) > 0
    return F.normalize(sums, dim=1), present


def embed_dataset(
    embed: EmbedFn,
    dataset: Dataset[Any],
    device: torch.device | str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embedding",
    require_labels: bool = True,
    normalize: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Embeds every item of ``dataset`` in dataset order (:func:`embed_loader`); under DDP each
    rank embeds a strided shard (rank r the items r, r + W, ..., as lightly's ``KNNClassifier``
    gathers its bank) and every rank receives the whole pass. Eval mode is the caller's.

    Returns:
        ``(embeddings (N, D) on the CPU, labels (N,) or None)``.

    Examples:
        >>> items = [(torch.ones(1, 2, 2) * i, i) for i in range(3)]
        >>> embeddings, labels = embed_dataset(lambda x: x.flatten(1), items, normalize=False)
        >>> embeddings[:, 0].tolist(), labels.tolist()
        ([0.0, 1.0, 2.0], [0, 1, 2])
    """
    total = len(dataset)  # type: ignore[arg-type]
    positions = rank_shard(total)
    shard: Dataset[Any] = Subset(dataset, positions) if len(positions) < total else dataset
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embeddings, labels = embed_loader(
        embed, loader, device, progress, desc, require_labels=require_labels, normalize=normalize
    )
    embeddings = gather_shards(embeddings, total, device)
    return embeddings, None if labels is None else gather_shards(labels, total, device)
