"""Fused output layer: the TIDE losses from hidden states, never from ``[b, L, V]`` logits.

A :class:`ProjectedLogits` stands for ``z = hidden @ weight.T + bias`` without
building it. The functions below read only the rows that count (masked student
positions, template pairs, tokens of active chunks), project them to the
vocabulary a row chunk at a time and reduce each chunk to per-row scalars at once:

- :func:`gold_log_probs` (CE and chunk log-probs): ``l(i) = z_i[gold_i] - lse(z_i)``,
  cached per :class:`ProjectedLogits` so that CE and the chunk objectives project a
  shared row once;
- :func:`token_divergence` (``kl``, ``reverse_kl``, ``tidal``): the row-indexed engine
  of :func:`~tide_plugin.objectives.functional.token_divergence` on projected rows.

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

from typing import Literal

import torch
from torch import Tensor

from . import functional as F_
from .functional import _per_example, _rows_per_chunk, _work_dtype

__all__ = ["ProjectedLogits", "chunk_log_probs", "gold_log_probs", "token_divergence"]


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


# ---------------------------------------------------------------------------
# token-level divergences (SPEC 5.1, 5.3)
# ---------------------------------------------------------------------------
class _ProjectedTokenDivergence(torch.autograd.Function):
    """Sum over rows of ``w_i D_i tau^2 / denom`` on the first ``vocab`` ids, from
    projected student rows ``h_s`` ``[N, H]`` and teacher rows ``h_t`` ``[N, H_T]``.

    With ``gold`` ``[N]`` it also returns the rows' gold log-probs over the full
    vocabulary (what CE reads), so that CE and a token objective on the same rows
    project them once; otherwise the second output is empty."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, h_s, w_s, b_s, h_t, w_t, b_t, lam_r, w_r, gold, mode: str, tau: float, vocab: int, denom: float
    ) -> tuple[Tensor, Tensor]:
        work = _work_dtype(h_s.dtype)
        n = h_s.shape[0]
        full = w_s.shape[0] if gold is not None else vocab
        ws, bs = w_s[:full], None if b_s is None else b_s[:full]
        wt, bt = w_t[:vocab], None if b_t is None else b_t[:vocab]
        lse_s = torch.empty(n, dtype=work, device=h_s.device)
        lse_t = torch.empty_like(lse_s)  # teacher (forward, reverse) or mixture (tidal)
        row_kl = torch.empty_like(lse_s)
        lse_full = torch.empty_like(lse_s) if gold is not None else lse_s[:0]
        lp = torch.empty_like(lse_s) if gold is not None else lse_s[:0]
        step = _rows_per_chunk(full, h_s.device)
        for start in range(0, n, step):
            sl = slice(start, start + step)
            z = _project(h_s[sl], ws, bs, work)  # [c, full]
            if gold is not None:
                lse_full[sl] = torch.logsumexp(z, dim=-1)
                lp[sl] = z.gather(1, gold[sl, None]).squeeze(1) - lse_full[sl]
                u_s = z[:, :vocab] / tau
            else:
                u_s = z.div_(tau)  # [c, v]
            del z
            u_t = _project(h_t[sl], wt, bt, work).div_(tau)
            log_ps = torch.log_softmax(u_s, dim=-1)
            lse_s[sl] = (u_s - log_ps)[:, 0]
            if mode == "tidal":
                lam = lam_r[sl, None]
                mix = u_s.mul_(1.0 - lam).add_(u_t.mul_(lam))
                log_q = torch.log_softmax(mix, dim=-1)
                lse_t[sl] = (mix - log_q)[:, 0]
                del mix
            else:
                log_q = torch.log_softmax(u_t, dim=-1)
                lse_t[sl] = (u_t - log_q)[:, 0]
            del u_s, u_t
            if mode == "reverse":
                p_s = log_ps.exp()
                row_kl[sl] = (p_s * (log_ps - log_q)).sum(-1)
            else:  # forward KL(P_T || P_S) or tidal KL(R || P_S); 0 log 0 = 0
                q = log_q.exp()
                row_kl[sl] = (q * (log_q - log_ps)).masked_fill_(q == 0, 0.0).sum(-1)
            del log_ps, log_q
        loss = (row_kl * w_r).sum() if mode == "tidal" else row_kl.sum()
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(h_s, w_s, b_s, h_t, w_t, b_t, lam_r, w_r, gold, lse_s, lse_t, row_kl, lse_full)
            ctx.config = (mode, tau, vocab, denom, full)
        return loss * (tau * tau / denom), lp

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_lp: Tensor):  # type: ignore[override]
        h_s, w_s, b_s, h_t, w_t, b_t, lam_r, w_r, gold, lse_s, lse_t, row_kl, lse_full = ctx.saved_tensors
        mode, tau, vocab, denom, full = ctx.config
        work = lse_s.dtype
        coef = grad_out.to(work) * (tau / denom)  # d(loss)/dz = tau^2/denom * dD/du / tau

        def g_z_of(lo: int, hi: int) -> Tensor:
            z = _project(h_s, w_s[lo:hi], None if b_s is None else b_s[lo:hi], work)
            g = torch.zeros_like(z)
            if hi <= vocab:  # chunks never straddle vocab (see _head_grads' cuts)
                u_s = z / tau
                u_t = _project(h_t, w_t[lo:hi], None if b_t is None else b_t[lo:hi], work).div_(tau)
                log_ps = u_s - lse_s[:, None]
                p_s = log_ps.exp()
                if mode == "forward":  # P_S - P_T
                    g = p_s.sub_(u_t.sub_(lse_t[:, None]).exp_())
                elif mode == "reverse":  # P_S (log P_S - log P_T - KL)
                    g = log_ps.sub_(u_t.sub_(lse_t[:, None])).sub_(row_kl[:, None]).mul_(p_s)
                else:  # w (P_S - R), R = softmax((1 - lam) u_s + lam u_t)
                    lam = lam_r[:, None]
                    r = u_s.mul_(1.0 - lam).add_(u_t.mul_(lam)).sub_(lse_t[:, None]).exp_()
                    g = p_s.sub_(r).mul_(w_r[:, None])
                g.mul_(coef)
            if gold is not None:  # d lp / d z = onehot(gold) - softmax(z)
                g_lp = grad_lp.to(work)
                g.sub_(z.sub_(lse_full[:, None]).exp_().mul_(g_lp[:, None]))
                hit = (gold >= lo) & (gold < hi)
                col = (gold - lo).clamp(0, hi - lo - 1)
                g.scatter_add_(1, col[:, None], torch.where(hit, g_lp, torch.zeros_like(g_lp))[:, None])
            return g

        cuts = (vocab, full) if full > vocab else (vocab,)
        g_h, g_w, g_b = _head_grads(ctx, g_z_of, h_s, w_s, b_s, cuts, work)
        return g_h, g_w, g_b, None, None, None, None, None, None, None, None, None, None


