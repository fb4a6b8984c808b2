"""Token-level losses (docs/method.md#token-kl, docs/method.md#tidal): rows, the divergences as pure
functions of row log-probs, and the token losses on the row engine (:mod:`..rows`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ...logits import ProjectedLogits, check_logits
from ..rows import row_divergence
from ._common import (
    REDUCTIONS,
    Reduction,
    _check_bool,
    _check_choice,
    _check_temperature,
    _per_example,
    _shared_vocab,
)

# ---------------------------------------------------------------------------
# token-level losses: KL, reverse KL, TIDAL (docs/method.md#token-kl, docs/method.md#tidal)
# ---------------------------------------------------------------------------
def masked_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(batch_index, position_index)`` ``[N]`` each, of the True entries of ``mask`` ``[b, L]``."""
    b_idx, pos = mask.nonzero(as_tuple=True)
    return b_idx, pos


def aligned_rows(
    pair_student: Tensor, pair_teacher: Tensor, pair_mask: Tensor, masked: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of template-aligned pairs that count (docs/method.md#template-alignment): ``pair_mask`` and the
    student position is masked.

    :param pair_student: ``[b, P]`` long, student positions.
    :param pair_teacher: ``[b, P]`` long, teacher positions.
    :param pair_mask: ``[b, P]`` bool, real pairs.
    :param masked: ``[b, L]`` bool, masked student positions.
    :return: ``(batch_index, student_position, teacher_position)``, ``[N]`` long each.
    """
    if pair_student.shape != pair_teacher.shape or pair_student.shape != pair_mask.shape:
        raise ValueError(
            f"pair_student {list(pair_student.shape)}, pair_teacher {list(pair_teacher.shape)} and "
            f"pair_mask {list(pair_mask.shape)} must have the same shape [b, P]"
        )
    if pair_mask.dtype != torch.bool or masked.dtype != torch.bool:
        raise TypeError(f"pair_mask and masked must be bool, got {pair_mask.dtype} and {masked.dtype}")
    b, length = masked.shape
    if pair_student.dim() != 2 or pair_student.shape[0] != b:
        raise ValueError(f"pairs must have shape [b={b}, P], got {list(pair_student.shape)}")
    safe = pair_student.clamp(0, max(length - 1, 0))
    counts = pair_mask & masked.gather(1, safe) if length > 0 else pair_mask & False
    b_idx, p_idx = counts.nonzero(as_tuple=True)
    return b_idx, pair_student[b_idx, p_idx], pair_teacher[b_idx, p_idx]


# ---------------------------------------------------------------------------
# the divergences: pure functions of row log-probs (docs/method.md#token-kl, docs/method.md#tidal)
# ---------------------------------------------------------------------------
TokenDivergenceFn = Callable[..., Tensor]
"""``divergence(log_ps [n, v], log_pt [n, v], **row_args) -> [n]``: a per-row divergence
between the student's and the teacher's log-probs at temperature ``tau`` (``log_pt``
carries no gradient; :func:`token_divergence` hands it finite: a ``-inf`` is clamped to
the dtype's lowest value, so ``p log p`` is 0 where ``p`` is 0). Plain differentiable
torch code: :func:`token_divergence` gets its exact gradient by autograd, a chunk of
rows at a time, on plain or projected logits."""


def forward_kl(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    """``KL(P_T || P_S)`` per row (docs/method.md#token-kl)."""
    p_t = log_pt.exp()
    return torch.linalg.vecdot(p_t, log_pt) - torch.linalg.vecdot(p_t, log_ps)


def reverse_kl(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    """``KL(P_S || P_T)`` per row (docs/method.md#token-kl)."""
    return torch.linalg.vecdot(log_ps.exp(), log_ps - log_pt)


def tidal(log_ps: Tensor, log_pt: Tensor, lam: Tensor, weight: Tensor) -> Tensor:
    """``omega_i KL(R_i || P_S,i)`` per row, ``R = stopgrad(softmax((1 - lam_i) log P_S + lam_i log P_T))``
    (the same as mixing the tempered logits: a row's constant cancels; docs/method.md#tidal)."""
    lam = lam.to(log_ps.dtype)[:, None]
    log_r = torch.log_softmax((1.0 - lam) * log_ps.detach() + lam * log_pt, dim=-1)  # finite: finite inputs
    r = log_r.exp()
    return weight.to(log_ps.dtype) * (torch.linalg.vecdot(r, log_r) - torch.linalg.vecdot(r, log_ps))


DIVERGENCES: dict[str, TokenDivergenceFn] = {"forward": forward_kl, "reverse": reverse_kl, "tidal": tidal}
"""The built-in token divergences by ``mode``."""


def check_divergence_inputs(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    mode: str | TokenDivergenceFn,
    temperature: float,
    shared_vocab_size: int | None,
    lam: Tensor | float | None,
    weight: Tensor | float | None,
) -> tuple[float, int, int]:
    """Validate :func:`token_divergence`'s arguments from shapes alone: ``(tau, shared
    vocabulary, number of rows)``; every bad value is named with what is allowed."""
    tau = _check_temperature(temperature)
    if not callable(mode):
        _check_choice("mode", mode, tuple(DIVERGENCES))
    vocab = _shared_vocab(torch.empty(0, 0, student_shape[2]), torch.empty(0, 0, teacher_shape[2]), shared_vocab_size)
    b = student_shape[0]
    if teacher_shape[0] != b:
        raise ValueError(f"student batch {b} and teacher batch {teacher_shape[0]} differ")
    n = batch_index.numel()
    if student_positions.numel() != n or teacher_positions.numel() != n:
        raise ValueError(
            f"batch_index ({n}), student_positions ({student_positions.numel()}) and "
            f"teacher_positions ({teacher_positions.numel()}) must have the same length"
        )
    if mode != "tidal" and (lam is not None or weight is not None):
        raise ValueError(f"lam and weight apply to mode 'tidal' only, got mode {getattr(mode, '__name__', mode)!r}")
    if n:
        for what, idx, size in (
            ("batch_index", batch_index, b),
            ("student_positions", student_positions, student_shape[1]),
            ("teacher_positions", teacher_positions, teacher_shape[1]),
        ):
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= size:
                raise ValueError(f"{what} must lie in [0, {size}), got range [{lo}, {hi}]")
    return tau, vocab, n


def _tempered_rows(divergence: TokenDivergenceFn, tau: float):
    """``(target_of, row_fn)`` for :func:`~tide_plugin.objectives.rows.row_divergence`:
    the teacher's log-probs at ``tau`` as the target, ``divergence`` of the student's."""

    def target_of(z_t: Tensor):
        log_pt = torch.log_softmax(z_t.div_(tau), dim=-1)
        return log_pt.clamp_min_(torch.finfo(log_pt.dtype).min), None, None

    def row_fn(u_s: Tensor, log_pt: Tensor, **row_args: Tensor) -> Tensor:  # u_s = z_S / tau (the engine scales)
        return divergence(torch.log_softmax(u_s, dim=-1), log_pt, **row_args)

    return target_of, row_fn


def token_divergence(
    student_logits: Tensor | ProjectedLogits,
    teacher_logits: Tensor | ProjectedLogits,
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    mode: Literal["forward", "reverse", "tidal"] | TokenDivergenceFn = "forward",
    temperature: float = 2.0,
    shared_vocab_size: int | None = None,
    lam: Tensor | float | None = None,
    weight: Tensor | float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """The row-indexed token loss behind :func:`token_kl` and :func:`tidal_kl`.

    Row ``i`` compares ``student_logits[batch_index[i], student_positions[i]]``
    with ``teacher_logits[batch_index[i], teacher_positions[i]]`` on the first
    ``shared_vocab_size`` ids, so template-aligned pairs need no gathered copy of
    either side.

    :param student_logits: ``[b, L, V_S]``, any float dtype, may require grad, or
        :class:`~tide_plugin.logits.ProjectedLogits` (then the teacher's too).
    :param teacher_logits: ``[b, L_T, V_T]``, receives no gradient.
    :param batch_index, student_positions, teacher_positions: ``[N]`` long.
    :param mode: ``forward`` KL(P_T||P_S), ``reverse`` KL(P_S||P_T), ``tidal``
        KL(R||P_S) with ``R = stopgrad(softmax(((1-lam) z_S + lam z_T)/tau))``; or a
        divergence of your own, a pure function ``divergence(log_ps, log_pt) -> [n]`` of
        the rows' log-probs at ``tau`` (:data:`TokenDivergenceFn`): it gets the same
        row engine, on plain and projected logits, with its exact gradient.
    :param lam: ``[b]`` (``tidal`` only).
    :param weight: ``[b]`` per-example weights ``omega(t)`` (``tidal`` only; default 1).
    :param reduction: ``mean`` (over the ``N`` rows) or ``sum``.
    :return: float32 scalar ``sum_i w_i D_i * tau^2`` (``/ N`` for ``mean``); 0 when ``N == 0``.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if isinstance(student_logits, ProjectedLogits) != isinstance(teacher_logits, ProjectedLogits):
        raise TypeError(
            "student and teacher logits must both be tensors or both ProjectedLogits, got "
            f"{type(student_logits).__name__} and {type(teacher_logits).__name__}"
        )
    _check_choice("reduction", reduction, REDUCTIONS)
    mode = next((name for name, fn in DIVERGENCES.items() if fn is mode), mode)  # a built-in by its function
    tau, vocab, n = check_divergence_inputs(
        student_logits.shape, teacher_logits.shape, batch_index, student_positions, teacher_positions,
        mode=mode, temperature=temperature, shared_vocab_size=shared_vocab_size, lam=lam, weight=weight,
    )
    divergence = mode if callable(mode) else DIVERGENCES[mode]
    row_args: dict[str, Tensor] = {}
    device = student_logits.device
    if mode == "tidal" and n:
        b, bi = student_logits.shape[0], batch_index.to(device).long()
        row_args = {"lam": _per_example("lam", lam, b, device, 0.0)[bi],
                    "weight": _per_example("weight", weight, b, device, 1.0)[bi]}
    target_of, row_fn = _tempered_rows(divergence, tau)
    loss, _, _ = row_divergence(
        student_logits, teacher_logits, batch_index, student_positions, teacher_positions, target_of=target_of,
        row_fn=row_fn, coef=tau * tau / (max(n, 1) if reduction == "mean" else 1), row_args=row_args,
        student_columns=vocab, teacher_columns=vocab, student_scale=1.0 / tau,
    )
    return loss if loss.dtype == torch.float64 else loss.float()


def _check_aligned(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> None:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student_logits {list(student_logits.shape)} and teacher_logits {list(teacher_logits.shape)} "
            "must agree on [b, L] (position-by-position alignment)"
        )
    _check_bool("mask", mask, tuple(student_logits.shape[:2]))


def token_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    temperature: float = 2.0,
    shared_vocab_size: int | None = None,
    reverse: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Token KL over masked positions (docs/method.md#token-kl).

    ``P_T = softmax(z_T/tau)``, ``P_S = softmax(z_S/tau)`` on the first
    ``shared_vocab_size`` ids (default: the smaller vocabulary).
    Forward: ``mean_i KL(P_T,i || P_S,i) * tau^2``; ``reverse=True``:
    ``mean_i KL(P_S,i || P_T,i) * tau^2``.

    :param student_logits: ``[b, L, V_S]``, any float dtype.
    :param teacher_logits: ``[b, L, V_T]``, aligned position by position; no gradient.
    :param mask: ``[b, L]`` bool, the positions that count.
    :param reduction: ``mean`` over the masked positions, or ``sum``.
    :return: float32 scalar; 0 (with a zero gradient) when nothing is masked.
    """
    _check_aligned(student_logits, teacher_logits, mask)
    b_idx, pos = masked_rows(mask)
    return token_divergence(
        student_logits,
        teacher_logits,
        b_idx,
        pos,
        pos,
        mode="reverse" if reverse else "forward",
        temperature=temperature,
        shared_vocab_size=shared_vocab_size,
        reduction=reduction,
    )


def tidal_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    lam: Tensor,
    *,
    weight: Tensor | None = None,
    temperature: float = 2.0,
    shared_vocab_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Token TIDAL (docs/method.md#tidal).

    ``R_i = stopgrad(softmax(((1 - lam_b) z_S,i + lam_b z_T,i) / tau))``;
    loss ``sum_i omega_b KL(R_i || softmax(z_S,i / tau)) / N_masked * tau^2``.

    :param student_logits: ``[b, L, V_S]``; :param teacher_logits: ``[b, L, V_T]``.
    :param mask: ``[b, L]`` bool. :param lam: ``[b]`` interpolation weights.
    :param weight: ``[b]`` timestep weights ``omega(t)`` (default 1).
    :param reduction: ``mean`` over the masked positions, or ``sum``.
    :return: float32 scalar; 0 when nothing is masked.
    """
    _check_aligned(student_logits, teacher_logits, mask)
    b_idx, pos = masked_rows(mask)
    return token_divergence(
        student_logits,
        teacher_logits,
        b_idx,
        pos,
        pos,
        mode="tidal",
        temperature=temperature,
        shared_vocab_size=shared_vocab_size,
        lam=lam,
        weight=weight,
        reduction=reduction,
    )


