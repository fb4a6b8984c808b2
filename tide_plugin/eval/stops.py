"""Stop handling of the block-diffusion sampler (:mod:`tide_plugin.eval.sampler`):
which rows are done, where their output is cut, and the default stop ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _settled(block: Tensor, remaining: Tensor, stop_ids: Tensor | None) -> Tensor:
    """``[b]`` bool: the row's block holds a committed stop token with nothing
    masked before it, so its output is fixed whatever the rest of the block gets."""
    if stop_ids is None:
        return torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
    is_stop = torch.isin(block, stop_ids) & ~remaining
    before = is_stop.long().cumsum(dim=-1) == 0  # positions before the first stop
    return is_stop.any(dim=-1) & ~(remaining & before).any(dim=-1)


def _stopped(row: list[int], stop_ids: set[int], stop_strings: Sequence[str], tokenizer: Any) -> bool:
    if stop_ids and any(t in stop_ids for t in row):
        return True
    if stop_strings and tokenizer is not None:
        text = tokenizer.decode(row, skip_special_tokens=False)
        return any(s in text for s in stop_strings)
    return False


def _trim(row: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stop_ids:
            return row[:i]
    return row


def default_stop_token_ids(model: torch.nn.Module, tokenizer: Any = None) -> tuple[int, ...]:
    """EOS ids of the tokenizer, else of the model's generation config or config."""
    found: list[int] = []
    sources = [getattr(tokenizer, "eos_token_id", None)] if tokenizer is not None else []
    sources += [
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
    ]
    for eos in sources:
        if eos is None:
            continue
        ids = [eos] if isinstance(eos, int) else list(eos)
        found += [i for i in ids if i not in found]
        if tokenizer is not None and found:
            break
    return tuple(found)
