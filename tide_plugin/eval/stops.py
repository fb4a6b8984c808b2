"""Stop handling of the block-diffusion sampler (:mod:`tide_plugin.eval.sampler`):
which rows are done, where their output is cut (:class:`Stops`), and the default
stop ids (:func:`default_stop_token_ids`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class Stops:
    """A generation's stop rule: stop token ids (a row's output is cut before the first)
    and stop strings (a row stops after the block whose decoded text holds one; needs
    ``tokenizer``)."""

    def __init__(self, ids: Sequence[int], strings: Sequence[str], tokenizer: Any, device: torch.device) -> None:
        self.ids = set(ids)
        self.strings = tuple(strings)
        self.tokenizer = tokenizer
        self.id_tensor = torch.tensor(sorted(self.ids), device=device) if self.ids else None
        """The stop ids on the device, ``None`` when there are none."""

    def settled(self, block: Tensor, remaining: Tensor) -> Tensor:
        """``[b]`` bool: the row's ``block`` ``[b, L]`` holds a committed stop token with
        nothing masked (``remaining`` ``[b, L]``) before it, so its output is fixed
        whatever the rest of the block gets."""
        if self.id_tensor is None:
            return torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
        is_stop = torch.isin(block, self.id_tensor) & ~remaining
        before = is_stop.long().cumsum(dim=-1) == 0  # positions before the first stop
        return is_stop.any(dim=-1) & ~(remaining & before).any(dim=-1)

    def stopped(self, row: list[int]) -> bool:
        """Whether the generated ids ``row`` hold a stop id, or decode to a stop string."""
        if self.ids and any(t in self.ids for t in row):
            return True
        if self.strings and self.tokenizer is not None:
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            return any(s in text for s in self.strings)
        return False

    def trim(self, row: list[int]) -> list[int]:
        """``row`` cut before its first stop id."""
        for i, t in enumerate(row):
            if t in self.ids:
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
