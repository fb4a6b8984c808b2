"""Held-out bits per UTF-8 byte during ``trainer.evaluate()`` (``docs/method.md#published-results``):
the student's NELBO on held-out conversations over the bytes of their target text, a
figure no tokenizer changes (:mod:`tide_plugin.study.bpb`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def heldout_bpb_scorer(
    heldout: str | Path | Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    block_size: int,
    samples: int = 2,
    seed: int = 1234,
) -> Callable[[torch.nn.Module], Any]:
    """``score(model) -> BpbResult`` (``.bpb``, ``.se``) on ``heldout``: a chat JSONL
    path or conversations (``{"messages": [...]}``), encoded once with the student's
    ``tokenizer`` (its ``mask_token_id`` and ``pad_token_id`` are used)."""
    from ..study.bpb import heldout_bpb
    from ..study.data import encode_heldout

    if isinstance(heldout, (str, Path)):
        from ..alignment.preprocess import load_jsonl

        heldout = load_jsonl(str(heldout))
    if tokenizer is None or getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("held-out bits per byte need the student tokenizer (with a mask token); pass student_tokenizer")
    data = encode_heldout(list(heldout), tokenizer)
    if not data:
        raise ValueError("the held-out set is empty: give at least one conversation")

    def score(model: torch.nn.Module) -> Any:
        return heldout_bpb(model, "bd3lm", data, mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id,
                           block_size=int(block_size), samples=samples, seed=seed)

    return score
