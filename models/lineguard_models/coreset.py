"""Memory-bank reduction for the anomaly model: greedy k-center coreset, streamed and bounded.

Data flow: patch features of good training images (one batch at a time) -> :class:`StreamingCoreset`
-> memory bank [bank_size, D] stored in the scorer (and inside the ONNX graph).

Memory does not grow with the number of training images: features go into a buffer of at most
``buffer_rows`` rows (plus one batch); when it is full, the union of the current bank and the
buffer is reduced to ``bank_size`` rows by greedy k-center selection (merge-and-reduce). The
greedy k-center rule (PatchCore, Roth et al. 2022) picks the point farthest from all chosen ones,
so rare but normal patterns survive while thousands of near-identical background patches collapse.
With ``fraction`` the final bank is that share of every row seen (PatchCore's 10 % coreset), capped at
``bank_size``: the bank grows with the images and their size instead of a fixed, too small row count.

Must never: keep every training feature, or use unseeded randomness (training is deterministic by seed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def greedy_kcenter(
    features: Tensor, k: int, *, generator: torch.Generator, selection_dim: int | None = 128
) -> Tensor:
    """Indices (int64, length min(k, N)) of a greedy k-center coreset of ``features`` [N, D].

    Distances for the selection are measured after a fixed random Gaussian projection to
    ``selection_dim`` dims when D is larger (Johnson-Lindenstrauss keeps them close; it makes
    each of the k passes over N rows cheaper). The first centre is drawn with ``generator``.
    """
    n, dim = features.shape
    if k >= n:
        return torch.arange(n)
    work = features
    if selection_dim is not None and dim > selection_dim:
        proj = torch.randn(dim, selection_dim, generator=generator) / selection_dim**0.5
        work = features @ proj
    chosen = torch.empty(k, dtype=torch.int64)
    sq = work.pow(2).sum(dim=1)
    idx = int(torch.randint(n, (1,), generator=generator))
    min_d2 = torch.full((n,), float("inf"))
    for i in range(k):
        chosen[i] = idx
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 as one matrix-vector product: no [N, D] temporary
        d2 = torch.addmv(sq, work, work[idx], alpha=-2.0).add_(sq[idx])
        torch.minimum(min_d2, d2, out=min_d2)
        idx = int(torch.argmax(min_d2))
    return chosen


class StreamingCoreset:
    """Bounded merge-and-reduce coreset over a stream of feature batches.

    ``add`` takes [n, D] rows; ``bank()`` returns at most ``bank_size`` rows. Peak memory is
    about (bank_size + buffer_rows + one batch) x D floats, whatever the number of images.
    """

    def __init__(
        self, *, bank_size: int, buffer_rows: int, seed: int, selection_dim: int | None = 128,
        fraction: float | None = None,
    ) -> None:
        if buffer_rows < bank_size:
            raise ValueError(f"buffer_rows ({buffer_rows}) must be >= bank_size ({bank_size})")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction ({fraction}) must be in (0, 1]")
        self.bank_size = bank_size
        self.fraction = fraction
        self.buffer_rows = buffer_rows
        self.selection_dim = selection_dim
        self._gen = torch.Generator().manual_seed(seed)
        self._bank: Tensor | None = None
        self._pending: list[Tensor] = []
        self._pending_rows = 0
        self.rows_seen = 0
        self.reductions = 0
        self.peak_rows = 0  # most feature rows held at once (bank + pending), for tests and reports

    def add(self, rows: Tensor) -> None:
        """Queue feature rows; reduce when the buffer is full."""
        rows = rows.detach().to(torch.float32).contiguous()
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        self.rows_seen += rows.shape[0]
        held = self._pending_rows + (0 if self._bank is None else self._bank.shape[0])
        self.peak_rows = max(self.peak_rows, held)
        if self._pending_rows >= self.buffer_rows:
            self._reduce()

    def _reduce(self, size: int | None = None) -> None:
        parts = ([] if self._bank is None else [self._bank]) + self._pending
        pool = torch.cat(parts)
        self._pending, self._pending_rows = [], 0
        keep = greedy_kcenter(pool, size or self.bank_size, generator=self._gen, selection_dim=self.selection_dim)
        self._bank = pool[keep].clone()
        self.reductions += 1

    @property
    def target_rows(self) -> int:
        """Rows of the final bank (:func:`final_rows` of the rows seen so far)."""
        return final_rows(self.bank_size, self.fraction, self.rows_seen)

    def bank(self) -> Tensor:
        """Final memory bank [min(target_rows, rows_seen), D]."""
        held = self._pending_rows + (0 if self._bank is None else self._bank.shape[0])
        if self._pending or held > self.target_rows:
            # greedy k-center is nested (its first k picks do not depend on the final size): reducing
            # a bank to the fraction after merge-and-reduce is the same rule applied once more
            self._reduce(self.target_rows)
        if self._bank is None:
            raise ValueError("no features were added: the training set is empty")
        return self._bank


def final_rows(bank_size: int, fraction: float | None, rows_seen: int) -> int:
    """Rows of the bank :class:`StreamingCoreset` keeps of ``rows_seen``: ``bank_size``, or with
    ``fraction`` that share of every row seen (at most ``bank_size``; at least one), never more than
    were seen."""
    target = bank_size if fraction is None else max(1, min(bank_size, math.ceil(fraction * rows_seen)))
    return min(target, max(rows_seen, 1))
