"""Block-diffusion (BD3LM) core: the attention mask of docs/method.md#student-forward, position ids,
the student forward and CE. Compatible with dllm's BD3LM layout (``x_t`` half first)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .logits import ProjectedLogits, gold_log_probs

ConcatOrder = Literal["xt_x0", "x0_xt"]
CONCAT_ORDERS: tuple[str, ...] = ("xt_x0", "x0_xt")


def block_diffusion_mask(
    length: int,
    block_size: int,
    *,
    order: ConcatOrder = "xt_x0",
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean ``[2L, 2L]`` mask (True = query row may attend key column) for the
    input ``x_t ⊕ x0`` (or ``x0 ⊕ x_t``), docs/method.md#student-forward:

    - same half and same block (block diagonal);
    - query in the ``x_t`` half, key in the ``x0`` half, ``blk(k) < blk(q)`` (offset block causal);
    - both in the ``x0`` half, ``blk(k) <= blk(q)`` (block causal).
    """
    if order not in CONCAT_ORDERS:
        raise ValueError(f"concat order {order!r} is not one of {CONCAT_ORDERS}")
    if length <= 0 or block_size <= 0:
        raise ValueError(f"length ({length}) and block_size ({block_size}) must be positive")
    idx = torch.arange(2 * length, device=device)
    blk = (idx % length) // block_size
    first = idx < length
    is_xt = first if order == "xt_x0" else ~first
    q_xt, k_xt = is_xt[:, None], is_xt[None, :]
    q_blk, k_blk = blk[:, None], blk[None, :]
    same_half = q_xt == k_xt
    diagonal = same_half & (q_blk == k_blk)
    offset_causal = q_xt & ~k_xt & (k_blk < q_blk)
    block_causal = ~q_xt & ~k_xt & (k_blk <= q_blk)
    return diagonal | offset_causal | block_causal


def block_diffusion_position_ids(batch: int, length: int, device: torch.device | str | None = None) -> Tensor:
    """``[b, 2L]`` position ids ``[0..L-1, 0..L-1]``."""
    return torch.arange(length, device=device).repeat(2).unsqueeze(0).expand(batch, -1)


def with_key_padding(mask: Tensor, key_valid: Tensor) -> Tensor:
    """Combine a ``[Q, K]`` structural mask with ``[b, K]`` key validity into
    ``[b, 1, Q, K]``. Pad keys are blocked; a query row that would see no key at
    all (a pad row) is allowed its own position so that no row is all ``-inf``
    and no logit becomes NaN (docs/method.md#teacher-adapters, ours). Requires ``Q == K``."""
    q, k = mask.shape
    if q != k:
        raise ValueError(f"with_key_padding needs a square mask, got {tuple(mask.shape)}")
    full = mask.unsqueeze(0) & key_valid[:, None, :].bool()
    empty_rows = ~full.any(dim=-1, keepdim=True)
    eye = torch.eye(q, dtype=torch.bool, device=mask.device).unsqueeze(0)
    full = full | (empty_rows & eye)
    return full.unsqueeze(1)


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean mask -> additive float mask (0 where allowed, dtype min elsewhere),
    for ``attn_implementation="eager"``, which silently mishandles boolean 4D masks."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# --------------------------------------------------------------------------
# Forward pass and CE term (docs/method.md#student-forward)
# --------------------------------------------------------------------------
AttnImpl = Literal["sdpa", "eager", "flex_attention"]
LossNorm = Literal["token", "sequence", "batch"]
LOSS_NORMS: tuple[str, ...] = ("token", "sequence", "batch")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / FSDP / DeepSpeed / compile wrappers (``.module`` / ``._orig_mod``)."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model, seen = inner, seen + 1
    return model


def attention_implementation(model: torch.nn.Module) -> str:
    """The model's attention implementation (``config._attn_implementation``), ``"sdpa"`` if unknown."""
    config = getattr(unwrap_model(model), "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def flex_block_mask(
    length: int,
    block_size: int,
    *,
    key_valid: Tensor | None = None,
    order: ConcatOrder = "xt_x0",
    batch: int | None = None,
    device: torch.device | str | None = None,
) -> Any:
    """The mask of :func:`block_diffusion_mask` as a flex-attention ``BlockMask``
    (for ``attn_implementation="flex_attention"``, on GPU). ``key_valid`` ``[b, 2L]``
    blocks pad keys; every query keeps its own position so no row is empty."""
    from torch.nn.attention.flex_attention import create_block_mask

    if order not in CONCAT_ORDERS:
        raise ValueError(f"concat order {order!r} is not one of {CONCAT_ORDERS}")
    xt_first = order == "xt_x0"

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ARG001 - flex signature
        q_first, k_first = q_idx < length, kv_idx < length
        q_xt = q_first if xt_first else ~q_first
        k_xt = k_first if xt_first else ~k_first
        q_blk, k_blk = (q_idx % length) // block_size, (kv_idx % length) // block_size
        allowed = ((q_xt == k_xt) & (q_blk == k_blk)) | (q_xt & ~k_xt & (k_blk < q_blk)) | (~q_xt & ~k_xt & (k_blk <= q_blk))
        if key_valid is not None:
            allowed = allowed & (key_valid[b, kv_idx] | (q_idx == kv_idx))
        return allowed

    b = batch if key_valid is not None else None
    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=2 * length, KV_LEN=2 * length, device=device)


