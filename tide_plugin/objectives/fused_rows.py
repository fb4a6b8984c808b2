"""A row engine for divergences that need the whole vocabulary of a few rows at once
(the full-distribution cross-tokenizer objectives, ``docs/method.md#projected-kl`` and
``docs/method.md#hybrid-kl``).

:func:`row_divergence` gathers ``N`` student rows and ``N`` teacher rows (plain logits
or :class:`~tide_plugin.objectives.fused.ProjectedLogits`), and returns
``coef * sum_i D_i`` where ``D_i = row_fn(z_S,i, target_i)`` is a pure per-row
divergence and ``target_i`` is what ``target_of`` builds from the teacher's logits of
the same row (e.g. the projected teacher distribution). It never builds ``[b, L, V]``
logits: rows are projected a chunk at a time.

Gradients are exact and computed in the forward pass. Per row chunk, the student rows
are projected, ``D`` and ``dD/dz`` are obtained by autograd on that chunk alone (the
divergence stays a plain function, written once), and the chunk's gradient is reduced
at once to ``d hidden`` ``[c, H]`` and added to ``d weight`` ``[V, H]`` and ``d bias``
(float32 accumulators). Backward only scales them by the incoming gradient. No
``[N, V]`` tensor outlives its chunk; the price is one float32 ``[V, H]`` buffer held
from forward to backward. On plain logits the chunk's ``dD/dz`` is stored in the
logits' dtype instead (the gradient autograd would produce anyway). The teacher rows
never receive a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import functional as F_
from .fused import ProjectedLogits

__all__ = ["chunk_first_positions", "row_divergence", "rows_per_chunk"]

TargetFn = Callable[[Tensor], tuple[Any, Tensor, Tensor]]
"""``target_of(z_T [c, V_T] float32) -> (target, valid [c] bool, stat [c] float32)``:
the per-row target of ``row_fn``, which rows count, and a per-row statistic to report.
``target`` is a tensor ``[c, ...]`` or a tuple of them (indexed by rows)."""
RowFn = Callable[[Tensor, Any], Tensor]
"""``row_fn(z_S [n, V_S] float32, target) -> [n]``: a differentiable per-row divergence."""


def rows_per_chunk(width: int, device: torch.device) -> int:
    """Rows per chunk so that a ``[rows, width]`` float32 temporary stays within the
    budget of :mod:`~tide_plugin.objectives.functional` (``ROW_CHUNK_ELEMENTS`` on CPU,
    ``ROW_CHUNK_ELEMENTS_ACCELERATOR`` elsewhere; read at call time)."""
    budget = F_.ROW_CHUNK_ELEMENTS if device.type == "cpu" else F_.ROW_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, int(budget) // max(1, int(width)))


def chunk_first_positions(chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """``[b, C]`` long: the lowest position of each chunk id in ``chunk_ids`` ``[b, L]``
    (``-1`` = no chunk), ``-1`` for a chunk with no token."""
    b, length = chunk_ids.shape
    device = chunk_ids.device
    if num_chunks == 0:
        return torch.empty(b, 0, dtype=torch.long, device=device)
    ids = chunk_ids.long()
    used = (ids >= 0) & (ids < num_chunks)
    pos = torch.arange(length, device=device).expand(b, length)
    flat = (torch.arange(b, device=device)[:, None] * num_chunks + ids.clamp(0, num_chunks - 1))[used]
    first = torch.full((b * num_chunks,), length, dtype=torch.long, device=device)
    first.scatter_reduce_(0, flat, pos[used], reduce="amin", include_self=True)
    first = first.view(b, num_chunks)
    return torch.where(first == length, torch.full_like(first, -1), first)


def _index(target: Any, sel: Tensor) -> Any:
    if isinstance(target, tuple):
        return tuple(_index(t, sel) for t in target)
    return target[sel]


def _chunk_grad(z: Tensor, target: Any, valid: Tensor, row_fn: RowFn, need: bool) -> tuple[Tensor, Tensor | None]:
    """``(sum of D over the valid rows, dD/dz [c, V] or None)`` for one chunk ``z`` (work dtype)."""
    keep = valid.nonzero(as_tuple=True)[0]
    g = torch.zeros_like(z) if need else None
    if keep.numel() == 0:
        return z.new_zeros(()), g
    zk = z.index_select(0, keep).detach()
    with torch.enable_grad():
        zk.requires_grad_(need)
        d = row_fn(zk, _index(target, keep)).sum()
        if need:
            (gk,) = torch.autograd.grad(d, zk)
            g.index_copy_(0, keep, gk)
    return d.detach(), g


class _ProjectedRows(torch.autograd.Function):
    """``coef * sum_i D_i`` from projected student rows ``h_s`` ``[N, H]``."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, teacher_of, target_of, row_fn, coef: float, step: int):  # type: ignore[override]
        work = torch.promote_types(h_s.dtype, torch.float32)
        n = h_s.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b_s is not None and ctx.needs_input_grad[2]
        need = need_h or need_w or need_b
        g_h = torch.zeros(n, h_s.shape[1], dtype=work, device=h_s.device) if need_h else None
        g_w = torch.zeros(w_s.shape, dtype=work, device=w_s.device) if need_w else None
        g_b = torch.zeros(w_s.shape[0], dtype=work, device=w_s.device) if need_b else None
        total = torch.zeros((), dtype=work, device=h_s.device)
        stat = torch.zeros(n, dtype=work, device=h_s.device)
        valid = torch.zeros(n, dtype=torch.bool, device=h_s.device)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            target, valid[lo:hi], stat[lo:hi] = target_of(teacher_of(lo, hi))
            h = h_s[lo:hi].to(w_s.dtype)
            z = torch.nn.functional.linear(h, w_s, b_s).to(work)
            d, g = _chunk_grad(z, target, valid[lo:hi], row_fn, need)
            del z, target
            total += d
            if need:
                gc = g.mul_(coef).to(w_s.dtype)
                if need_h:
                    g_h[lo:hi] = (gc @ w_s).to(work)
                if need_w:
                    g_w += (gc.t() @ h).to(work)
                if need_b:
                    g_b += g.sum(0)
                del g, gc
        ctx.grads = (g_h, g_w, g_b)
        ctx.dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        ctx.mark_non_differentiable(stat, valid)
        return total * coef, stat, valid

    @staticmethod
    def backward(ctx, grad_out: Tensor, _stat, _valid):  # type: ignore[override]
        g_h, g_w, g_b = ctx.grads
        ctx.grads = None
        out = []
        for g, dtype in zip((g_h, g_w, g_b), ctx.dtypes):
            out.append(None if g is None else (g * grad_out.to(g.dtype)).to(dtype))
        return (*out, None, None, None, None, None)