TokenMode = Literal["forward", "reverse", "tidal"]


def token_divergence(
    student_logits: Tensor | ProjectedLogits,
    teacher_logits: Tensor | ProjectedLogits,
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    mode: TokenMode = "forward",
    temperature: float = 2.0,
    shared_vocab_size: int | None = None,
    lam: Tensor | float | None = None,
    weight: Tensor | float | None = None,
) -> Tensor:
    """:func:`~tide_plugin.objectives.functional.token_divergence` for plain logits or
    for projected student *and* teacher logits (same arguments, same value)."""
    if isinstance(student_logits, Tensor) and isinstance(teacher_logits, Tensor):
        return F_.token_divergence(
            student_logits, teacher_logits, batch_index, student_positions, teacher_positions, mode=mode,
            temperature=temperature, shared_vocab_size=shared_vocab_size, lam=lam, weight=weight,
        )
    if not (isinstance(student_logits, ProjectedLogits) and isinstance(teacher_logits, ProjectedLogits)):
        raise TypeError(
            "student and teacher logits must both be tensors or both ProjectedLogits, got "
            f"{type(student_logits).__name__} and {type(teacher_logits).__name__}"
        )
    s, t = student_logits, teacher_logits
    # The reference engine validates everything from shapes alone: let it, on empty stand-ins.
    tau = F_._check_temperature(temperature)
    F_._check_choice("mode", mode, F_._TOKEN_MODES)
    vocab = F_._shared_vocab(torch.empty(0, 0, s.shape[2]), torch.empty(0, 0, t.shape[2]), shared_vocab_size)
    b = s.shape[0]
    if t.shape[0] != b:
        raise ValueError(f"student batch {b} and teacher batch {t.shape[0]} differ")
    n = batch_index.numel()
    if student_positions.numel() != n or teacher_positions.numel() != n:
        raise ValueError(
            f"batch_index ({n}), student_positions ({student_positions.numel()}) and "
            f"teacher_positions ({teacher_positions.numel()}) must have the same length"
        )
    if mode != "tidal" and (lam is not None or weight is not None):
        raise ValueError(f"lam and weight apply to mode 'tidal' only, got mode {mode!r}")
    if n == 0:
        return s.hidden.reshape(-1)[:0].sum().float() + s.weight.reshape(-1)[:0].sum().float()
    for what, idx, size in (
        ("batch_index", batch_index, b),
        ("student_positions", student_positions, s.shape[1]),
        ("teacher_positions", teacher_positions, t.shape[1]),
    ):
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{what} must lie in [0, {size}), got range [{lo}, {hi}]")
    device = s.device
    bi, si, ti = batch_index.to(device), student_positions.to(device), teacher_positions.to(device)
    work = _work_dtype(s.dtype)
    lam_r = w_r = None
    if mode == "tidal":
        lam_r = _per_example("lam", lam, b, device, 0.0).to(work)[bi]
        w_r = _per_example("weight", weight, b, device, 1.0).to(work)[bi]
    h_t = t.hidden.detach()[bi, ti.to(t.device)].to(device)
    # Gold log-probs for CE on the same rows, when they are new to the cache and each
    # student row occurs once (position by position; template pairs may repeat a row).
    gold = None
    rows = torch.zeros(s.shape[:2], dtype=torch.bool, device=device)
    rows[bi, si] = True
    if s.targets is not None and int(rows.sum()) == n and (s._lp_rows is None or not bool((s._lp_rows & rows).any())):
        gold = s.targets.to(device)[bi, si].long()
        if int(gold.min()) < 0 or int(gold.max()) >= s.shape[2]:
            gold = None  # not ids CE could ask for (e.g. padding): keep the plain path
    loss, lp = _ProjectedTokenDivergence.apply(
        s.hidden[bi, si], s.weight, s.bias, h_t, t.weight.detach().to(device),
        None if t.bias is None else t.bias.detach().to(device), lam_r, w_r, gold, mode, tau, vocab, float(n),
    )
    if gold is not None:
        work_lp = torch.zeros(s.shape[:2], dtype=lp.dtype, device=device).index_put((bi, si), lp)
        _store(s, s.targets.to(device), rows, work_lp)
    return loss
