"""The columns of a block-diffusion generation and the model call over them
(:class:`BlockCanvas`), for :mod:`tide_plugin.eval.sampler`: the token grid, its
left padding and position ids, the attention mask of one call over the clean
context and the current block, and the key/value cache of clean columns
(transformers 4.x and 5.x)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

SUPPORTED_ATTENTION: tuple[str, ...] = ("sdpa", "eager")


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword that takes the cache: ``cache`` where the model declares it
    (transformers >= 5.2x, which warns that ``past_key_values`` is deprecated), else
    ``past_key_values`` (transformers 4.x, remote-code models)."""
    return _cache_keyword(type(model))


class BlockCanvas:
    """What a generation writes, for the rows still generating: ``x`` ``[b, T]``,
    ``[left pad | prompt]`` (a multiple of ``B`` columns, so the prompt ends on a
    block boundary) then ``max_new_tokens`` mask columns; ``valid`` ``[b, T]``
    (``False`` on left padding); ``positions`` ``[b, T]`` (counting real tokens only);
    ``rows`` ``[b]``, the prompt index of each row. With ``use_cache`` the keys and
    values of the clean columns ``[0, cached)`` are kept between calls.

    :raises ValueError: the model's attention cannot take the block mask.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        *,
        mask_id: int,
        block_size: int,
        max_new_tokens: int,
        use_cache: bool,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.attention = _attention_kind(model)
        self.block_size = block_size
        b = len(prompts)
        self.t0 = -(-max(len(p) for p in prompts) // block_size) * block_size
        self.total = self.t0 + max_new_tokens
        self.x = torch.full((b, self.total), mask_id, dtype=torch.long, device=self.device)
        self.valid = torch.ones((b, self.total), dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            self.valid[i, : self.t0 - len(p)] = False
            if p:
                self.x[i, self.t0 - len(p) : self.t0] = torch.tensor(p, dtype=torch.long, device=self.device)
        self.positions = (self.valid.long().cumsum(dim=1) - 1).clamp_min(0)
        self.rows = torch.arange(b, device=self.device)
        self.cache = _new_cache(model) if use_cache else None
        self.cache_key = cache_keyword(model)
        self.cached = 0  # columns whose keys/values are in the cache

    def block(self, j: int) -> tuple[int, int]:
        """Columns ``[start, end)`` of generated block ``j``."""
        start = self.t0 + j * self.block_size
        return start, min(start + self.block_size, self.total)

    def logits(self, start: int, end: int, on_forward: Callable[[int], None] | None = None) -> Tensor:
        """One model call for the block ``[start, end)``: its logits ``[b, end - start, V]``.
        Without a cache every column up to ``end`` is run; with one, the columns after
        the cached ones, and the clean columns up to ``start`` stay in the cache."""
        q_start = self.cached if self.cache is not None else 0
        kwargs: dict[str, Any] = dict(
            input_ids=self.x[:, q_start:end],
            attention_mask=_block_mask(self.valid, q_start, end, self.block_size, self.attention, self.dtype),
            position_ids=self.positions[:, q_start:end],
            logits_to_keep=end - start,
        )
        if self.cache is not None:
            kwargs.update({self.cache_key: self.cache, "use_cache": True})
        else:
            kwargs.update(use_cache=False)
        if on_forward is not None:
            on_forward(end - q_start)
        logits = self.model(**kwargs).logits[:, -(end - start) :]
        if self.cache is not None:
            if end - start > 0:  # keep clean columns only; crop(0) means "keep 0" in transformers 4.x
                self.cache.crop(-(end - start))
            self.cached = start
        return logits

    def keep_rows(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (indices into the current rows), cache included."""
        sel = torch.tensor(keep, device=self.device)
        self.x, self.valid, self.positions, self.rows = self.x[sel], self.valid[sel], self.positions[sel], self.rows[sel]
        if self.cache is not None:
            self.cache.batch_select_indices(sel)


@functools.lru_cache(maxsize=64)
def _cache_keyword(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


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
