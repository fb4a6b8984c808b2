"""Logits read row by row: :class:`ProjectedLogits`, :class:`LogitRows` and the gold-token
log-prob engine behind CE and the chunk log-probs (docs/architecture.md#the-fused-output-layer).

A :class:`ProjectedLogits` stands for ``z = hidden @ weight.T + bias`` ``[b, L, V]``
without building it. :class:`LogitRows` is the one way the loss engines read logits:
``N`` rows ``(batch_index[i], positions[i])`` of either plain logits ``[b, L, V]`` or
:class:`ProjectedLogits`, a chunk of rows at a time, and the one way a chunk's gradient
``dL/dz`` ``[c, k]`` reaches the tensors the rows come from (plain: the logits' gradient;
projected: ``d hidden``, ``d weight``, ``d bias``). Tied embeddings need nothing
special: ``weight`` is the embedding matrix and autograd adds both uses.

:func:`gold_log_probs` is the gold-token log-prob engine: ``l(i) = z_i[gold_i] -
logsumexp(z_i)`` over the full vocabulary (CE: :func:`nll_rows`; the chunk log-probs of
CALM, ``docs/method.md#calm``). Forward keeps one float32 logsumexp per row; backward
re-reads the rows a chunk at a time (plain logits: a gather; projected: one projection)
and hands ``onehot(gold) - softmax(z)`` to the rows. The row divergences (token KL,
TIDAL, the cross-tokenizer objectives) use :class:`LogitRows` through
:func:`tide_plugin.objectives.rows.row_divergence`.

Row chunks: ``ROW_CHUNK_ELEMENTS`` float32 elements per ``[rows, width]`` temporary on
CPU, ``ROW_CHUNK_ELEMENTS_ACCELERATOR`` elsewhere, read at call time (tests lower them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ROW_CHUNK_ELEMENTS",
    "ROW_CHUNK_ELEMENTS_ACCELERATOR",
    "LogitRows",
    "ProjectedLogits",
    "gold_log_probs",
    "nll_rows",
    "rows_per_chunk",
    "work_dtype",
]

ROW_CHUNK_ELEMENTS = 1 << 22
"""Float32 elements per row chunk on CPU (16 MiB per temporary). Rows per chunk =
``max(1, ROW_CHUNK_ELEMENTS // width)``. Tests lower it to exercise several chunks."""

ROW_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
"""The same on GPUs (64 MiB per temporary): fewer, larger kernels; still small next
to ``[b, L, V]`` logits at 150k vocabularies (about 1.2 GiB in bf16 at b=8, L=512)."""


def rows_per_chunk(width: int, device: torch.device) -> int:
    """Rows per chunk so that a ``[rows, width]`` float32 temporary stays within the budget."""
    budget = ROW_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else ROW_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, int(budget) // max(1, int(width)))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses compute in: float32, or float64 for float64 inputs (gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


class ProjectedLogits:
    """Logits ``hidden @ weight.T + bias`` ``[b, L, V]``, never materialised.

    :param hidden: ``[b, L, H]`` hidden states after the final norm (may require grad).
    :param weight: ``[V, H]`` output projection (the embedding matrix when tied).
    :param bias: ``[V]`` or ``None``.
    """

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> None:
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
            raise ValueError(f"hidden must be a float tensor [b, L, H], got {getattr(hidden, 'shape', type(hidden).__name__)}")
        if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
            raise ValueError(
                f"weight must be [V, H] with H = {hidden.shape[2]} (the hidden size), got "
                f"{getattr(weight, 'shape', type(weight).__name__)}"
            )
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {list(bias.shape)}")
        self.hidden, self.weight, self.bias = hidden, weight, bias

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:2], self.weight.shape[0]))

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def dim(self) -> int:
        return 3

    def materialize(self) -> Tensor:
        """The full ``[b, L, V]`` logits (tests and fallbacks only)."""
        return torch.nn.functional.linear(self.hidden, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"ProjectedLogits(shape={list(self.shape)}, dtype={self.dtype})"


def check_logits(name: str, x: Any) -> None:
    """A ``[b, L, V]`` float tensor or :class:`ProjectedLogits`, else one clear error."""
    if isinstance(x, ProjectedLogits):
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor or ProjectedLogits, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [b, L, V], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


class LogitRows:
    """``N`` rows of plain logits ``[b, L, V]`` or :class:`ProjectedLogits`, read a chunk at
    a time (:meth:`read`), with their gradient routed back (:meth:`grad_buffers`,
    :meth:`add_grad`, :meth:`grads`).

    :attr:`leaves` are the tensors an autograd function over these rows takes as inputs
    (plain: the logits; projected: the gathered hidden rows ``[N, H]``, the weight and
    the bias), in the order :meth:`grads` returns their gradients.
    """

    def __init__(self, logits: Tensor | ProjectedLogits, batch_index: Tensor, positions: Tensor, *,
                 device: torch.device | None = None, detach: bool = False) -> None:
        check_logits("logits", logits)
        src = logits.device
        bi, pos = batch_index.to(src).long(), positions.to(src).long()
        self.device = torch.device(device) if device is not None else src
        self.n = int(bi.numel())
        self.width = int(logits.shape[2])
        self.work = work_dtype(logits.dtype)
        self.projected = isinstance(logits, ProjectedLogits)
        if self.projected:
            h, w, b = logits.hidden, logits.weight, logits.bias
            if detach:
                h, w, b = h.detach(), w.detach(), None if b is None else b.detach()
            self.hidden = h[bi, pos].to(self.device)
            self.weight = w.to(self.device)
            self.bias = None if b is None else b.to(self.device)
            self.leaves: tuple[Tensor, ...] = (self.hidden, self.weight) + (() if self.bias is None else (self.bias,))
        else:
            self.logits = logits.detach() if detach else logits
            self.b_idx, self.pos = bi, pos
            self.leaves = (self.logits,)

    def read(self, lo: int, hi: int, cols: int | None = None) -> Tensor:
        """Rows ``lo:hi``, columns ``0:cols`` (default all), ``[hi - lo, cols]`` in the work
        dtype, no graph (a fresh tensor: callers may write into it)."""
        k = self.width if cols is None else int(cols)
        with torch.no_grad():
            if self.projected:
                bias = None if self.bias is None else self.bias[:k]
                # in the weights' dtype, as the model's head computes the logits
                z = torch.nn.functional.linear(self.hidden[lo:hi].to(self.weight.dtype), self.weight[:k], bias)
                return z.to(self.work)
            z = self.logits[self.b_idx[lo:hi], self.pos[lo:hi], :k]
            return z.to(self.device, self.work) if z.dtype != self.work else z.to(self.device)

    def grad_buffers(self, needs: tuple[bool, ...]) -> list[Tensor | None]:
        """Zeroed gradient accumulators, one per leaf (``None`` where ``needs`` is False)."""
        out: list[Tensor | None] = []
        for leaf, need in zip(self.leaves, needs):
            if not need:
                out.append(None)
            elif self.projected:
                out.append(torch.zeros(leaf.shape, dtype=self.work, device=leaf.device))
            else:
                out.append(torch.zeros_like(leaf, memory_format=torch.contiguous_format))
        return out

    def add_grad(self, buffers: list[Tensor | None], lo: int, hi: int, g_z: Tensor) -> None:
        """Add ``dL/dz`` of rows ``lo:hi``, columns ``0:k`` (``g_z`` ``[hi - lo, k]``, work
        dtype) to ``buffers``. Rows that occur twice accumulate."""
        k = g_z.shape[1]
        if not self.projected:
            (g,) = buffers
            if g is not None:
                bi, pos = self.b_idx[lo:hi].to(g.device), self.pos[lo:hi].to(g.device)
                g[..., :k].index_put_((bi, pos), g_z.to(g.device, g.dtype), accumulate=True)
            return
        g_h, g_w = buffers[0], buffers[1]
        g_b = buffers[2] if len(buffers) > 2 else None
        w = self.weight
        if w.dtype == g_z.dtype:
            if g_h is not None:
                torch.mm(g_z, w[:k], out=g_h[lo:hi])
            if g_w is not None:
                g_w[:k].addmm_(g_z.t(), self.hidden[lo:hi].to(w.dtype))
        else:  # bf16 / fp16 head: the products in its dtype (as autograd's), accumulated in float32
            g_c = g_z.to(w.dtype)
            if g_h is not None:
                g_h[lo:hi] = (g_c @ w[:k]).to(g_h.dtype)
            if g_w is not None:
                g_w[:k] += (g_c.t() @ self.hidden[lo:hi].to(w.dtype)).to(g_w.dtype)
        if g_b is not None:
            g_b[:k] += g_z.sum(0).to(g_b.dtype)

    def grads(self, buffers: list[Tensor | None], scale: Tensor | None = None) -> tuple[Tensor | None, ...]:
        """The leaves' gradients from ``buffers``, times ``scale`` (a scalar tensor), each
        in its leaf's dtype. Plain logits: scaled in place (no second ``[b, L, V]`` buffer)."""
        out = []
        for leaf, g in zip(self.leaves, buffers):
            if g is None:
                out.append(None)
                continue
            if scale is not None and self.projected:
                g = g * scale.to(g.dtype)
            elif scale is not None and not bool(scale == 1):
                g.mul_(scale.to(g.dtype))  # in place: a second backward through a kept graph is refused
            out.append(g.to(leaf.dtype))
        return tuple(out)

    def zero(self) -> Tensor:
        """A zero scalar (work dtype) connected to the leaves: ``backward()`` gives zero gradients."""
        total = torch.zeros((), dtype=self.work, device=self.device)
        for leaf in self.leaves:
            total = total + leaf.reshape(-1)[:0].sum().to(self.work)
        return total


class _GoldLogProb(torch.autograd.Function):
    """``l(i) = z_i[gold_i] - logsumexp(z_i)`` ``[N]`` over the full vocabulary."""

    @staticmethod
    def forward(ctx, rows: LogitRows, gold: Tensor, *leaves: Tensor) -> Tensor:  # type: ignore[override]  # noqa: ARG004
        n = rows.n
        lse = torch.empty(n, dtype=rows.work, device=rows.device)
        gold_z = torch.empty_like(lse)
        step = rows_per_chunk(rows.width, rows.device)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            z = rows.read(lo, hi)
            lse[lo:hi] = torch.logsumexp(z, dim=-1)
            gold_z[lo:hi] = z.gather(1, gold[lo:hi, None]).squeeze(1)
            del z
        ctx.rows, ctx.gold, ctx.lse = rows, gold, lse
        return gold_z - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        rows, gold, lse = ctx.rows, ctx.gold, ctx.lse
        g = grad_out.to(lse.dtype)
        buffers = rows.grad_buffers(ctx.needs_input_grad[2:])
        step = rows_per_chunk(rows.width, rows.device)
        for lo in range(0, rows.n, step):
            hi = min(rows.n, lo + step)
            # d l / d z = onehot(gold) - softmax(z)
            g_z = rows.read(lo, hi).sub_(lse[lo:hi, None]).exp_().mul_(-g[lo:hi, None])
            g_z.scatter_add_(1, gold[lo:hi, None], g[lo:hi, None])
            rows.add_grad(buffers, lo, hi, g_z)
            del g_z
        return (None, None, *rows.grads(buffers))


def check_ids(name: str, ids: Any, shape: tuple[int, ...]) -> None:
    """An integer id tensor of ``shape``, else one clear error."""
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(ids.shape)}")


