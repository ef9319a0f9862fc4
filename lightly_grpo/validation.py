"""Input checks shared by the losses, output sets, index and evaluation.

Every check raises a ``ValueError`` that names the offending tensor, its shape and the bad
values, never lets a NaN through. Checks that run on every training batch fold their tests into
one host synchronisation (cheap on a GPU); the detailed message is only built on failure.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any

import torch
from torch import Tensor


def check_int(
    name: str, value: Any, minimum: int, maximum: int | None = None, what: str = ""
) -> int:
    """``value`` as an int, or ValueError unless it is an integer (not a bool) in
    ``[minimum, maximum]`` (no upper bound when ``maximum`` is None). ``what`` says where the
    upper bound comes from, for the message.

    Examples:
        >>> check_int("num_classes", 3, 2)
        3
        >>> check_int("num_classes", 2.5, 2)
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be an integer, got 2.5
        >>> check_int("k", 21, 1, 20, "at most the 20 references")
        Traceback (most recent call last):
        ...
        ValueError: k must be an integer in [1, 20] (at most the 20 references), got 21
    """
    is_int = not isinstance(value, bool) and isinstance(value, Integral)
    if maximum is not None:
        if not is_int or not minimum <= value <= maximum:
            bound = f" ({what})" if what else ""
            raise ValueError(
                f"{name} must be an integer in [{minimum}, {maximum}]{bound}, got {value!r}"
            )
        return int(value)
    if not is_int:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite(named: dict[str, Tensor | None], hint: str = "") -> None:
    """Raises ValueError naming the first tensor that holds NaN or inf values.

    All tensors are checked with one host synchronisation (a sum is finite unless an element is
    NaN/inf, or the values are so large that their sum overflows, which is reported too).

    Args:
        named: Tensors by the name the message should use; None entries are skipped.
        hint: Appended to the message (what the user can check).

    Examples:
        >>> check_finite({"logits": torch.zeros(2, 3)})
        >>> check_finite({"logits": torch.tensor([[0.0, float("nan")]])})
        Traceback (most recent call last):
        ...
        ValueError: logits contains NaN or inf: 1 value(s) in 1 row(s), first at row 0 ...
    """
    present = {name: t for name, t in named.items() if t is not None and t.numel() > 0}
    if not present:
        return
    sums = torch.stack([t.detach().sum().float() for t in present.values()])
    if bool(torch.isfinite(sums).all()):
        return
    for name, tensor in present.items():
        bad = ~torch.isfinite(tensor.detach())
        count = int(bad.sum())
        if count:
            rows = bad.reshape(len(tensor), -1).any(dim=1).nonzero().flatten()
            suffix = f"; {hint}" if hint else ""
            raise ValueError(
                f"{name} contains NaN or inf: {count} value(s) in {len(rows)} row(s), first at "
                f"row {int(rows[0])} (shape {tuple(tensor.shape)}){suffix}"
            )


def _sum(tensor: Tensor) -> Tensor:
    """Sum of a tensor without gradient, float32 or wider (half precision overflows at 65504).

    A float32/float64 sum runs in the tensor's own dtype: on a CPU, ``sum(dtype=float64)`` of a
    float32 tensor takes a casting path about 15x slower than the plain sum.

    Examples:
        >>> _sum(torch.ones(2, 3, dtype=torch.float16)).dtype
        torch.float32
    """
    tensor = tensor.detach()
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor.sum()
    return tensor.sum(dtype=torch.float32)


def check_embedding_shape(
    embeddings: Tensor, embedding_size: int | None = None, name: str = "embeddings"
) -> None:
    """Raises ValueError for a non-2-D, empty or wrongly sized embedding batch (no sync).

    Examples:
        >>> check_embedding_shape(torch.zeros(4, 8), 8)
        >>> check_embedding_shape(torch.zeros(4, 8), 16)
        Traceback (most recent call last):
        ...
        ValueError: embeddings have dimension 8, expected 16
    """
    if not isinstance(embeddings, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {embeddings.dtype}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (batch_size, dim), got {tuple(embeddings.shape)}")
    if embeddings.shape[0] == 0:
        raise ValueError(f"empty batch: {name} have shape {tuple(embeddings.shape)}")
    if embedding_size is not None and embeddings.shape[1] != embedding_size:
        raise ValueError(f"{name} have dimension {embeddings.shape[1]}, expected {embedding_size}")


def check_embeddings(embeddings: Tensor, embedding_size: int | None = None) -> None:
    """Raises ValueError for a non-2-D, empty, wrongly sized or non-finite embedding batch."""
    check_embedding_shape(embeddings, embedding_size)
    check_finite({"embeddings": embeddings})


def as_labels(labels: Any, device: torch.device | None = None) -> Tensor:
    """Integer class labels as an int64 tensor (from a tensor, a list or a numpy array).

    Raises:
        ValueError: For floating-point or boolean labels, or values that are not numbers.

    Examples:
        >>> as_labels([0, 2, 1])
        tensor([0, 2, 1])
        >>> as_labels(torch.tensor([1, 0], dtype=torch.uint8)).dtype
        torch.int64
    """
    try:
        tensor = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"labels must be integers, got {type(labels).__name__}: {error}") from None
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {tensor.dtype}")
    return tensor.long()


def check_labels(labels: Tensor, num_classes: int, batch_size: int | None = None) -> None:
    """Raises ValueError when labels are not integers in [0, num_classes) or have the wrong size.

    Examples:
        >>> check_labels(torch.tensor([0, 2]), num_classes=3)
        >>> check_labels(torch.tensor([0, 3]), num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: labels must lie in [0, 3), got [3] (1 out of range)
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(f"got {labels.shape[0]} labels for a batch of {batch_size} embeddings")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {bad[:5].tolist()} "
            f"({bad.numel()} out of range)"
        )


def check_labeled_batch(
    embeddings: Tensor,
    labels: Tensor,
    num_classes: int,
    keys: Tensor | None = None,
    keys_name: str = "output keys",
) -> None:
    """Validates a labeled batch (and the output keys) with a single host synchronisation.

    Shapes and dtypes are checked on the host; NaN/inf in the embeddings or keys and labels
    outside [0, num_classes) are folded into one flag, and only when it is set are the detailed
    checks run to name the offending values.

    Examples:
        >>> check_labeled_batch(torch.zeros(2, 4), torch.tensor([0, 2]), num_classes=3)
        >>> check_labeled_batch(torch.zeros(2, 4), torch.tensor([0, 3]), num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: labels must lie in [0, 3), got [3] (1 out of range)
    """
    check_embedding_shape(embeddings)
    if (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.shape[0] != embeddings.shape[0]
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        check_labels(labels, num_classes, embeddings.shape[0])
    # One reduction per tensor and ONE device->host copy: the embedding and key sums (finite
    # unless an element is NaN/inf, or the sum overflows, which only sends a batch to the detailed
    # check below) and the label range travel together in one small tensor.
    device = embeddings.device
    low, high = labels.aminmax()
    parts = [_sum(embeddings), low, high]
    if keys is not None:
        parts.append(_sum(keys))
    if num_classes > 2**24:
        # The stack is float32 unless a part is float64; float32 orders every label against a
        # num_classes <= 2**24 correctly (exact below it, rounding is monotone), beyond it not.
        parts[0] = parts[0].double()
    if any(part.device != device for part in parts):  # e.g. CPU labels for CUDA embeddings
        parts = [part.to(device) for part in parts]
    emb_sum, low_value, high_value, *key_sum = torch.stack(parts).tolist()
    finite = math.isfinite(emb_sum) and (not key_sum or math.isfinite(key_sum[0]))
    if not (finite and low_value >= 0 and high_value < num_classes):
        check_embeddings(embeddings)
        if keys is not None and not bool(torch.isfinite(keys).all()):
            raise ValueError(
                f"the {keys_name} contain NaN or inf values (shape {tuple(keys.shape)}): "
                "the previous optimizer step diverged"
            )
        check_labels(labels, num_classes, embeddings.shape[0])
