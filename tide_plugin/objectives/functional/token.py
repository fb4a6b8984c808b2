"""Token-level losses (docs/method.md#token-kl, docs/method.md#tidal): rows, the row-indexed divergence engine, KL and TIDAL."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import _common as C
from ._common import (
    _TOKEN_MODES,
    _check_bool,
    _check_choice,
    _check_logits,
    _check_temperature,
    _per_example,
    _shared_vocab,
    _work_dtype,
    _zero_loss,
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


class _TokenDivergence(torch.autograd.Function):
    """Sum over rows of ``w_i * D_i * tau^2 / denom`` with its exact gradient
    computed in the forward pass, row chunk by row chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student: Tensor,
        teacher: Tensor,
        b_idx: Tensor,
        s_pos: Tensor,
        t_pos: Tensor,
        lam: Tensor | None,
        weight: Tensor | None,
        mode: str,
        tau: float,
        vocab: int,
        denom: float,
    ) -> Tensor:
        work = _work_dtype(student.dtype)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(student, memory_format=torch.contiguous_format) if need_grad else None
        total = torch.zeros((), dtype=work, device=student.device)
        n = b_idx.numel()
        step = C._rows_per_chunk(vocab, student.device)
        scale = tau * tau / denom  # loss scale; d/dz = d/du / tau
        for start in range(0, n, step):
            sl = slice(start, start + step)
            bi, si, ti = b_idx[sl], s_pos[sl], t_pos[sl]
            # Advanced indexing copies the rows, so the in-place ops below never touch
            # the inputs; they keep the float32 workspace at about three [c, v] tensors.
            u_s = student[bi, si, :vocab].to(work).div_(tau)  # [c, v]
            log_ps = torch.log_softmax(u_s, dim=-1)
            if mode != "tidal":
                del u_s
            u_t = teacher[bi, ti, :vocab].to(work).div_(tau)
            if mode == "forward":
                log_pt = torch.log_softmax(u_t, dim=-1)
                del u_t
                p_t = log_pt.exp()
                d = log_pt.sub_(log_ps).mul_(p_t).masked_fill_(p_t == 0, 0.0)  # P_T (log P_T - log P_S), 0 log 0 = 0
                row = d.sum(-1)
                del d, log_pt
                g_u = log_ps.exp_().sub_(p_t) if need_grad else None  # P_S - P_T
                del p_t
            elif mode == "reverse":
                log_pt = torch.log_softmax(u_t, dim=-1)
                del u_t
                p_s = log_ps.exp()
                d = log_ps.sub_(log_pt)  # log P_S - log P_T (in place of log_ps)
                del log_pt
                row = (p_s * d).sum(-1)
                g_u = d.sub_(row[:, None]).mul_(p_s) if need_grad else None  # P_S (d - KL)
                del p_s, d
            else:  # tidal: R = softmax((1 - lam) u_s + lam u_t), detached
                lam_r = lam[bi].to(work)[:, None]
                mix = u_s.mul_(1.0 - lam_r).add_(u_t.mul_(lam_r))
                del u_s, u_t
                log_r = torch.log_softmax(mix, dim=-1)
                del mix
                r = log_r.exp()
                w_r = weight[bi].to(work)
                d = log_r.sub_(log_ps).mul_(r).masked_fill_(r == 0, 0.0)  # R (log R - log P_S)
                row = d.sum(-1) * w_r
                del d, log_r
                g_u = log_ps.exp_().sub_(r).mul_(w_r[:, None]) if need_grad else None  # w (P_S - R)
                del r
            total += row.sum()
            if need_grad:
                # index_put_ on the [..., :vocab] view writes into ``grad``; accumulate
                # keeps repeated rows (a position paired twice) exact.
                grad[..., :vocab].index_put_((bi, si), g_u.mul_(scale / tau).to(grad.dtype), accumulate=True)
            del log_ps, g_u, row
        if need_grad:
            ctx.save_for_backward(grad)
        return total * scale  # float32 (float64 for float64 inputs)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if not bool(grad_output == 1):
            # Scale in place: no second gradient-sized buffer. A second backward through
            # a retained graph then fails autograd's in-place check (it cannot silently
            # return a gradient scaled twice).
            grad.mul_(grad_output)
        return grad, None, None, None, None, None, None, None, None, None, None