def gold_log_probs(logits: Tensor | ProjectedLogits, ids: Tensor, rows: Tensor) -> Tensor:
    """Gold-token log-probs ``z[b, i, ids] - logsumexp(z[b, i])`` at ``rows``.

    :param logits: ``[b, L, V]`` plain or :class:`ProjectedLogits`.
    :param ids: ``[b, L]`` long, the gold ids. :param rows: ``[b, L]`` bool.
    :return: ``[b, L]`` float32 (float64 for float64 logits), 0 off ``rows``.
    """
    check_logits("logits", logits)
    b, length, vocab = logits.shape
    check_ids("ids", ids, (b, length))
    if not isinstance(rows, Tensor) or rows.dtype != torch.bool or tuple(rows.shape) != (b, length):
        raise ValueError(f"rows must be a bool tensor [b, L] = [{b}, {length}]")
    device = logits.device
    rows, ids = rows.to(device), ids.to(device)
    b_idx, pos = rows.nonzero(as_tuple=True)
    src = LogitRows(logits, b_idx, pos)
    out = torch.zeros(b, length, dtype=src.work, device=device)
    if src.n == 0:
        return out + src.zero()
    gold = ids[b_idx, pos].long()
    lo, hi = int(gold.min()), int(gold.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"gold ids must lie in [0, {vocab}), got range [{lo}, {hi}]")
    lp = _GoldLogProb.apply(src, gold, *src.leaves)
    return out.index_put((b_idx, pos), lp)


def nll_rows(logits: Tensor | ProjectedLogits, targets: Tensor, rows: Tensor) -> Tensor:
    """``CE(z_i, targets_i)`` at the True entries of ``rows`` ``[b, L]``, ``[N]`` float32
    (row-major order), for plain or projected logits."""
    return -gold_log_probs(logits, targets, rows)[rows]