def block_attention_mask(
    length: int,
    block_size: int,
    *,
    batch: int,
    attention_mask: Tensor | None = None,
    order: ConcatOrder = "xt_x0",
    impl: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Any:
    """The docs/method.md#student-forward mask for a ``[b, 2L]`` BD3LM input, in the form ``impl`` needs:

    - ``sdpa`` (and any other implementation taking a boolean mask): boolean
      ``[b, 1, 2L, 2L]``, True = may attend;
    - ``eager``: float additive ``[b, 1, 2L, 2L]`` in ``dtype`` (0 / dtype min). Eager
      attention adds the mask to the scores, so a boolean 4D mask would be silently wrong;
    - ``flex_attention``: a ``BlockMask``.

    ``attention_mask`` ``[b, L]`` (True = real token) blocks pad keys in both halves;
    pad query rows keep their own position, so no logit is NaN or inf.
    """
    key_valid = None
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, length)}")
        valid = attention_mask.to(device=device, dtype=torch.bool)
        key_valid = torch.cat([valid, valid], dim=1)  # no "all valid?" shortcut: it would sync the host
    if impl == "flex_attention":
        return flex_block_mask(length, block_size, key_valid=key_valid, order=order, batch=batch, device=device)
    structural = block_diffusion_mask(length, block_size, order=order, device=device)
    if key_valid is None:
        mask = structural[None, None].expand(batch, 1, 2 * length, 2 * length)
    else:
        mask = with_key_padding(structural, key_valid)
    if impl == "eager":
        return to_additive(mask, dtype)
    return mask


