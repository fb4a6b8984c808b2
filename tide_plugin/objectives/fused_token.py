"""Token divergences (``kl``, ``reverse_kl``, ``tidal``; docs/method.md#token-kl, docs/method.md#tidal) on the fused
output layer: :func:`token_divergence` takes the arguments of
:func:`tide_plugin.objectives.functional.token_divergence`, with plain logits or with
:class:`~tide_plugin.objectives.fused.ProjectedLogits` for student and teacher (see
:mod:`tide_plugin.objectives.fused` for the scheme: rows only, per-row scalars in
forward, vocabulary chunks in backward)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import functional as F_
from .functional import _per_example, _rows_per_chunk, _work_dtype
from .fused import ProjectedLogits, _head_grads, _project, _store

__all__ = ["token_divergence"]


# ---------------------------------------------------------------------------
# token-level divergences (docs/method.md#token-kl, docs/method.md#tidal)
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
            lse_s[sl] = torch.logsumexp(u_s, dim=-1)
            log_ps = u_s - lse_s[sl, None]
            if mode == "tidal":
                lam = lam_r[sl, None]
                mix = u_s.mul_(1.0 - lam).add_(u_t.mul_(lam))
                lse_t[sl] = torch.logsumexp(mix, dim=-1)
                log_q = mix.sub_(lse_t[sl, None])
                del mix
            else:
                lse_t[sl] = torch.logsumexp(u_t, dim=-1)
                log_q = u_t.sub_(lse_t[sl, None])
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
            g = None
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
                p_lp = z.sub_(lse_full[:, None]).exp_().mul_(g_lp[:, None])
                g = p_lp.neg_() if g is None else g.sub_(p_lp)
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
    tau, vocab, n = F_.check_divergence_inputs(
        s.shape, t.shape, batch_index, student_positions, teacher_positions,
        mode=mode, temperature=temperature, shared_vocab_size=shared_vocab_size, lam=lam, weight=weight,
    )
    if n == 0:
        return s.hidden.reshape(-1)[:0].sum().float() + s.weight.reshape(-1)[:0].sum().float()
    b = s.shape[0]
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