def check_divergence_inputs(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    mode: str,
    temperature: float,
    shared_vocab_size: int | None,
    lam: Tensor | float | None,
    weight: Tensor | float | None,
) -> tuple[float, int, int]:
    """Validate :func:`token_divergence`'s arguments from shapes alone (shared by the
    fused output layer): ``(tau, shared vocabulary, number of rows)``; every bad value
    is named with what is allowed."""
    tau = _check_temperature(temperature)
    _check_choice("mode", mode, _TOKEN_MODES)
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
        raise ValueError(f"lam and weight apply to mode 'tidal' only, got mode {mode!r}")
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


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    batch_index: Tensor,
    student_positions: Tensor,
    teacher_positions: Tensor,
    *,
    mode: Literal["forward", "reverse", "tidal"] = "forward",
    temperature: float = 2.0,
    shared_vocab_size: int | None = None,
    lam: Tensor | float | None = None,
    weight: Tensor | float | None = None,
) -> Tensor:
    """The row-indexed engine behind :func:`token_kl` and :func:`tidal_kl`.

    Row ``i`` compares ``student_logits[batch_index[i], student_positions[i]]``
    with ``teacher_logits[batch_index[i], teacher_positions[i]]`` on the first
    ``shared_vocab_size`` ids, so template-aligned pairs need no gathered copy of
    either side.

    :param student_logits: ``[b, L, V_S]``, any float dtype, may require grad.
    :param teacher_logits: ``[b, L_T, V_T]``, receives no gradient.
    :param batch_index, student_positions, teacher_positions: ``[N]`` long.
    :param mode: ``forward`` KL(P_T||P_S), ``reverse`` KL(P_S||P_T), ``tidal``
        KL(R||P_S) with ``R = stopgrad(softmax(((1-lam) z_S + lam z_T)/tau))``.
    :param lam: ``[b]`` (``tidal`` only).
    :param weight: ``[b]`` per-example weights ``omega(t)`` (``tidal`` only; default 1).
    :return: float32 scalar ``sum_i w_i D_i / N * tau^2``; 0 when ``N == 0``.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    tau, vocab, n = check_divergence_inputs(
        student_logits.shape, teacher_logits.shape, batch_index, student_positions, teacher_positions,
        mode=mode, temperature=temperature, shared_vocab_size=shared_vocab_size, lam=lam, weight=weight,
    )
    if n == 0:
        return _zero_loss(student_logits)
    b = student_logits.shape[0]
    device = student_logits.device
    lam_b = _per_example("lam", lam, b, device, 0.0) if mode == "tidal" else None
    w_b = _per_example("weight", weight, b, device, 1.0) if mode == "tidal" else None
    return _TokenDivergence.apply(
        student_logits,
        teacher_logits.detach(),
        batch_index.to(device),
        student_positions.to(device),
        teacher_positions.to(device),
        lam_b,
        w_b,
        mode,
        tau,
        vocab,
        float(n),
    )


def _check_aligned(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
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
) -> Tensor:
    """Token KL over masked positions (docs/method.md#token-kl).

    ``P_T = softmax(z_T/tau)``, ``P_S = softmax(z_S/tau)`` on the first
    ``shared_vocab_size`` ids (default: the smaller vocabulary).
    Forward: ``mean_i KL(P_T,i || P_S,i) * tau^2``; ``reverse=True``:
    ``mean_i KL(P_S,i || P_T,i) * tau^2``.

    :param student_logits: ``[b, L, V_S]``, any float dtype.
    :param teacher_logits: ``[b, L, V_T]``, aligned position by position; no gradient.
    :param mask: ``[b, L]`` bool, the positions that count.
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
) -> Tensor:
    """Token TIDAL (docs/method.md#tidal).

    ``R_i = stopgrad(softmax(((1 - lam_b) z_S,i + lam_b z_T,i) / tau))``;
    loss ``sum_i omega_b KL(R_i || softmax(z_S,i / tau)) / N_masked * tau^2``.

    :param student_logits: ``[b, L, V_S]``; :param teacher_logits: ``[b, L, V_T]``.
    :param mask: ``[b, L]`` bool. :param lam: ``[b]`` interpolation weights.
    :param weight: ``[b]`` timestep weights ``omega(t)`` (default 1).
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
    )


