"""Block-diffusion (BD3LM) core: the attention mask of SPEC 2.1, position ids,
block padding. Compatible with dllm's BD3LM layout (``x_t`` half first)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

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
    input ``x_t ⊕ x0`` (or ``x0 ⊕ x_t``), SPEC 2.1:

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
    and no logit becomes NaN (SPEC 2.2, ours). Requires ``Q == K``."""
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


def pad_to_block(ids: list[int], labels: list[int], block_size: int, eos_id: int) -> tuple[list[int], list[int]]:
    """SPEC 1.1: pad with EOS to a multiple of ``block_size``; EOS padding is a target."""
    if len(ids) != len(labels):
        raise ValueError(f"ids ({len(ids)}) and labels ({len(labels)}) differ in length")
    extra = (-len(ids)) % block_size
    return ids + [eos_id] * extra, labels + [eos_id] * extra
