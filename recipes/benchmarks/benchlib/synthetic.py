"""Unit embeddings whose dot products and squared distances are exact in float32.

For tests and benchmarks that compare search backends (or a backend with a reference implementation)
bit for bit. Why: a search backend's ranking of two items whose similarities differ in the last bit
depends on how its matrix product rounds, which differs between FAISS and torch, between GEMM
kernels (AVX-512 vs AVX2 machines) and between block shapes. Agreement tests on random floats
therefore compare rounding, not ranking, and fail on some CPUs. Here every coordinate is an integer
multiple of 2**-11 and every row's squared integers sum to exactly 2**22 (norm 1): every product,
partial sum, norm and distance is a multiple of 2**-22 no larger than 4, which float32 holds exactly
(24-bit significand), so any summation order gives the same bits, and ``F.normalize`` leaves the
rows unchanged. Ties that remain are real ties (the same value on every backend), ordered by index
everywhere.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F

SCALE = 2**11  # Coordinates are integers / SCALE; squared integers of a row sum to SCALE**2.
PAD_DIMS = 4  # Lagrange: every non-negative integer is a sum of four squares.


@cache
def four_squares(m: int) -> tuple[int, int, int, int]:
    """Non-negative integers (a, b, c, d) with a^2 + b^2 + c^2 + d^2 == m.

    Examples:
        >>> four_squares(7)
        (2, 1, 1, 1)
    """
    for a in range(math.isqrt(m), -1, -1):
        m1 = m - a * a
        for b in range(min(a, math.isqrt(m1)), -1, -1):
            m2 = m1 - b * b
            for c in range(min(b, math.isqrt(m2)), -1, -1):
                d2 = m2 - c * c
                d = math.isqrt(d2)
                if d * d == d2 and d <= c:
                    return a, b, c, d
    raise ValueError(f"no four-square decomposition of {m} (is it negative?)")


def exact_unit(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rounds the directions of ``x`` (N, D) to exact unit vectors of shape (N, D + 4).

    Each row is scaled to just below norm SCALE and rounded to integers; four pad coordinates
    (random signs) make up the rest of SCALE**2 exactly. The pads change cosines by about
    2 / SCALE at most, so the data keeps its structure (classes, real-data neighbourhoods).

    Examples:
        >>> x = exact_unit(torch.randn(100, 8))
        >>> x.shape, bool(torch.equal(x @ x.T, (x.double() @ x.double().T).float()))
        (torch.Size([100, 12]), True)
    """
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(x.double(), dim=1)
    ints = (u * (SCALE - 1)).round().long()
    # Rounding can push a row past SCALE; shrink such rows until they fit.
    for shrink in range(2, 64):
        over = (ints * ints).sum(dim=1) > SCALE**2
        if not bool(over.any()):
            break
        ints[over] = (u[over] * (SCALE - shrink)).round().long()
    rest = SCALE**2 - (ints * ints).sum(dim=1)
    pads = torch.tensor([four_squares(int(m)) for m in rest.tolist()], dtype=torch.long)
    signs = torch.randint(0, 2, pads.shape, generator=g) * 2 - 1
    out = torch.cat([ints, pads * signs], dim=1).to(torch.float32) / SCALE
    if not bool(((out.double() ** 2).sum(dim=1) == 1.0).all()):  # Guards the construction.
        raise RuntimeError("exact_unit produced a row whose norm is not exactly 1")
    return out


def clustered(
    n: int, d: int, classes: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unit embeddings (N, d + 4) around ``classes`` random centres, and their labels.

    Examples:
        >>> x, y = clustered(50, 8, 3, noise=1.0, seed=0)
        >>> x.shape, y.shape
        (torch.Size([50, 12]), torch.Size([50]))
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, d, generator=g)
    return exact_unit(x, seed), labels


def has_near_ties(sims: torch.Tensor, width: int, gap: float = 1e-6) -> bool:
    """Whether some row's ``width`` best values contain two distinct values within ``gap``.

    Examples:
        >>> has_near_ties(torch.tensor([[1.0, 1.0 - 1e-7, 0.5]]), 3)
        True
    """
    top = sims.topk(width, dim=1).values
    diffs = top[:, :-1] - top[:, 1:]
    return bool(((diffs > 0) & (diffs < gap)).any())
