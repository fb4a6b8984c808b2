"""The vocabulary projection ``W`` ``[V_T, V_S]`` from a teacher's tokens to a
student's (``docs/method.md#projected-kl``).

``W`` is sparse and row-stochastic: row ``u`` spreads teacher token ``u`` over the
student tokens it maps to, with weights summing to 1; a row with no mapping is
empty (its probability mass is dropped and reported). It is stored in compressed
sparse row form, so a 150k x 150k projection costs a few MB. How ``W`` is built from
two tokenizers: :mod:`tide_plugin.alignment.projection_build`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["PROJECTION_FILE", "VocabProjection"]

PROJECTION_FILE = "projection.safetensors"
"""The file :meth:`VocabProjection.save` writes into a folder (a ``tide preprocess`` dataset's)."""
_FORMAT = "tide-vocab-projection/1"
_CHUNK_ELEMENTS = 1 << 24
""":meth:`VocabProjection.project_rows` gathers at most this many ``(row, entry)`` products
at once (64 MB in float32), whatever ``N`` and ``nnz``."""


@dataclass(frozen=True)
class VocabProjection:
    """``W`` ``[V_T, V_S]`` in compressed sparse row form.

    :param indptr: ``[V_T + 1]`` int64; row ``u``'s entries are ``indptr[u]:indptr[u+1]``.
    :param indices: ``[nnz]`` int64 student token ids.
    :param values: ``[nnz]`` float32 weights; each non-empty row sums to 1.
    :param student_vocab_size: ``V_S``.
    :param fingerprint: what ``W`` was built from (both tokenizers' fingerprints and the
        building rule, :func:`~tide_plugin.alignment.projection_build.projection_fingerprint`),
        or ``None`` (a hand-made ``W``).
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    student_vocab_size: int
    fingerprint: str | None = None

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

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> "VocabProjection":
        return VocabProjection(self.indptr.to(device), self.indices.to(device), self.values.to(device),
                               self.student_vocab_size, self.fingerprint)

    def padded(self, teacher_vocab_size: int, student_vocab_size: int) -> "VocabProjection":
        """``W`` for models whose output layers have more rows than their tokenizers
        (Qwen's 151,936 for 151,669 tokens): the extra teacher ids get empty rows, the
        extra student ids no mass. Sizes below ``W``'s are refused (one line)."""
        v_t, v_s = self.shape
        if teacher_vocab_size < v_t or student_vocab_size < v_s:
            raise ValueError(
                f"W is [{v_t}, {v_s}] (the tokenizers' vocabularies), but the models' output layers are "
                f"[{teacher_vocab_size}] (teacher) and [{student_vocab_size}] (student); a model must score every "
                "token of its tokenizer"
            )
        if (teacher_vocab_size, student_vocab_size) == (v_t, v_s):
            return self
        tail = torch.full((teacher_vocab_size - v_t,), int(self.indptr[-1]), dtype=self.indptr.dtype,
                          device=self.indptr.device)
        return VocabProjection(torch.cat([self.indptr, tail]), self.indices, self.values, int(student_vocab_size),
                               self.fingerprint)

    def project_rows(self, probs: Tensor) -> Tensor:
        """``probs @ W``: ``[N, V_T]`` -> ``[N, V_S]`` float32, exact (no renormalisation:
        a row's sum is the teacher mass that ``W`` maps). Differentiable in ``probs``.
        Memory: the output plus at most 2^24 gathered products at a time (rows of
        ``probs`` are taken in chunks), so ``N`` in the thousands with ``nnz`` ~150k is fine."""
        if probs.dim() != 2 or probs.shape[1] != self.teacher_vocab_size:
            raise ValueError(f"probs must be [N, V_T] = [N, {self.teacher_vocab_size}], got {list(probs.shape)}")
        p = probs.to(torch.float32)
        nnz = int(self.values.numel())
        if nnz == 0 or p.shape[0] == 0:
            return p.new_zeros(p.shape[0], self.student_vocab_size)
        rows, cols, vals = self.rows.to(p.device), self.indices.to(p.device), self.values.to(p.device)
        step = max(1, _CHUNK_ELEMENTS // nnz)
        parts = [
            p.new_zeros(chunk.shape[0], self.student_vocab_size).index_add_(1, cols, chunk[:, rows] * vals)
            for chunk in p.split(step)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # -- stored next to a dataset ----------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``W`` to ``folder/projection.safetensors`` (CSR tensors, sizes and fingerprint)."""
        from safetensors.torch import save_file

        path = Path(folder) / PROJECTION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"indptr": self.indptr.cpu().contiguous(), "indices": self.indices.cpu().contiguous(),
                   "values": self.values.cpu().contiguous()}
        meta = {"format": _FORMAT, "student_vocab_size": str(self.student_vocab_size),
                "teacher_vocab_size": str(self.teacher_vocab_size), "fingerprint": self.fingerprint or ""}
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "VocabProjection":
        """Read what :meth:`save` wrote; one-line ``ValueError`` for a missing or foreign file."""
        from safetensors import safe_open

        path = Path(folder) / PROJECTION_FILE
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist: no vocabulary projection saved in {str(folder)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("indptr", "indices", "values")}
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{str(path)!r}: cannot read the vocabulary projection ({exc})") from exc
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r}: format {meta.get('format')!r}, expected {_FORMAT!r}")
        out = cls(tensors["indptr"], tensors["indices"], tensors["values"], int(meta["student_vocab_size"]),
                  meta.get("fingerprint") or None)
        if out.teacher_vocab_size != int(meta["teacher_vocab_size"]):
            raise ValueError(f"{str(path)!r}: indptr has {out.teacher_vocab_size} rows, the file records "
                             f"{meta['teacher_vocab_size']}")
        return out
