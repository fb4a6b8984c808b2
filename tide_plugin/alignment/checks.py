"""Constants, errors and input checks shared by the aligners."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


# ---------------------------------------------------------------------------------------------
# validation helpers


def _tokenizer_name(tok: Any) -> str:
    return getattr(tok, "name_or_path", None) or type(tok).__name__


def _require_fast(tok: Any, side: str) -> None:
    if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
        raise AlignmentError(
            f"{side} tokenizer {_tokenizer_name(tok)!r} ({type(tok).__name__}) is a slow tokenizer without "
            "offsets; alignment needs a fast tokenizer (transformers PreTrainedTokenizerFast), e.g. "
            "AutoTokenizer.from_pretrained(..., use_fast=True) or tide_plugin.offline.tokenizer(name)"
        )


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
                f"mask_id {mask_id!r} is not a valid id for tokenizer {_tokenizer_name(tokenizer)!r} "
                f"(allowed: an int in [0, {size}))"
            )
        return int(mask_id)
    found = getattr(tokenizer, "mask_token_id", None)
    if found is None:
        raise ValueError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no mask token; pass mask_id=<int> explicitly "
            "(e.g. the teacher's mask id from its config) or add one with "
            "tokenizer.add_special_tokens({'mask_token': '<|mask|>'})"
        )
    return int(found)


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise AlignmentError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise AlignmentError("empty conversation: messages must hold at least one {'role', 'content'} dict")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignmentError(
                f"message {k} must be a dict with str 'role' and str 'content', got {m!r:.200}"
            )
    return list(messages)


def _check_roles(messages: Sequence[Mapping[str, Any]], roles: Sequence[str] | None) -> list[bool]:
    present = [m["role"] for m in messages]
    if roles is None:
        return [True] * len(messages)
    if isinstance(roles, str):
        roles = (roles,)
    wanted = set(roles)
    if not wanted.intersection(present):
        raise AlignmentError(
            f"conversation has no message with a role in roles={sorted(wanted)}; roles present: {sorted(set(present))}"
        )
    return [r in wanted for r in present]


def _check_targets(targets: Any) -> None:
    if targets not in TARGETS:
        raise ValueError(f"targets {targets!r} is not one of {TARGETS}")


def _check_length(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
