"""Fused output layer: the TIDE losses from hidden states, never from ``[b, L, V]`` logits.

A :class:`ProjectedLogits` stands for ``z = hidden @ weight.T + bias`` without
building it. The functions below read only the rows that count (masked student
positions, template pairs, tokens of active chunks), project them to the
vocabulary a row chunk at a time and reduce each chunk to per-row scalars at once:

- :func:`gold_log_probs` (CE and chunk log-probs): ``l(i) = z_i[gold_i] - lse(z_i)``,
  cached per :class:`ProjectedLogits` so that CE and the chunk objectives project a
  shared row once;
- :func:`~tide_plugin.objectives.fused_token.token_divergence` (``kl``, ``reverse_kl``,
  ``tidal``): the row-indexed token engine on projected rows.

Gradients are exact: forward keeps one to three float32 scalars per row (the
logsumexps, a row KL); backward rebuilds the logits a *vocabulary* chunk at a time
for all rows, so ``d hidden`` (``[N, H]``, float32 accumulation) and ``d weight``,
``d bias`` (written chunk by chunk, never accumulated across chunks) come from
``[N, V_c]`` temporaries only. Tied embeddings need nothing special: ``weight`` is the
embedding matrix and autograd adds both uses. The extra cost is one more projection
of the used rows in backward (forward, recompute, two gradient products) against
three products over *all* rows when the logits are built in full.

Both functions accept plain logits tensors too and then call the reference engines
of :mod:`~tide_plugin.objectives.functional`, so an objective written against them
runs on either path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F_
from .functional import _rows_per_chunk, _work_dtype

__all__ = ["ProjectedLogits", "chunk_log_probs", "gold_log_probs", "nll_rows"]


class ProjectedLogits:
    """Logits ``hidden @ weight.T + bias`` ``[b, L, V]``, never materialised.

    :param hidden: ``[b, L, H]`` hidden states after the final norm (may require grad).
    :param weight: ``[V, H]`` output projection (the embedding matrix when tied).
    :param bias: ``[V]`` or ``None``.
    :param targets: ``[b, L]`` gold ids CE will read (optional; see :attr:`targets`).
    """

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None, targets: Tensor | None = None) -> None:
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
            raise ValueError(f"hidden must be a float tensor [b, L, H], got {getattr(hidden, 'shape', type(hidden).__name__)}")
        if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
            raise ValueError(
                f"weight must be [V, H] with H = {hidden.shape[2]} (the hidden size), got "
                f"{getattr(weight, 'shape', type(weight).__name__)}"
            )
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {list(bias.shape)}")
        if targets is not None and tuple(targets.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"targets must be [b, L] = {list(hidden.shape[:2])}, got {list(targets.shape)}")
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.targets = targets
        """``[b, L]`` ids CE will ask gold log-probs for (``x0``): a token objective then
        computes them on its rows in the same pass."""
        self._lp: Tensor | None = None  # [b, L] gold log-probs of the rows computed so far
        self._lp_rows: Tensor | None = None  # [b, L] bool
        self._lp_ids: Tensor | None = None

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


def _project(h: Tensor, weight: Tensor, bias: Tensor | None, work: torch.dtype) -> Tensor:
    """``[n, H] -> [n, V_c]`` in the weights' dtype (as the model's head), then ``work``."""
    return torch.nn.functional.linear(h.to(weight.dtype), weight, bias).to(work)


def _head_grads(ctx, g_z_of, h: Tensor, weight: Tensor, bias: Tensor | None, cuts: tuple[int, ...], work: torch.dtype):
    """Backward over vocabulary chunks: ``g_z_of(lo, hi)`` gives ``dL/dz[:, lo:hi]``
    ``[N, hi-lo]``; returns ``(d h [N, H], d weight [V, H], d bias [V])`` (``None`` where
    not needed). Chunks end at each of ``cuts`` (ascending); columns ``>= cuts[-1]`` get
    a zero gradient."""
    n = h.shape[0]
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = bias is not None and ctx.needs_input_grad[2]
    g_h = torch.zeros(n, h.shape[1], dtype=work, device=h.device) if need_h else None
    g_w = torch.zeros_like(weight) if need_w else None
    g_b = torch.zeros_like(bias) if need_b else None
    width = _rows_per_chunk(max(n, 1), h.device)
    starts = (0, *cuts[:-1])
    for lo, hi in ((a, min(end, a + width)) for begin, end in zip(starts, cuts) for a in range(begin, end, width)):
        g_z = g_z_of(lo, hi)  # [N, hi - lo] work dtype
        g_zc = g_z.to(weight.dtype)
        if need_h:
            g_h += (g_zc @ weight[lo:hi]).to(work)
        if need_w:
            g_w[lo:hi] = (g_zc.t() @ h.to(weight.dtype)).to(weight.dtype)
        if need_b:
            g_b[lo:hi] = g_z.sum(0).to(bias.dtype)
        del g_z, g_zc
    return (g_h.to(h.dtype) if need_h else None), g_w, g_b


# ---------------------------------------------------------------------------
# gold-token log-probs (CE, chunk log-probs)
# ---------------------------------------------------------------------------
class _GoldLogProb(torch.autograd.Function):
    """``l(i) = z_i[gold_i] - logsumexp(z_i)`` over the full vocabulary, ``[N]``."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, gold: Tensor) -> Tensor:  # type: ignore[override]
        work = _work_dtype(h.dtype)
        n = h.shape[0]
        lse = torch.empty(n, dtype=work, device=h.device)
        gold_z = torch.empty(n, dtype=work, device=h.device)
        step = _rows_per_chunk(weight.shape[0], h.device)
        for start in range(0, n, step):
            sl = slice(start, start + step)
            z = _project(h[sl], weight, bias, work)  # [c, V]
            lse[sl] = torch.logsumexp(z, dim=-1)
            gold_z[sl] = z.gather(1, gold[sl, None]).squeeze(1)
            del z
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(h, weight, bias, gold, lse)
        return gold_z - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        h, weight, bias, gold, lse = ctx.saved_tensors
        work = lse.dtype
        g = grad_out.to(work)

        def g_z_of(lo: int, hi: int) -> Tensor:
            # d l / d z = onehot(gold) - softmax(z)
            g_z = _project(h, weight[lo:hi], None if bias is None else bias[lo:hi], work)
            g_z = g_z.sub_(lse[:, None]).exp_().mul_(-g[:, None])
            hit = (gold >= lo) & (gold < hi)  # no host sync: scatter zeros where the gold id is elsewhere
            col = (gold - lo).clamp(0, hi - lo - 1)
            return g_z.scatter_add_(1, col[:, None], torch.where(hit, g, torch.zeros_like(g))[:, None])

        g_h, g_w, g_b = _head_grads(ctx, g_z_of, h, weight, bias, (weight.shape[0],), work)
        return g_h, g_w, g_b, None


