"""Masking schedules ``alpha(t)`` of the forward diffusion process (docs/method.md#noising),
registered as ``linear`` (default) and ``cosine``.

- ``alpha(t)``: probability that a token is kept at time ``t``;
- ``alpha_prime(t)``: its derivative ``d alpha / dt``;
- ``mask_prob(t) = 1 - alpha(t)``;
- ``elbo_weight(t)``: the CE weight ``w(t) = -alpha'(t) / (1 - alpha(t) + 1e-6)``
  (``1/t`` for linear); the ``noise`` stage uses 1 instead under ``uniform`` weighting.

Every method takes ``t`` as a ``[b]`` tensor (or a number) and returns float32 ``[b]``
(float64 for float64 ``t``; a 0-dim tensor for a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import Tensor

from ..hookspecs import PluginSpec, hookimpl

ELBO_EPS = 1e-6
"""Added to ``1 - alpha(t)`` in the ELBO weight (docs/method.md#noising)."""


@dataclass(frozen=True)
class MaskingScheduleConfig:
    """The masking schedules have no hyperparameters; ``t ~ U[eps, 1)`` is drawn by
    the ``noise`` collator."""


def _t(t: Tensor | float) -> Tensor:
    if not isinstance(t, Tensor):
        return torch.tensor(float(t), dtype=torch.float32)
    if not t.is_floating_point():
        raise TypeError(f"t must be a float tensor, got {t.dtype}")
    return t.to(torch.promote_types(t.dtype, torch.float32))  # float32, or float64 if given


class MaskingSchedule:
    """Base of the masking schedules (:class:`~tide_plugin.hookspecs.MaskingScheduleProtocol`):
    subclasses define ``mask_prob`` and ``alpha_prime``; ``alpha`` and ``elbo_weight`` follow."""

    name = "masking"

    def __init__(self, **config) -> None:
        self.config = MaskingScheduleConfig(**config)

    def mask_prob(self, t: Tensor | float) -> Tensor:  # pragma: no cover - abstract
        """``p = 1 - alpha(t)``: probability that a maskable token is masked (computed
        directly, not as ``1 - alpha``, so that small ``t`` keeps its precision)."""
        raise NotImplementedError

    def alpha_prime(self, t: Tensor | float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, t: Tensor | float) -> Tensor:
        """``alpha(t)``: probability that a token is kept."""
        return 1.0 - self.mask_prob(t)

    def elbo_weight(self, t: Tensor | float) -> Tensor:
        """Per-example CE weight ``w(t) = -alpha'(t) / (1 - alpha(t) + 1e-6)`` (docs/method.md#noising)."""
        return -self.alpha_prime(t) / (self.mask_prob(t) + ELBO_EPS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(MaskingSchedule):
    """``alpha(t) = 1 - t``, ``alpha'(t) = -1``; ELBO weight ``1 / (t + 1e-6)``."""

    name = "linear"

    def mask_prob(self, t: Tensor | float) -> Tensor:
        return _t(t).clone()

    def alpha_prime(self, t: Tensor | float) -> Tensor:
        return torch.full_like(_t(t), -1.0)


class CosineSchedule(MaskingSchedule):
    """``alpha(t) = 1 - cos(pi/2 (1 - t))``, ``alpha'(t) = -(pi/2) sin(pi/2 (1 - t))``."""

    name = "cosine"

    # cos(pi/2 (1 - t)) = sin(pi/2 t): the sine form keeps relative precision at small t.
    def mask_prob(self, t: Tensor | float) -> Tensor:
        return torch.sin(math.pi / 2 * _t(t))

    def alpha_prime(self, t: Tensor | float) -> Tensor:
        return -(math.pi / 2) * torch.cos(math.pi / 2 * _t(t))


@hookimpl
def tide_plugin_masking_schedules() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="linear",
            factory=LinearSchedule,
            summary="masking schedule alpha(t) = 1 - t (default)",
            config_cls=MaskingScheduleConfig,
        ),
        PluginSpec(
            name="cosine",
            factory=CosineSchedule,
            summary="masking schedule alpha(t) = 1 - cos(pi/2 (1 - t))",
            config_cls=MaskingScheduleConfig,
        ),
    ]
