"""What the alignment modules share: constants, errors, and the input checks more than
one of them runs (:func:`require_fast`, :func:`check_targets`, :func:`resolve_mask_id`);
:func:`tokenizer_name` is how every error message names a tokenizer. The checks of a
conversation itself live with the aligners, their only reader."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipelines import IGNORE_INDEX, get_pipeline

DEFAULT_TEACHER_MAX_LENGTH = get_pipeline("cross").default_teacher_max_length
"""The reference's teacher length cap (``max_teacher_length``); the aligners take
``teacher_max_length=None`` as "no cap", preprocessing passes this value."""


TARGETS: tuple[str, ...] = ("last_turn", "every_assistant_turn")
"""Which student tokens are targets (docs/method.md#targets). ``last_turn`` (the reference): the
last assistant turn with its end-of-turn token and the newline the template puts
after it, everything before is prompt. ``every_assistant_turn`` (ours): the content
of every assistant message and the end-of-turn token right after it."""


class AlignmentError(ValueError):
    """A conversation or tokenizer the aligners cannot use (the message names it)."""


class UnrenderableError(AlignmentError):
    """A chat template cannot render the conversation (a ``tool`` role, roles that do not
    alternate, ...). Preprocessing skips and counts such rows."""


class PromptTooLongError(AlignmentError):
    """The prompt fills ``max_length``: no target token is left after truncation.
    Preprocessing counts such examples as discarded."""


def tokenizer_name(tok: Any) -> str:
    """The name error messages give ``tok``: its ``name_or_path``, else its class name."""
    return getattr(tok, "name_or_path", None) or type(tok).__name__


def require_fast(tok: Any, side: str) -> None:
    """Raise :class:`AlignmentError` unless ``tok`` is a fast tokenizer (alignment reads
    its offsets and its backend); ``side`` names it in the message (``student``, ...)."""
    if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
        raise AlignmentError(
            f"{side} tokenizer {tokenizer_name(tok)!r} ({type(tok).__name__}) is a slow tokenizer without "
            "offsets; alignment needs a fast tokenizer (transformers PreTrainedTokenizerFast), e.g. "
            "AutoTokenizer.from_pretrained(..., use_fast=True) or tide_plugin.offline.tokenizer(name)"
        )


def check_targets(targets: Any) -> None:
    """Raise ``ValueError`` unless ``targets`` is one of :data:`TARGETS`."""
    if targets not in TARGETS:
        raise ValueError(f"targets {targets!r} is not one of {TARGETS}")


def resolve_mask_id(tokenizer: Any, mask_id: int | None = None) -> int:
    """The mask id to use with ``tokenizer``: ``mask_id`` when given (checked to be a
    valid id), else the tokenizer's ``mask_token_id``.

    :raises ValueError: ``mask_id`` out of range, or no mask id given and the
        tokenizer has no mask token.
    """
    size = len(tokenizer)
    if mask_id is not None:
        if isinstance(mask_id, bool) or not isinstance(mask_id, (int, np.integer)) or not 0 <= int(mask_id) < size:
            raise ValueError(
                f"mask_id {mask_id!r} is not a valid id for tokenizer {tokenizer_name(tokenizer)!r} "
                f"(allowed: an int in [0, {size}))"
            )
        return int(mask_id)
    found = getattr(tokenizer, "mask_token_id", None)
    if found is None:
        raise ValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} has no mask token; pass mask_id=<int> explicitly "
            "(e.g. the teacher's mask id from its config) or add one with "
            "tokenizer.add_special_tokens({'mask_token': '<|mask|>'})"
        )
    return int(found)