def _accepts(model: torch.nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none)."""
    for p in unwrap_model(model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def block_diffusion_logits(
    model: torch.nn.Module,
    noisy_ids: Tensor,
    clean_ids: Tensor,
    *,
    block_size: int,
    attention_mask: Tensor | None = None,
    order: ConcatOrder = "xt_x0",
    impl: str | None = None,
    mask_as_dict: bool = False,
) -> Tensor:
    """BD3LM forward (docs/method.md#student-forward): run ``model`` on ``x_t ⊕ x0`` (or ``x0 ⊕ x_t``) with
    position ids ``[0..L-1, 0..L-1]`` and the block-diffusion mask, and return the
    logits of the ``x_t`` half, ``[b, L, V]`` (only those are projected to the vocabulary).

    :param model: a transformers causal-LM class (Qwen3, Qwen3-MoE, Llama, ...) that
        honours a custom 4D attention mask; possibly wrapped (DDP, FSDP, ...).
    :param noisy_ids: ``x_t`` ``[b, L]`` long, ``L`` a multiple of ``block_size``.
    :param clean_ids: ``x0`` ``[b, L]`` long.
    :param attention_mask: ``[b, L]`` bool, True for real tokens (pad keys blocked).
    :param impl: attention implementation; read from the model's config when ``None``.
    :param mask_as_dict: hand the mask over as ``{"full_attention": m, "sliding_attention": m}``
        (the transformers form that skips mask creation; WeDLM's call, docs/method.md#teacher-adapters).
    """
    if noisy_ids.shape != clean_ids.shape or noisy_ids.dim() != 2:
        raise ValueError(
            f"noisy ids {tuple(noisy_ids.shape)} and clean ids {tuple(clean_ids.shape)} must both be [b, L]"
        )
    b, length = noisy_ids.shape
    if length % block_size:
        raise ValueError(
            f"sequence length {length} is not a multiple of block_size {block_size}; "
            "the distill_pad collator pads to it (block-EOS padding, docs/method.md#noising)"
        )
    impl = impl or attention_implementation(model)
    device = noisy_ids.device
    if order == "xt_x0":
        ids = torch.cat([noisy_ids, clean_ids], dim=1)
        keep = torch.arange(length, device=device)
    elif order == "x0_xt":
        ids = torch.cat([clean_ids, noisy_ids], dim=1)
        keep = torch.arange(length, 2 * length, device=device)
    else:
        raise ValueError(f"concat order {order!r} is not one of {CONCAT_ORDERS}")
    mask = block_attention_mask(
        length,
        block_size,
        batch=b,
        attention_mask=attention_mask,
        order=order,
        impl=impl,
        dtype=model_dtype(model),
        device=device,
    )
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": {"full_attention": mask, "sliding_attention": mask} if mask_as_dict else mask,
        "position_ids": block_diffusion_position_ids(b, length, device=device),
        "use_cache": False,
    }
    slice_inside = _accepts(model, "logits_to_keep")
    if slice_inside:
        kwargs["logits_to_keep"] = keep  # project only the x_t half to the vocabulary
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if not slice_inside or logits.shape[1] != length:
        logits = logits[:, keep]
    return logits


def bd3lm_nll(
    logits: Tensor | ProjectedLogits,
    targets: Tensor,
    *,
    masked: Tensor,
    maskable: Tensor,
    weight: Tensor | None = None,
    gold: Tensor | None = None,
) -> Tensor:
    """Per-row sums ``sum_i CE(z_i, x0_i) * w_i * masked_i`` ``[b]`` float32, computed on
    masked positions only (no full-vocabulary float32 copy): the numerator of the CE term
    (:func:`ce_sum`) and of dllm's NLL metric.

    :param logits: ``[b, L, V]`` any float dtype, or
        :class:`~tide_plugin.logits.ProjectedLogits` (the fused output layer).
    :param targets: ``x0`` ``[b, L]``.
    :param masked: ``[b, L]`` bool. :param maskable: ``[b, L]`` bool (``labels != -100``).
    :param weight: ``w(t)`` as ``[b]`` or ``[b, L]``; 1 when ``None``.
    :param gold: the gold-token log-probs ``[b, L]`` of ``targets`` at (at least) the rows
        ``masked & maskable``, already computed (:func:`~tide_plugin.logits.gold_log_probs`;
        the trainer shares them with the objective); computed here when ``None``.
    """
    b, length = targets.shape
    if logits.shape[:2] != (b, length) or masked.shape != (b, length) or maskable.shape != (b, length):
        raise ValueError(
            f"shapes disagree: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"masked {tuple(masked.shape)}, maskable {tuple(maskable.shape)}"
        )
    rows = masked.bool() & maskable.bool()
    if gold is None:
        gold = gold_log_probs(logits, targets, rows)  # plain or projected logits (fused output layer)
    nll = torch.where(rows, -gold, torch.zeros((), dtype=gold.dtype, device=gold.device))
    if weight is not None:
        w = weight.to(nll.dtype)
        nll = nll * (w[:, None] if w.dim() == 1 else w)
    return nll.sum(-1)


def ce_sum(row_nll: Tensor, maskable: Tensor, *, norm: LossNorm = "token") -> Tensor:
    """The CE term's sum over its unit from :func:`bd3lm_nll`'s ``[b]`` row sums: ``token``
    and ``batch``: the sum of the rows; ``sequence``: each row divided by its own
    ``max(1, count(maskable_row))`` first (a row with no target adds 0). Its unit:
    maskable tokens (``token``) or sequences (docs/method.md#normalisation)."""
    if norm not in LOSS_NORMS:
        raise ValueError(f"loss normalisation {norm!r} is not one of {LOSS_NORMS}")
    if norm == "sequence":
        return (row_nll / maskable.sum(-1).clamp_min(1)).sum()
    return row_nll.sum()


def ce_from_nll(
    row_nll: Tensor, maskable: Tensor, *, norm: LossNorm = "token", denominator: Tensor | float | None = None
) -> Tensor:
    """The CE term of docs/method.md#student-forward: :func:`ce_sum` divided by

    - ``token``: ``count(maskable)`` (``max(1, .)``: an all-prompt batch gives 0, not NaN);
    - ``sequence`` and ``batch``: ``b``.

    :param maskable: ``[b, L]`` bool.
    :param denominator: overrides ``count(maskable)`` (token) or ``b`` (sequence, batch),
        e.g. the count over all micro-batches of a gradient-accumulation step.
    """
    total = ce_sum(row_nll, maskable, norm=norm)
    if denominator is None:
        denominator = maskable.sum().clamp_min(1) if norm == "token" else row_nll.shape[0]
    return total / denominator


def bd3lm_ce(
    logits: Tensor | ProjectedLogits,
    targets: Tensor,
    *,
    masked: Tensor,
    maskable: Tensor,
    weight: Tensor | None = None,
    norm: LossNorm = "token",
    denominator: Tensor | float | None = None,
) -> Tensor:
    """The CE term of docs/method.md#student-forward, float32: :func:`bd3lm_nll` normalised by :func:`ce_from_nll`
    (arguments as there)."""
    if norm not in LOSS_NORMS:
        raise ValueError(f"loss normalisation {norm!r} is not one of {LOSS_NORMS}")
    row_nll = bd3lm_nll(logits, targets, masked=masked, maskable=maskable, weight=weight)
    return ce_from_nll(row_nll, maskable, norm=norm, denominator=denominator)