class _PlainRows(torch.autograd.Function):
    """``coef * sum_i D_i`` from gathered student logit rows ``z_s`` ``[N, V]``."""

    @staticmethod
    def forward(ctx, z_s, teacher_of, target_of, row_fn, coef: float, step: int):  # type: ignore[override]
        work = torch.promote_types(z_s.dtype, torch.float32)
        n = z_s.shape[0]
        need = ctx.needs_input_grad[0]
        g_z = torch.zeros_like(z_s) if need else None
        total = torch.zeros((), dtype=work, device=z_s.device)
        stat = torch.zeros(n, dtype=work, device=z_s.device)
        valid = torch.zeros(n, dtype=torch.bool, device=z_s.device)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            target, valid[lo:hi], stat[lo:hi] = target_of(teacher_of(lo, hi))
            d, g = _chunk_grad(z_s[lo:hi].to(work), target, valid[lo:hi], row_fn, need)
            total += d
            if need:
                g_z[lo:hi] = g.mul_(coef).to(z_s.dtype)
        ctx.grad_z = g_z
        ctx.mark_non_differentiable(stat, valid)
        return total * coef, stat, valid

    @staticmethod
    def backward(ctx, grad_out: Tensor, _stat, _valid):  # type: ignore[override]
        g_z, ctx.grad_z = ctx.grad_z, None
        g = None if g_z is None else g_z * grad_out.to(g_z.dtype)
        return g, None, None, None, None, None


def row_divergence(
    student_logits: Tensor | ProjectedLogits,
    teacher_logits: Tensor | ProjectedLogits,
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    target_of: TargetFn,
    row_fn: RowFn,
    coef: float,
    target_width: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, stat [N], valid [N])``: ``loss = coef * sum over valid rows of
    row_fn(z_S,i, target_i)``, with ``z_S,i`` the student logits at
    ``(batch_index[i], student_positions[i])`` and ``target_i`` built by ``target_of`` from
    the teacher logits at ``(batch_index[i], teacher_positions[i])`` (float32, detached).

    Each side may be a logits tensor ``[b, L, V]`` or :class:`ProjectedLogits`.
    ``target_width``: the widest temporary ``target_of`` makes per row (e.g. the number of
    stored entries of a projection), for the row-chunk size. ``loss`` is a float32 scalar
    (float64 for float64 inputs), 0 with a zero gradient when there is no row.
    """
    s, t = student_logits, teacher_logits
    for name, x in (("student_logits", s), ("teacher_logits", t)):
        if not isinstance(x, (Tensor, ProjectedLogits)) or x.dim() != 3:
            raise TypeError(f"{name} must be a [b, L, V] tensor or ProjectedLogits, got {type(x).__name__}")
    device = s.device
    bi, si, ti = batch_index.to(device).long(), student_positions.to(device).long(), teacher_positions.to(device).long()
    n = int(bi.numel())
    work = torch.promote_types(s.dtype, torch.float32)
    if n == 0:
        base = s.hidden if isinstance(s, ProjectedLogits) else s
        zero = base.reshape(-1)[:0].sum().to(work)
        if isinstance(s, ProjectedLogits):
            zero = zero + s.weight.reshape(-1)[:0].sum().to(work)
        return zero, torch.zeros(0, dtype=work, device=device), torch.zeros(0, dtype=torch.bool, device=device)

    if isinstance(t, ProjectedLogits):
        h_t = t.hidden.detach()[bi.to(t.device), ti.to(t.device)].to(device)
        w_t = t.weight.detach().to(device)
        b_t = None if t.bias is None else t.bias.detach().to(device)

        def teacher_of(lo: int, hi: int) -> Tensor:
            return torch.nn.functional.linear(h_t[lo:hi].to(w_t.dtype), w_t, b_t).to(work)
    else:
        z_t = t.detach()[bi.to(t.device), ti.to(t.device)].to(device)

        def teacher_of(lo: int, hi: int) -> Tensor:
            return z_t[lo:hi].to(work)

    width = max(s.shape[2], t.shape[2], int(target_width))
    step = rows_per_chunk(width, device)
    def target_no_grad(z: Tensor) -> tuple[Any, Tensor, Tensor]:
        with torch.no_grad():  # the target is a constant of the student's gradient
            return target_of(z)

    if isinstance(s, ProjectedLogits):
        return _ProjectedRows.apply(s.hidden[bi, si], s.weight, s.bias, teacher_of, target_no_grad, row_fn, float(coef), step)
    return _PlainRows.apply(s[bi, si], teacher_of, target_no_grad, row_fn, float(coef), step)