def _check_ids(name: str, ids: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(ids.shape)}")


def gold_log_probs(logits: ProjectedLogits, ids: Tensor, rows: Tensor) -> Tensor:
    """Gold-token log-probs ``z[b, i, ids] - logsumexp(z[b, i])`` at ``rows``.

    :param logits: projected logits ``[b, L, V]``.
    :param ids: ``[b, L]`` long, the gold ids. :param rows: ``[b, L]`` bool.
    :return: ``[b, L]`` float32 (float64 for float64 hidden states), 0 off ``rows``
        (possibly nonzero at rows an earlier call asked for: mask it yourself).
        Rows asked for before with the same ``ids`` are not projected again.
    """
    b, length, vocab = logits.shape
    _check_ids("ids", ids, (b, length))
    if not isinstance(rows, Tensor) or rows.dtype != torch.bool or tuple(rows.shape) != (b, length):
        raise ValueError(f"rows must be a bool tensor [b, L] = [{b}, {length}]")
    device = logits.device
    rows, ids = rows.to(device), ids.to(device)
    same = logits._lp is not None and (logits._lp_ids is ids or torch.equal(logits._lp_ids, ids))
    missing = rows & ~logits._lp_rows if same else rows
    b_idx, pos = missing.nonzero(as_tuple=True)
    if b_idx.numel() == 0 and same:
        return logits._lp
    work = _work_dtype(logits.dtype)
    out = torch.zeros(b, length, dtype=work, device=device)
    if b_idx.numel():
        gold = ids[b_idx, pos].long()
        lo, hi = int(gold.min()), int(gold.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"gold ids must lie in [0, {vocab}), got range [{lo}, {hi}]")
        lp = _GoldLogProb.apply(logits.hidden[b_idx, pos], logits.weight, logits.bias, gold)
        out = out.index_put((b_idx, pos), lp)
    return _store(logits, ids, missing, out)


def _store(logits: ProjectedLogits, ids: Tensor, rows: Tensor, lp: Tensor) -> Tensor:
    """Add gold log-probs ``lp`` ``[b, L]`` (0 off ``rows``) to the cache of ``logits``."""
    same = logits._lp is not None and (logits._lp_ids is ids or torch.equal(logits._lp_ids, ids))
    if same:
        logits._lp, logits._lp_rows = logits._lp + lp, logits._lp_rows | rows
    else:
        logits._lp, logits._lp_rows, logits._lp_ids = lp, rows.clone(), ids
    return logits._lp


def chunk_log_probs(logits: Tensor | ProjectedLogits, ids: Tensor, chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """:func:`~tide_plugin.objectives.functional.chunk_log_probs` for plain or projected
    logits: ``out[b, c] = sum_{i: chunk_ids[b, i] == c} l(i)``, ``[b, C]`` float32."""
    if isinstance(logits, Tensor):
        return F_.chunk_log_probs(logits, ids, chunk_ids, num_chunks)
    if not isinstance(logits, ProjectedLogits):
        raise TypeError(f"logits must be a tensor or ProjectedLogits, got {type(logits).__name__}")
    b, length, _ = logits.shape
    _check_ids("chunk_ids", chunk_ids, (b, length))
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    chunk_ids = chunk_ids.to(logits.device)
    used = chunk_ids >= 0
    if used.any() and int(chunk_ids.max()) >= num_chunks:
        raise ValueError(f"chunk id {int(chunk_ids.max())} is out of range for num_chunks={num_chunks}")
    lp = gold_log_probs(logits, ids, used)
    b_idx, pos = used.nonzero(as_tuple=True)
    out = torch.zeros(b, num_chunks, dtype=lp.dtype, device=lp.device)
    out = out.index_put((b_idx, chunk_ids[b_idx, pos].long()), lp[b_idx, pos], accumulate=True)
    return out.float() if out.dtype == torch.float32 else out


def nll_rows(logits: Tensor | ProjectedLogits, targets: Tensor, rows: Tensor) -> Tensor:
    """``CE(z_i, targets_i)`` at the True entries of ``rows`` ``[b, L]``, ``[N]`` float32
    (row-major order), for plain or projected logits."""
    if isinstance(logits, ProjectedLogits):
        return -gold_log_probs(logits, targets, rows)[rows]
    return torch.nn.functional.cross_entropy(logits[rows].float(), targets[rows], reduction="none")
