"""Held-out bits per UTF-8 byte inside training (docs/method.md#sampling-and-evaluation):
the student's NELBO on held-out conversations over the bytes of their target text, a
figure no tokenizer changes (:mod:`tide_plugin.eval.heldout`), scored during
``trainer.evaluate()`` or every few steps by a callback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..eval.heldout import DEFAULT_SAMPLES, DEFAULT_SEED, BpbResult, encode_heldout, load_heldout, score_student


def heldout_bpb_scorer(
    heldout: str | Path | Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    block_size: int,
    schedule: str | Any = "linear",
    samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> Callable[[torch.nn.Module], BpbResult]:
    """``score(model) -> BpbResult`` (``.bpb``, ``.se``) on ``heldout``: a chat JSONL
    path or conversations (``{"messages": [...]}``), encoded once with the student's
    ``tokenizer`` (its ``mask_token_id`` and ``pad_token_id`` are used), noised with the
    masking ``schedule``."""
    if tokenizer is None or getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("held-out bits per byte need the student tokenizer (with a mask token); pass student_tokenizer")
    data = encode_heldout(load_heldout(heldout), tokenizer)
    if not data:
        raise ValueError("the held-out set is empty: give at least one conversation")

    def score(model: torch.nn.Module) -> BpbResult:
        return score_student(model, data, tokenizer, block_size=int(block_size), schedule=schedule, samples=samples,
                             seed=seed)

    return score


def heldout_callback(score_student: Callable[[torch.nn.Module], BpbResult], every: int, curve: list) -> Any:
    """A ``TrainerCallback`` appending ``(step, student bits per byte)`` to ``curve`` every
    ``every`` steps, the last step excepted (the run scores its final student itself)."""
    import transformers

    class HeldoutCurve(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ARG002
            step = state.global_step
            if every and step % every == 0 and step < state.max_steps and state.is_world_process_zero:
                curve.append((step, score_student(model).bpb))

    return HeldoutCurve()
