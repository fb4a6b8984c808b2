"""Chunk-level losses (docs/method.md#calm, docs/method.md#tidal): chunk log-probs, CALM and chunk TIDAL."""

from __future__ import annotations


import torch
from torch import Tensor

from ...logits import ProjectedLogits, check_ids, check_logits, gold_log_probs, work_dtype
from ._common import PROB_CLAMP, REDUCTIONS, Reduction, _check_bool, _check_choice, _check_temperature, _per_example


# ---------------------------------------------------------------------------
# chunk log-probs (docs/method.md#calm)
# ---------------------------------------------------------------------------
def chunk_log_probs(logits: Tensor | ProjectedLogits, ids: Tensor, chunk_ids: Tensor, num_chunks: int,
                    *, gold: Tensor | None = None) -> Tensor:
    """Per-chunk sums of gold-token log-probs (docs/method.md#calm).

    ``l(i) = z[i, ids_i] - logsumexp(z[i, :])`` over the FULL vocabulary;
    ``out[b, c] = sum_{i: chunk_ids[b, i] == c} l(i)``. Only rows with
    ``chunk_ids >= 0`` are read.

    :param logits: ``[b, L, V]``, any float dtype, or
        :class:`~tide_plugin.logits.ProjectedLogits`.
    :param ids: ``[b, L]`` long, the gold (clean) ids.
    :param chunk_ids: ``[b, L]`` long, chunk of each token, ``-1`` for none.
    :param num_chunks: ``C``, chunk ids must be ``< C``.
    :param gold: ``(lp [b, L], rows [b, L] bool)`` gold log-probs of ``ids`` already
        computed (:func:`~tide_plugin.logits.gold_log_probs`, e.g. CE's rows): rows they
        cover are read from ``lp``, the others are computed.
    :return: ``[b, C]`` float32; 0 for chunks without tokens.
    """
    check_logits("logits", logits)
    b, length, vocab = logits.shape
    check_ids("ids", ids, (b, length))
    check_ids("chunk_ids", chunk_ids, (b, length))
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    device = logits.device
    chunk_ids = chunk_ids.to(device)
    used = chunk_ids >= 0
    if used.any() and int(chunk_ids.max()) >= num_chunks:
        raise ValueError(f"chunk id {int(chunk_ids.max())} is out of range for num_chunks={num_chunks}")
    if gold is None:
        lp = gold_log_probs(logits, ids, used)
    else:
        known, covered = gold
        lp = torch.where(covered, known, gold_log_probs(logits, ids, used & ~covered))
    b_idx, pos = used.nonzero(as_tuple=True)
    out = torch.zeros(b, num_chunks, dtype=lp.dtype, device=lp.device)
    return out.index_put((b_idx, chunk_ids[b_idx, pos].long()), lp[b_idx, pos], accumulate=True)


# ---------------------------------------------------------------------------
# CALM, Reverse CALM, chunk TIDAL (docs/method.md#calm, docs/method.md#tidal)
# ---------------------------------------------------------------------------
def _check_chunks(student_chunk_lp: Tensor, teacher_chunk_lp: Tensor, chunk_mask: Tensor) -> None:
    for name, x in (("student_chunk_lp", student_chunk_lp), ("teacher_chunk_lp", teacher_chunk_lp)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor [b, C], got {getattr(x, 'shape', type(x).__name__)}")
    if student_chunk_lp.shape != teacher_chunk_lp.shape:
        raise ValueError(
            f"student_chunk_lp {list(student_chunk_lp.shape)} and teacher_chunk_lp "
            f"{list(teacher_chunk_lp.shape)} must have the same shape [b, C]"
        )
    _check_bool("chunk_mask", chunk_mask, tuple(student_chunk_lp.shape))


def _chunk_prob(lp: Tensor, tau: float) -> Tensor:
    return torch.exp(lp.to(work_dtype(lp.dtype)) / tau).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)


def _chunk_reduce(loss: Tensor, chunk_mask: Tensor, reduction: str) -> Tensor:
    _check_choice("reduction", reduction, REDUCTIONS)
    total = torch.where(chunk_mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)).sum()
    if reduction == "sum":
        return total
    # clamp_min(1): no active chunk gives 0 (with a zero gradient), not 0/0.
    return total / chunk_mask.sum().clamp_min(1)


def calm(
    student_chunk_lp: Tensor,
    teacher_chunk_lp: Tensor,
    chunk_mask: Tensor,
    *,
    temperature: float = 2.0,
    reverse: bool = False,
    bernoulli_kl: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """CALM and Reverse CALM (docs/method.md#calm; docs/method.md#calm).

    ``s = clamp(exp(lp_S / tau))``, ``q = clamp(exp(lp_T / tau))`` (clamp to
    ``[1e-7, 1 - 1e-7]``, teacher detached). CALM: ``-(q log s + (1-q) log(1-s))``;
    Reverse CALM: ``-(s log q + (1-s) log(1-q))``, whose gradient w.r.t. ``lp_S`` is
    ``(s / tau) log((1-q)/q)``: for ``q < 1/2`` it lowers ``s`` whatever ``s`` is.
    ``bernoulli_kl=True`` (ours, with ``reverse``) adds the student's Bernoulli
    entropy: ``KL(Bern(s) || Bern(q)) = s log(s/q) + (1-s) log((1-s)/(1-q))``, gradient
    ``(s / tau)(logit(s) - logit(q))``, which pulls ``s`` towards ``q``.

    :param student_chunk_lp: ``[b, C]`` chunk log-probs of the student.
    :param teacher_chunk_lp: ``[b, C]`` chunk log-probs of the teacher (detached).
    :param chunk_mask: ``[b, C]`` bool, active chunks.
    :param reduction: ``mean`` over active chunks, or ``sum``.
    :return: float32 scalar, the mean over active chunks; 0 when none.
    """
    _check_chunks(student_chunk_lp, teacher_chunk_lp, chunk_mask)
    tau = _check_temperature(temperature)
    if not isinstance(bernoulli_kl, bool):
        raise ValueError(f"bernoulli_kl must be True or False, got {bernoulli_kl!r}")
    if bernoulli_kl and not reverse:
        raise ValueError(
            "bernoulli_kl=True needs reverse=True: forward CALM already has the gradient of KL(Bern(q) || Bern(s))"
        )
    s = _chunk_prob(student_chunk_lp, tau)
    q = _chunk_prob(teacher_chunk_lp.detach(), tau)
    if bernoulli_kl:
        loss = s * (s.log() - q.log()) + (1.0 - s) * (torch.log1p(-s) - torch.log1p(-q))
    elif reverse:
        loss = -(s * q.log() + (1.0 - s) * torch.log1p(-q))
    else:
        loss = -(q * s.log() + (1.0 - q) * torch.log1p(-s))
    return _chunk_reduce(loss, chunk_mask, reduction)


def tidal_calm(
    student_chunk_lp: Tensor,
    teacher_chunk_lp: Tensor,
    chunk_mask: Tensor,
    lam: Tensor,
    *,
    weight: Tensor | None = None,
    temperature: float = 2.0,
    reverse: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Chunk TIDAL (docs/method.md#tidal).

    ``m = stopgrad(clamp((1 - lam_b) s + lam_b q))``; loss
    ``-(m log s + (1-m) log(1-s)) * omega_b`` summed over active chunks and divided
    by their count. ``reverse`` (the reference's ``reverse_alm_taid``) swaps the roles:
    ``-(s log m + (1-s) log(1-m)) * omega_b``, the gradient flowing through ``s``.

    :param student_chunk_lp, teacher_chunk_lp: ``[b, C]``; :param chunk_mask: ``[b, C]`` bool.
    :param lam: ``[b]``; :param weight: ``[b]`` timestep weights (default 1).
    :param reduction: ``mean`` over active chunks, or ``sum``.
    :return: float32 scalar; 0 when no chunk is active.
    """
    _check_chunks(student_chunk_lp, teacher_chunk_lp, chunk_mask)
    tau = _check_temperature(temperature)
    b = student_chunk_lp.shape[0]
    device = student_chunk_lp.device
    s = _chunk_prob(student_chunk_lp, tau)
    q = _chunk_prob(teacher_chunk_lp.detach(), tau)
    lam_b = _per_example("lam", lam, b, device, 0.0).to(s.dtype)[:, None]
    w_b = _per_example("weight", weight, b, device, 1.0).to(s.dtype)[:, None]
    m = ((1.0 - lam_b) * s.detach() + lam_b * q).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
    if reverse:
        loss = -(s * m.log() + (1.0 - s) * torch.log1p(-m)) * w_b
    else:
        loss = -(m * s.log() + (1.0 - m) * torch.log1p(-s)) * w_b
    return _chunk_reduce(loss, chunk_mask, reduction)
