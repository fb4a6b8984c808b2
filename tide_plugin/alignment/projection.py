"""The vocabulary projection ``W`` ``[V_T, V_S]`` from a teacher's tokens to a
student's (``docs/method.md#projected-kl``).

``W`` is sparse and row-stochastic: row ``u`` spreads teacher token ``u`` over the
student tokens it maps to, with weights summing to 1; a row with no mapping is
empty (its probability mass is dropped and reported). It is stored in compressed
sparse row form, so a 150k x 150k projection costs a few MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VocabProjection"]


@dataclass(frozen=True)
class VocabProjection:
    """``W`` ``[V_T, V_S]`` in compressed sparse row form.

    :param indptr: ``[V_T + 1]`` int64; row ``u``'s entries are ``indptr[u]:indptr[u+1]``.
    :param indices: ``[nnz]`` int64 student token ids.
    :param values: ``[nnz]`` float32 weights; each non-empty row sums to 1.
    :param student_vocab_size: ``V_S``.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    student_vocab_size: int

    def __post_init__(self) -> None:
        if self.indptr.dim() != 1 or self.indptr.numel() < 1:
            raise ValueError(f"indptr must be [V_T + 1], got shape {list(self.indptr.shape)}")
        nnz = int(self.indptr[-1])
        if tuple(self.indices.shape) != (nnz,) or tuple(self.values.shape) != (nnz,):
            raise ValueError(
                f"indices and values must be [nnz] = [{nnz}], got {list(self.indices.shape)} and {list(self.values.shape)}"
            )
        if nnz and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.student_vocab_size):
            raise ValueError(f"student ids in W must lie in [0, {self.student_vocab_size}), got "
                             f"[{int(self.indices.min())}, {int(self.indices.max())}]")

    @property
    def teacher_vocab_size(self) -> int:
        """``V_T``."""
        return int(self.indptr.numel()) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.teacher_vocab_size, self.student_vocab_size)

    @property
    def rows(self) -> Tensor:
        """``[nnz]`` int64: the teacher id of each stored entry."""
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(self.teacher_vocab_size, device=self.indptr.device), counts)

    @classmethod
    def from_dense(cls, weight: Tensor) -> "VocabProjection":
        """From a dense ``[V_T, V_S]`` matrix (tests, small vocabularies); rows are
        renormalised to sum to 1, all-zero rows stay empty."""
        if weight.dim() != 2:
            raise ValueError(f"W must be [V_T, V_S], got shape {list(weight.shape)}")
        if bool((weight < 0).any()):
            raise ValueError("W must be non-negative")
        w = weight.to(torch.float32)
        sums = w.sum(1, keepdim=True)
        w = torch.where(sums > 0, w / sums.clamp_min(1e-30), w)
        rows, cols = w.nonzero(as_tuple=True)  # row-major order
        indptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=w.shape[0]), 0)
        return cls(indptr=indptr, indices=cols.to(torch.int64), values=w[rows, cols],
                   student_vocab_size=int(weight.shape[1]))

    def dense(self) -> Tensor:
        """``[V_T, V_S]`` float32 (tests and small vocabularies only)."""
        out = torch.zeros(self.shape, dtype=torch.float32, device=self.values.device)
        out[self.rows, self.indices] = self.values
        return out

    def to(self, device: torch.device | str) -> "VocabProjection":
        return VocabProjection(self.indptr.to(device), self.indices.to(device), self.values.to(device),
                               self.student_vocab_size)

    def project_rows(self, probs: Tensor) -> Tensor:
        """``probs @ W``: ``[N, V_T]`` -> ``[N, V_S]`` float32, exact (no renormalisation:
        a row's sum is the teacher mass that ``W`` maps)."""
        if probs.dim() != 2 or probs.shape[1] != self.teacher_vocab_size:
            raise ValueError(f"probs must be [N, V_T] = [N, {self.teacher_vocab_size}], got {list(probs.shape)}")
        p = probs.to(torch.float32)
        out = torch.zeros(p.shape[0], self.student_vocab_size, dtype=torch.float32, device=p.device)
        if self.values.numel():
            rows, cols, vals = self.rows.to(p.device), self.indices.to(p.device), self.values.to(p.device)
            out.index_add_(1, cols, p[:, rows] * vals)
        return out
