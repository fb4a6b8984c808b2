"""Layout pieces of the block-diffusion sampler (:mod:`tide_plugin.eval.sampler`):
the attention mask of one model call over the clean context and the current
block, and the key/value cache of clean columns (transformers 4.x and 5.x)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor

SUPPORTED_ATTENTION: tuple[str, ...] = ("sdpa", "eager")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _attention_kind(model: torch.nn.Module) -> str:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {impl!r} cannot take the block-diffusion mask; "
            f"load the student with attn_implementation in {SUPPORTED_ATTENTION}"
        )
    return impl


def _new_cache(model: torch.nn.Module) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword that takes the cache: ``cache`` where the model declares it
    (transformers >= 5.2x, which warns that ``past_key_values`` is deprecated), else
    ``past_key_values`` (transformers 4.x, remote-code models)."""
    return _cache_keyword(type(model))


@functools.lru_cache(maxsize=64)
def _cache_keyword(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_drop_last(cache: Any, n: int) -> None:
    if n > 0:  # crop(0) means "keep 0" in transformers 4.x
        cache.crop(-n)


def _cache_select_rows(cache: Any, rows: Tensor) -> None:
    cache.batch_select_indices(rows)


def _block_mask(
    valid: Tensor, q_start: int, q_end: int, block_size: int, attention: str, dtype: torch.dtype
) -> Tensor:
    """``[b, 1, q_end - q_start, q_end]`` mask for query columns ``[q_start, q_end)``
    over key columns ``[0, q_end)``: a key is visible iff it is a real token and
    its block is not after the query's (block causal, bidirectional inside a
    block). Pad query rows see only themselves, so no row is empty."""
    device = valid.device
    q_cols = torch.arange(q_start, q_end, device=device)
    k_cols = torch.arange(q_end, device=device)
    allowed = (k_cols[None, :] // block_size) <= (q_cols[:, None] // block_size)  # [q, k]
    mask = allowed.unsqueeze(0) & valid[:, None, :q_end]  # [b, q, k]
    own = q_cols[:, None] == k_cols[None, :]
    pad_rows = ~valid[:, q_start:q_end]  # [b, q]
    mask = mask | (own.unsqueeze(0) & pad_rows[:, :, None])
    mask = mask.unsqueeze(1)
    if attention == "eager":  # eager silently mishandles boolean 4D masks
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask
