"""Shared pieces of the loss functions: constants and argument checks (row chunking is
:mod:`tide_plugin.logits`')."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

PROB_CLAMP = 1e-7
"""CALM probabilities are clamped to ``[PROB_CLAMP, 1 - PROB_CLAMP]`` (docs/method.md#calm)."""

REDUCTIONS = ("mean", "sum")
Reduction = Literal["mean", "sum"]
"""``mean``: the documented mean over the function's unit; ``sum``: the sum over it
(what objectives return, docs/method.md#normalisation)."""


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------
def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    return float(temperature)


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {allowed}")


def _check_bool(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.bool:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a bool tensor, got {got}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")


def _shared_vocab(student: Tensor, teacher: Tensor, shared_vocab_size: int | None) -> int:
    vs, vt = student.shape[-1], teacher.shape[-1]
    if shared_vocab_size is None:
        return min(vs, vt)
    if isinstance(shared_vocab_size, bool) or not isinstance(shared_vocab_size, int):
        raise TypeError(f"shared_vocab_size must be an int or None, got {shared_vocab_size!r}")
    if not 0 < shared_vocab_size <= min(vs, vt):
        raise ValueError(
            f"shared_vocab_size {shared_vocab_size} must be in [1, {min(vs, vt)}] "
            f"(student vocab {vs}, teacher vocab {vt})"
        )
    return shared_vocab_size


def _per_example(name: str, x: Tensor | float | None, b: int, device: torch.device, default: float) -> Tensor:
    """A ``[b]`` float32 tensor from a tensor, a number or ``None``."""
    if x is None:
        return torch.full((b,), default, dtype=torch.float32, device=device)
    if not isinstance(x, Tensor):
        return torch.full((b,), float(x), dtype=torch.float32, device=device)
    if x.dim() == 0:
        return x.detach().float().to(device).expand(b)
    if tuple(x.shape) != (b,):
        raise ValueError(f"{name} must have shape [b]=[{b}], got {list(x.shape)}")
    return x.detach().to(device=device, dtype=torch.float32)
