"""The row divergence engine: every divergence between student and teacher rows (token
KL, reverse KL and TIDAL, ``docs/method.md#token-kl``, ``docs/method.md#tidal``; the
cross-tokenizer ``docs/method.md#projected-kl`` and ``docs/method.md#hybrid-kl``; a
plugin's own) is a pure per-row function, and this one engine turns it into a loss on
plain logits or :class:`~tide_plugin.logits.ProjectedLogits`.

:func:`row_divergence` gathers ``N`` student rows and ``N`` teacher rows
(:class:`~tide_plugin.logits.LogitRows`) and returns ``coef * sum_i D_i`` with
``D_i = row_fn(z_S,i, target_i, **row_args_i)``, where ``target_i`` is what ``target_of``
builds from the teacher's logits of the same row (detached) and ``row_args`` are per-row
tensors. It never builds ``[b, L, V]`` logits of projected rows: they are projected a
chunk of rows at a time.

Gradients are exact and computed in the forward pass. Per row chunk, the student rows
are read (projected), ``D`` and ``dD/dz`` come from autograd on that chunk alone (the
divergence stays a plain function, written once, with no hand-written backward), and
the chunk's gradient goes at once to where the rows come from: the logits' gradient
(plain, in the logits' dtype), or ``d hidden`` ``[c, H]`` and float32 ``d weight``
``[V, H]`` / ``d bias`` accumulators (projected). Backward only scales them by the
incoming gradient. No ``[N, V]`` tensor outlives its chunk; the price on the projected
path is one float32 ``[V, H]`` buffer held from forward to backward. The teacher rows
never receive a gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..logits import LogitRows, ProjectedLogits, check_logits, rows_per_chunk

__all__ = ["RowFn", "TargetFn", "chunk_first_positions", "row_divergence"]

TargetFn = Callable[[Tensor], tuple[Any, Tensor | None, Tensor | None]]
"""``target_of(z_T [c, k_T] work dtype) -> (target, valid [c] bool or None, stat [c] or None)``:
the per-row target of ``row_fn`` (a tensor ``[c, ...]`` or a tuple of them), which rows
count (``None``: all) and a per-row statistic to report (``None``: none)."""
RowFn = Callable[..., Tensor]
"""``row_fn(z_S [n, k_S] work dtype, target, **row_args) -> [n]``: a differentiable per-row divergence."""


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


def _index(target: Any, sel: Tensor | slice) -> Any:
    if isinstance(target, tuple):
        return tuple(_index(t, sel) for t in target)
    return target[sel]


def _chunk_grad(z: Tensor, target: Any, valid: Tensor | None, row_fn: RowFn, args: Mapping[str, Tensor],
                need: bool) -> tuple[Tensor, Tensor | None]:
    """``(sum of D over the valid rows, dD/dz [c, k] or None)`` for one chunk ``z``."""
    if valid is not None:
        keep = valid.nonzero(as_tuple=True)[0]
        if keep.numel() < z.shape[0]:
            g = torch.zeros_like(z) if need else None
            if keep.numel() == 0:
                return z.new_zeros(()), g
            d, gk = _chunk_grad(z.index_select(0, keep), _index(target, keep), None, row_fn,
                                {k: v[keep] for k, v in args.items()}, need)
            if need:
                g.index_copy_(0, keep, gk)
            return d, g
    with torch.enable_grad():
        z.requires_grad_(need)
        d = row_fn(z, target, **args).sum()
        g = torch.autograd.grad(d, z)[0] if need else None
    return d.detach(), g


class _RowDivergence(torch.autograd.Function):
    """``coef * sum_i D_i`` over the student rows, with its gradient computed in forward."""

    @staticmethod
    def forward(ctx, student: LogitRows, teacher: LogitRows, plan: tuple, *leaves: Tensor):  # type: ignore[override]  # noqa: ARG004
        target_of, row_fn, row_args, coef, scale, cols_s, cols_t, step = plan
        n = student.n
        needs = ctx.needs_input_grad[3:]
        need = any(needs)
        buffers = student.grad_buffers(needs)
        total = torch.zeros((), dtype=student.work, device=student.device)
        stat = torch.zeros(n, dtype=student.work, device=student.device)
        valid = torch.ones(n, dtype=torch.bool, device=student.device)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            with torch.no_grad():  # the target is a constant of the student's gradient
                target, ok, st = target_of(teacher.read(lo, hi, cols_t))
            if ok is not None:
                valid[lo:hi] = ok
            if st is not None:
                stat[lo:hi] = st
            args = {k: v[lo:hi] for k, v in row_args.items()}
            z = student.read(lo, hi, cols_s)
            if scale != 1.0:
                z.mul_(scale)  # in place, before the graph: its factor joins coef below
            d, g = _chunk_grad(z, target, ok, row_fn, args, need)
            del target, z
            total += d
            if need:
                student.add_grad(buffers, lo, hi, g.mul_(coef * scale))
            del g
        ctx.student = student
        ctx.save_for_backward(*buffers)
        ctx.mark_non_differentiable(stat, valid)
        return total * coef, stat, valid

    @staticmethod
    def backward(ctx, grad_out: Tensor, _stat, _valid):  # type: ignore[override]
        grads = ctx.student.grads(list(ctx.saved_tensors), grad_out)
        return (None, None, None, *grads)


def row_divergence(
    student_logits: Tensor | ProjectedLogits,
    teacher_logits: Tensor | ProjectedLogits,
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    target_of: TargetFn,
    row_fn: RowFn,
    coef: float = 1.0,
    row_args: Mapping[str, Tensor] | None = None,
    student_columns: int | None = None,
    teacher_columns: int | None = None,
    student_scale: float = 1.0,
    target_width: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, stat [N], valid [N])``: ``loss = coef * sum over valid rows of
    row_fn(z_S,i, target_i, **row_args_i)``, with ``z_S,i`` the student logits at
    ``(batch_index[i], student_positions[i])`` and ``target_i`` built by ``target_of`` from
    the teacher logits at ``(batch_index[i], teacher_positions[i])`` (work dtype, detached).

    Each side may be a logits tensor ``[b, L, V]`` or :class:`ProjectedLogits`.
    :param row_args: per-row tensors ``[N]`` (e.g. TIDAL's ``lam_i``), handed to ``row_fn``
        sliced like the rows. :param student_columns, teacher_columns: read only the first
        so many columns of each side (default all; e.g. a shared vocabulary slice).
    :param student_scale: ``row_fn`` receives ``student_scale * z_S`` (e.g. ``1 / tau``),
        scaled in place outside the graph.
    :param target_width: the widest temporary ``target_of`` makes per row (e.g. the number
        of stored entries of a projection), for the row-chunk size.
    :return: ``loss`` is a float32 scalar (float64 for float64 inputs), 0 with a zero
        gradient when there is no row.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    s, t = student_logits, teacher_logits
    device = s.device
    bi = batch_index.to(device).long()
    student = LogitRows(s, bi, student_positions)
    teacher = LogitRows(t, bi.to(t.device), teacher_positions, device=device, detach=True)
    n = student.n
    if n == 0:
        empty = torch.zeros(0, dtype=student.work, device=device)
        return student.zero(), empty, torch.zeros(0, dtype=torch.bool, device=device)
    cols_s = s.shape[2] if student_columns is None else int(student_columns)
    cols_t = t.shape[2] if teacher_columns is None else int(teacher_columns)
    step = rows_per_chunk(max(cols_s, cols_t, int(target_width)), device)
    args = {k: v.to(device) for k, v in (row_args or {}).items()}
    plan = (target_of, row_fn, args, float(coef), float(student_scale), cols_s, cols_t, step)
    return _RowDivergence.apply(student, teacher, plan, *student.leaves)
