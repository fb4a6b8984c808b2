"""TIDE losses as pure functions (SPEC 5).

Every function takes tensors positionally and hyperparameters keyword-only, and
returns a float32 scalar (or a float32 tensor for the helpers). All probability
arithmetic is done in float32 (float64 when the inputs are float64, which the
gradient checks use), whatever the logits' dtype.

Memory. At 150k vocabularies the logits dominate memory, so the token losses and
:func:`chunk_log_probs` never materialise a float32 copy of the logits:

- only the rows that count (masked positions, aligned pairs, tokens of a chunk)
  are read, ``ROW_CHUNK_ELEMENTS`` float32 elements' worth of rows at a time;
- the token losses are custom :class:`torch.autograd.Function` s that compute,
  row chunk by row chunk, the loss *and* its exact gradient with respect to the
  student logits, store that gradient in the logits' dtype, and hand it back
  (scaled by ``grad_output``) in backward;
- :func:`chunk_log_probs` keeps one float32 ``logsumexp`` per used row and
  rebuilds ``onehot - softmax`` row chunk by row chunk in backward.

Extra peak memory is therefore one gradient-sized buffer in the logits' dtype
(which backward has to produce anyway) plus a few float32 row chunks. The teacher
side never receives a gradient (the teacher is frozen; SPEC 2.2).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ROW_CHUNK_ELEMENTS = 1 << 22
"""Float32 elements per row chunk on CPU (16 MiB per temporary). Rows per chunk =
``max(1, ROW_CHUNK_ELEMENTS // vocab)``. Tests lower it to exercise several chunks."""

ROW_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
"""The same on GPUs (64 MiB per temporary): fewer, larger kernels; still small next
to ``[b, L, V]`` logits at 150k vocabularies (about 1.2 GiB in bf16 at b=8, L=512)."""

PROB_CLAMP = 1e-7
"""CALM probabilities are clamped to ``[PROB_CLAMP, 1 - PROB_CLAMP]`` (SPEC 5.2)."""

_TOKEN_MODES = ("forward", "reverse", "tidal")

__all__ = [
    "aligned_rows",
    "calm",
    "chunk_log_probs",
    "masked_rows",
    "tidal_calm",
    "tidal_kl",
    "token_divergence",
    "token_kl",
]


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------
def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    return float(temperature)


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {allowed}")


def _check_logits(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [b, L, V], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


def _check_bool(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.bool:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a bool tensor, got {got}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")


def _shared_vocab(student: Tensor, teacher: Tensor, shared_vocab_size: int | None) -> int:
    vs, vt = student.shape[-1], teacher.shape[-1]
    if shared_vocab_size is None:
        return min(vs, vt)
    if isinstance(shared_vocab_size, bool) or not isinstance(shared_vocab_size, int):
        raise TypeError(f"shared_vocab_size must be an int or None, got {shared_vocab_size!r}")
    if not 0 < shared_vocab_size <= min(vs, vt):
        raise ValueError(
            f"shared_vocab_size {shared_vocab_size} must be in [1, {min(vs, vt)}] "
            f"(student vocab {vs}, teacher vocab {vt})"
        )
    return shared_vocab_size


def _per_example(name: str, x: Tensor | float | None, b: int, device: torch.device, default: float) -> Tensor:
    """A ``[b]`` float32 tensor from a tensor, a number or ``None``."""
    if x is None:
        return torch.full((b,), default, dtype=torch.float32, device=device)
    if not isinstance(x, Tensor):
        return torch.full((b,), float(x), dtype=torch.float32, device=device)
    if x.dim() == 0:
        return x.detach().float().to(device).expand(b)
    if tuple(x.shape) != (b,):
        raise ValueError(f"{name} must have shape [b]=[{b}], got {list(x.shape)}")
    return x.detach().to(device=device, dtype=torch.float32)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


def _rows_per_chunk(width: int, device: torch.device) -> int:
    budget = ROW_CHUNK_ELEMENTS if device.type == "cpu" else ROW_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, int(budget) // max(1, width))


def _zero_loss(student: Tensor) -> Tensor:
    """0, connected to ``student`` so that ``backward()`` works and gives a zero gradient."""
    return student.reshape(-1)[:0].sum().float()


# ---------------------------------------------------------------------------
# token-level losses: KL, reverse KL, TIDAL (SPEC 5.1, 5.3)
# ---------------------------------------------------------------------------
def masked_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(batch_index, position_index)`` ``[N]`` each, of the True entries of ``mask`` ``[b, L]``."""
    b_idx, pos = mask.nonzero(as_tuple=True)
    return b_idx, pos


def aligned_rows(
    pair_student: Tensor, pair_teacher: Tensor, pair_mask: Tensor, masked: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of template-aligned pairs that count (SPEC 3.2): ``pair_mask`` and the
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
        step = _rows_per_chunk(vocab, student.device)
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
    tau = _check_temperature(temperature)
    _check_choice("mode", mode, _TOKEN_MODES)
    vocab = _shared_vocab(student_logits, teacher_logits, shared_vocab_size)
    b = student_logits.shape[0]
    if teacher_logits.shape[0] != b:
        raise ValueError(f"student batch {b} and teacher batch {teacher_logits.shape[0]} differ")
    n = batch_index.numel()
    if student_positions.numel() != n or teacher_positions.numel() != n:
        raise ValueError(
            f"batch_index ({n}), student_positions ({student_positions.numel()}) and "
            f"teacher_positions ({teacher_positions.numel()}) must have the same length"
        )
    if mode != "tidal" and (lam is not None or weight is not None):
        raise ValueError(f"lam and weight apply to mode 'tidal' only, got mode {mode!r}")
    if n == 0:
        return _zero_loss(student_logits)
    for what, idx, size in (
        ("batch_index", batch_index, b),
        ("student_positions", student_positions, student_logits.shape[1]),
        ("teacher_positions", teacher_positions, teacher_logits.shape[1]),
    ):
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{what} must lie in [0, {size}), got range [{lo}, {hi}]")
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
    """Token KL over masked positions (SPEC 5.1).

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
    """Token TIDAL (SPEC 5.3).

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


# ---------------------------------------------------------------------------
# chunk log-probs (SPEC 5.2)
# ---------------------------------------------------------------------------
class _ChunkLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, b_idx: Tensor, pos: Tensor, gold: Tensor, chunk: Tensor, num_chunks: int):  # type: ignore[override]
        work = _work_dtype(logits.dtype)
        n, vocab = b_idx.numel(), logits.shape[-1]
        lse = torch.empty(n, dtype=work, device=logits.device)
        gold_logit = torch.empty(n, dtype=work, device=logits.device)
        step = _rows_per_chunk(vocab, logits.device)
        for start in range(0, n, step):
            sl = slice(start, start + step)
            z = logits[b_idx[sl], pos[sl]].to(work)  # [c, V]
            lse[sl] = torch.logsumexp(z, dim=-1)
            gold_logit[sl] = z.gather(1, gold[sl, None]).squeeze(1)
            del z
        out = torch.zeros(logits.shape[0], num_chunks, dtype=work, device=logits.device)
        out.index_put_((b_idx, chunk), gold_logit - lse, accumulate=True)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(logits, b_idx, pos, gold, chunk, lse)
        return out.float() if work == torch.float32 else out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, b_idx, pos, gold, chunk, lse = ctx.saved_tensors
        work = lse.dtype
        grad = torch.zeros_like(logits, memory_format=torch.contiguous_format)
        g_rows = grad_out[b_idx, chunk].to(work)  # [N]
        step = _rows_per_chunk(logits.shape[-1], logits.device)
        for start in range(0, b_idx.numel(), step):
            sl = slice(start, start + step)
            bi, pi, g = b_idx[sl], pos[sl], g_rows[sl]
            rows = logits[bi, pi].to(work).sub_(lse[sl, None]).exp_().mul_(-g[:, None])  # -g softmax
            rows.scatter_add_(1, gold[sl, None], g[:, None])  # + g onehot(gold)
            grad.index_put_((bi, pi), rows.to(grad.dtype), accumulate=True)
            del rows
        return grad, None, None, None, None, None


def chunk_log_probs(logits: Tensor, ids: Tensor, chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """Per-chunk sums of gold-token log-probs (SPEC 5.2).

    ``l(i) = z[i, ids_i] - logsumexp(z[i, :])`` over the FULL vocabulary;
    ``out[b, c] = sum_{i: chunk_ids[b, i] == c} l(i)``. Only rows with
    ``chunk_ids >= 0`` are read.

    :param logits: ``[b, L, V]``, any float dtype.
    :param ids: ``[b, L]`` long, the gold (clean) ids.
    :param chunk_ids: ``[b, L]`` long, chunk of each token, ``-1`` for none.
    :param num_chunks: ``C``, chunk ids must be ``< C``.
    :return: ``[b, C]`` float32; 0 for chunks without tokens.
    """
    _check_logits("logits", logits)
    b, length, vocab = logits.shape
    for name, x in (("ids", ids), ("chunk_ids", chunk_ids)):
        if not isinstance(x, Tensor) or x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if tuple(x.shape) != (b, length):
            raise ValueError(f"{name} must have shape [b, L]=[{b}, {length}], got {list(x.shape)}")
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    device = logits.device
    b_idx, pos = (chunk_ids >= 0).nonzero(as_tuple=True)
    chunk = chunk_ids[b_idx, pos].long().to(device)
    gold = ids[b_idx, pos].long().to(device)
    b_idx, pos = b_idx.to(device), pos.to(device)
    if chunk.numel():
        top = int(chunk.max())
        if top >= num_chunks:
            raise ValueError(f"chunk id {top} is out of range for num_chunks={num_chunks}")
        lo, hi = int(gold.min()), int(gold.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"gold ids of chunk tokens must lie in [0, {vocab}), got range [{lo}, {hi}]")
    return _ChunkLogProbs.apply(logits, b_idx, pos, gold, chunk, num_chunks)


# ---------------------------------------------------------------------------
# CALM, Reverse CALM, chunk TIDAL (SPEC 5.2, 5.3)
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
    return torch.exp(lp.to(_work_dtype(lp.dtype)) / tau).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)


def _chunk_mean(loss: Tensor, chunk_mask: Tensor) -> Tensor:
    # clamp_min(1): no active chunk gives 0 (with a zero gradient), not 0/0.
    total = torch.where(chunk_mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)).sum()
    return total / chunk_mask.sum().clamp_min(1)


def calm(
    student_chunk_lp: Tensor,
    teacher_chunk_lp: Tensor,
    chunk_mask: Tensor,
    *,
    temperature: float = 2.0,
    reverse: bool = False,
) -> Tensor:
    """CALM and Reverse CALM (SPEC 5.2).

    ``s = clamp(exp(lp_S / tau))``, ``q = clamp(exp(lp_T / tau))`` (clamp to
    ``[1e-7, 1 - 1e-7]``, teacher detached). CALM: ``-(q log s + (1-q) log(1-s))``;
    Reverse CALM: ``-(s log q + (1-s) log(1-q))``, whose gradient w.r.t. ``lp_S`` is
    ``(s / tau) log((1-q)/q)``.

    :param student_chunk_lp: ``[b, C]`` chunk log-probs of the student.
    :param teacher_chunk_lp: ``[b, C]`` chunk log-probs of the teacher (detached).
    :param chunk_mask: ``[b, C]`` bool, active chunks.
    :return: float32 scalar, the mean over active chunks; 0 when none.
    """
    _check_chunks(student_chunk_lp, teacher_chunk_lp, chunk_mask)
    tau = _check_temperature(temperature)
    s = _chunk_prob(student_chunk_lp, tau)
    q = _chunk_prob(teacher_chunk_lp.detach(), tau)
    if reverse:
        loss = -(s * q.log() + (1.0 - s) * torch.log1p(-q))
    else:
        loss = -(q * s.log() + (1.0 - q) * torch.log1p(-s))
    return _chunk_mean(loss, chunk_mask)


def tidal_calm(
    student_chunk_lp: Tensor,
    teacher_chunk_lp: Tensor,
    chunk_mask: Tensor,
    lam: Tensor,
    *,
    weight: Tensor | None = None,
    temperature: float = 2.0,
) -> Tensor:
    """Chunk TIDAL (SPEC 5.3).

    ``m = stopgrad(clamp((1 - lam_b) s + lam_b q))``; loss
    ``-(m log s + (1-m) log(1-s)) * omega_b`` summed over active chunks and divided
    by their count.

    :param student_chunk_lp, teacher_chunk_lp: ``[b, C]``; :param chunk_mask: ``[b, C]`` bool.
    :param lam: ``[b]``; :param weight: ``[b]`` timestep weights (default 1).
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
    loss = -(m * s.log() + (1.0 - m) * torch.log1p(-s)) * w_b
    return _chunk_mean(loss, chunk_mask)
